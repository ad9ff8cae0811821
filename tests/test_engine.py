"""The plain-torch engine, without Ray: training, resume, divergence, and evaluation that does not
depend on how it is split."""

import subprocess
import sys
import textwrap
from dataclasses import replace

import pytest
import torch

from safemax_ray.config import EvalConfig, RayConfig, UnlearnConfig
from safemax_ray.core.data import load_dataset
from safemax_ray.core.models import DiffusionModel, load_model
from safemax_ray.engine import checkpoint, evaluate
from safemax_ray.engine.judging import Share
from safemax_ray.engine.loop import Hooks, TrainingDiverged, open_session, run_setup, train
from safemax_ray.identity import run_key

CPU = torch.device("cpu")


def tiny_config(tiny_assets, **changes):
    model, classifier = tiny_assets
    settings = dict(
        forget_class=1,
        model=model,
        classifier=classifier,
        iterations=6,
        batch_size=8,
        eval=EvalConfig(n_forget_samples=6, n_retain_per_class=2, batch_size=8, sample_steps=5),
        ray=RayConfig(checkpoint_every=3),
    )
    settings.update(changes)
    return UnlearnConfig(**settings)


def weights(session):
    return torch.cat([p.detach().flatten() for p in session.model.unet.parameters()])


def test_engine_trains_and_evaluates_with_ray_hidden():
    """The engine and everything below it run on a machine that has torch and diffusers but no Ray."""
    script = textwrap.dedent(
        """
        import sys
        class HideRay:
            def find_spec(self, name, path=None, target=None):
                if name == "ray" or name.startswith("ray."):
                    raise ImportError("ray is hidden in this test")
        sys.meta_path.insert(0, HideRay())
        import torch
        from safemax_ray.config import EvalConfig, UnlearnConfig
        from safemax_ray.engine.loop import evaluate_run, open_session, run_setup, train
        cfg = UnlearnConfig(iterations=3, batch_size=16,
                            eval=EvalConfig(n_forget_samples=4, n_retain_per_class=2, sample_steps=4))
        session = open_session(cfg, torch.device("cpu"))
        run_setup(session)
        stats = train(session)
        result = evaluate_run(session)
        metrics, images = result.metrics, result.images
        assert session.state.step == 3 and stats["loss"] > 0
        assert images.shape == (4 + 9 * 2, 1, 8, 8) and 0 <= metrics["ua"] <= 100
        assert "ray" not in sys.modules
        print("ok", metrics["ua"], metrics["base_ok"])
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ok")
    assert done.stdout.split()[-1] == "True"  # the shipped base model passes its own check


SA_TINY = {"fisher_samples_per_class": 2, "fisher_timesteps": 3}


@pytest.mark.parametrize(
    "method, options",
    [
        ("safemax", {}),
        ("salun", {}),
        ("sa", SA_TINY),
        ("erasediff", {"round_steps": 2, "inner_passes": 1}),
        ("sfron", {}),
    ],
)
def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tiny_assets, tmp_path, method, options):
    cfg = tiny_config(tiny_assets, method=method, method_options=options)
    whole = open_session(cfg, CPU)
    run_setup(whole, str(tmp_path / "cache"))
    train(whole)

    first = open_session(cfg, CPU)
    run_setup(first, str(tmp_path / "cache"))
    saved = []

    def save_and_stop(done):
        checkpoint.save(tmp_path, first.workload, first.model, first.optimizer, first.method.state_dict(), first.state)
        saved.append(done)
        raise KeyboardInterrupt  # the worker dies right after its checkpoint

    with pytest.raises(KeyboardInterrupt):
        train(first, Hooks(on_checkpoint=save_and_stop))
    resumed = open_session(cfg, CPU)  # no set-up: the method's state comes from the checkpoint
    resumed.state, method_state = checkpoint.restore(tmp_path, resumed.workload, resumed.model.unet, resumed.optimizer)
    resumed.method.load_state_dict(method_state)
    assert saved == [3] and resumed.state.step == 3
    # SA's and SFR-on's set-ups are computed by `whole`, read from the cache by `first`.
    cached = method in ("sa", "sfron")
    assert not whole.state.setup_cached and resumed.state.setup_cached == first.state.setup_cached == cached
    train(resumed)
    assert resumed.state.step == 6
    assert torch.equal(weights(resumed), weights(whole))


def test_non_finite_loss_stops_at_once_naming_the_step_and_the_setting(tiny_assets):
    session = open_session(tiny_config(tiny_assets, lr=1e4, iterations=50), CPU)
    with pytest.raises(
        TrainingDiverged, match=r"training diverged at step \d+.*lower the learning rate \(--lr, now 10000\)"
    ):
        train(session)
    assert session.state.step < 50


def _model(tiny_assets):
    model = load_model(tiny_assets[0])
    return DiffusionModel(model.unet.eval(), model.scheduler)


def test_one_and_two_workers_sample_identical_images(tiny_assets):
    """Chunk j of class k is seeded by (eval seed, k, j) and workers take whole chunks: the split
    changes nothing."""
    model = _model(tiny_assets)
    config = EvalConfig(n_forget_samples=5, n_retain_per_class=2, batch_size=4, sample_steps=4)
    labels = evaluate.eval_labels(10, 3, config)
    n = evaluate.num_chunks(labels, config)
    assert n == 11  # class 3: 4 + 1; each retained class: 2
    one = evaluate.sample_labels(model, labels, config)
    ranks = [Share.of(evaluate.sample_chunks(model, labels, config, list(range(r, n, 2)))) for r in range(2)]

    def gather(mine):  # what torch.distributed.all_gather_object returns, in rank order
        return ranks

    two = evaluate.sample_labels(model, labels, config, rank=0, world=2, gather=gather)
    assert one.shape == (23, 1, 8, 8) and torch.equal(one, two)
    three = [Share.of(evaluate.sample_chunks(model, labels, config, list(range(r, n, 3)))) for r in range(3)]
    assert torch.equal(one, evaluate.sample_labels(model, labels, config, 2, 3, lambda mine: three))


def test_auto_evaluation_stays_on_the_train_workers_below_one_tasks_share(tiny_assets):
    """`eval.workers: auto` starts evaluation tasks only for an evaluation of at least one task's share
    (MIN_TASK_IMAGE_STEPS guided model calls); a number always starts tasks, `train` never does."""
    from safemax_ray.engine.workloads import workload_for

    model, data = _model(tiny_assets), load_dataset("digits")  # T = 25, 10 classes

    def in_workers(**eval_settings):
        cfg = tiny_config(tiny_assets, eval=EvalConfig(**eval_settings))
        return workload_for(cfg).evaluates_in_workers(model, data)

    assert evaluate.MIN_TASK_IMAGE_STEPS == 10_000
    assert in_workers(n_forget_samples=8, n_retain_per_class=2, sample_steps=5)  # 26 images x 5 steps
    assert not in_workers(n_forget_samples=200, n_retain_per_class=30)  # 470 x 25 = 11,750
    assert in_workers(n_forget_samples=200, n_retain_per_class=30, sample_steps=21)  # 470 x 21 = 9,870
    assert not in_workers(n_forget_samples=8, n_retain_per_class=2, sample_steps=5, workers=2)
    assert in_workers(n_forget_samples=200, n_retain_per_class=30, workers="train")


def test_a_class_draws_the_same_samples_whichever_classes_are_forgotten(tiny_assets):
    model = _model(tiny_assets)
    config = EvalConfig(n_forget_samples=5, n_retain_per_class=3, batch_size=4, sample_steps=3)
    forget_3 = evaluate.sample_labels(model, evaluate.eval_labels(10, 3, config), config)
    forget_7 = evaluate.sample_labels(model, evaluate.eval_labels(10, [7, 1], config), config)
    # In forget_3 class 3 comes first (5 samples), then 0, 1, 2, 4, ... (3 each); in forget_7 the
    # forgotten 7 and 1 come first, then 0, 2, 3, ...
    assert torch.equal(forget_3[:5], evaluate.sample_labels(model, torch.full((5,), 3), config))
    assert torch.equal(forget_3[5:8], forget_7[10:13])  # class 0, retained in both
    assert torch.equal(forget_3[5 + 3 * 8 :], forget_7[10 + 3 * 7 :])  # class 9, the last in both
    with pytest.raises(ValueError, match="each class's samples together"):
        evaluate.chunks_of(torch.tensor([1, 2, 1]), config)


def _judge(tiny_assets, forget=0):
    cfg = tiny_config(tiny_assets, forget_class=forget)
    data = load_dataset("digits")
    return evaluate.class_judge(cfg, data, CPU)


class CountingSampler(evaluate.RankSampler):
    """A one-process sampler that remembers the labels it was asked for."""

    asked: list

    def __call__(self, model, labels, phase, judge):
        self.asked.append(labels.tolist())
        return super().__call__(model, labels, phase, judge)


def test_base_cache_is_keyed_by_what_fixes_a_class_judgement(tiny_assets, tmp_path):
    config = EvalConfig(n_forget_samples=3, n_retain_per_class=2, batch_size=4, sample_steps=3)

    def path(cfg=config, label=0, count=3, device="cpu", judge_id="judge"):
        return evaluate.base_cache_path(str(tmp_path), "model-id", label, count, cfg, device, judge_id)

    assert path() == path()
    others = [
        path(EvalConfig(**{**config.__dict__, "batch_size": 8})),  # other chunks: other noise
        path(EvalConfig(**{**config.__dict__, "seed": 1})),
        path(EvalConfig(**{**config.__dict__, "guidance": 1.0})),
        path(label=1),
        path(count=2),
        path(device="cuda"),  # CUDA generators draw other numbers than CPU ones
        path(judge_id="another classifier"),
    ]
    assert path() not in others and len(set(others)) == len(others)
    assert path(EvalConfig(**{**config.__dict__, "n_forget_samples": 7, "base_min_acc": 3.0})) == path()


def test_the_base_model_is_judged_a_class_at_a_time_and_once(tiny_assets, tmp_path):
    """Runs forgetting 0, then 1, then [0, 1] sample each (class, count) of the base model once; what
    the cache gives is bit for bit what sampling on one or two workers gives."""
    model = _model(tiny_assets)
    config = EvalConfig(n_forget_samples=3, n_retain_per_class=2, batch_size=4, sample_steps=3)
    judge = _judge(tiny_assets)
    sampler = CountingSampler(config, "cpu")
    sampler.asked = []
    cache = lambda label, n: evaluate.base_cache_path(str(tmp_path), "m", label, n, config, "cpu", "j")  # noqa: E731
    judged = {}
    for forget in (0, 1, [0, 1]):
        labels = evaluate.eval_labels(10, forget, config)
        judged[str(forget)] = evaluate.base_judgement(model, labels, sampler, judge, cache)
    assert sampler.asked == [
        [0] * 3 + [c for c in range(1, 10) for _ in range(2)],  # forget 0: everything
        [1] * 3 + [0] * 2,  # forget 1: class 1 as forgotten, class 0 as retained; the rest was cached
    ]  # forget [0, 1]: all cached, nothing sampled
    assert len(list(tmp_path.glob("judged-base-*.safetensors"))) == 12  # 0 and 1 at 3 and at 2; 2-9 at 2
    labels = evaluate.eval_labels(10, 1, config)
    n = evaluate.num_chunks(labels, config)
    two = [Share.of(evaluate.sample_chunks(model, labels, config, list(range(r, n, 2)), judge)) for r in range(2)]
    split = evaluate.judge_labels(model, labels, config, judge, 0, 2, lambda mine: two)
    for k, cached in judged["1"].per_sample.items():  # bit for bit
        torch.testing.assert_close(split.per_sample[k], cached, rtol=0, atol=0)
    assert torch.equal(judged["[0, 1]"].per_sample["logits"][:3], judged["0"].per_sample["logits"][:3])


def test_a_judge_sees_the_classifier_and_the_fid_features(tiny_assets):
    """The judge's identity (part of the base cache key) changes with what scores the samples."""
    judge = _judge(tiny_assets)
    cfg = tiny_config(tiny_assets)
    assert evaluate.judge_id(cfg, judge) == evaluate.judge_id(cfg, _judge(tiny_assets))
    assert evaluate.judge_id(replace(cfg, classifier=None), judge) != evaluate.judge_id(cfg, judge)


def test_setup_runs_once_and_is_timed_apart(tiny_assets):
    calls = []
    session = open_session(tiny_config(tiny_assets), CPU)
    session.method.setup = lambda ctx: calls.append(
        (ctx.rank, ctx.world, len(ctx.forget_idx), ctx.sample(torch.tensor([1, 2])).shape)
    )
    run_setup(session)
    assert calls == [(0, 1, int((session.data.labels == 1).sum()), (2, 1, 8, 8))]
    assert session.state.setup_s > 0


def test_several_classes_are_forgotten_together_and_judged_one_by_one(tiny_assets):
    cfg = tiny_config(tiny_assets, forget_class=[7, 3], iterations=2)
    assert cfg.classes_given() == [3, 7] and run_key(cfg).startswith("safemax-digits-c3+7-")
    session = open_session(cfg, CPU)
    assert set(session.data.labels[session.forget_idx].unique().tolist()) == {3, 7}
    train(session)
    from safemax_ray.engine.loop import evaluate_run

    result = evaluate_run(session)
    metrics, labels = result.metrics, result.labels
    assert (labels[:12] == torch.tensor([3] * 6 + [7] * 6)).all() and len(labels) == 12 + 8 * 2
    assert set(metrics["per_class"]) == {"3", "7"}
    per_class_ua = [metrics["per_class"][c]["ua"] for c in ("3", "7")]
    assert metrics["ua"] == pytest.approx(sum(per_class_ua) / 2)  # equal samples per class
    # Every figure of both models lies in its 95% interval (the exact binomial's, the bootstrap's).
    for key in ("ua", "entropy", "retain_acc", "noise_forget", "noise_retain"):
        for name in (key, f"base_{key}"):
            assert metrics[f"{name}_lo"] <= metrics[name] + 1e-9 and metrics[name] <= metrics[f"{name}_hi"] + 1e-9
