"""The plain-torch engine, without Ray: training, resume, divergence, and evaluation that does not
depend on how it is split."""

import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

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
    """Chunk c is seeded by (eval seed, c) and workers take whole chunks: the split changes nothing."""
    model = _model(tiny_assets)
    config = EvalConfig(n_forget_samples=5, n_retain_per_class=2, batch_size=4, sample_steps=4)
    labels = evaluate.eval_labels(10, 3, config)
    one = evaluate.sample_labels(model, labels, config)
    ranks = [Share.of(evaluate.sample_chunks(model, labels, config, list(range(r, 6, 2)))) for r in range(2)]

    def gather(mine):  # what torch.distributed.all_gather_object returns, in rank order
        return ranks

    two = evaluate.sample_labels(model, labels, config, rank=0, world=2, gather=gather)
    assert one.shape == (23, 1, 8, 8) and torch.equal(one, two)
    three = [Share.of(evaluate.sample_chunks(model, labels, config, list(range(r, 6, 3)))) for r in range(3)]
    assert torch.equal(one, evaluate.sample_labels(model, labels, config, 2, 3, lambda mine: three))


def _judge(tiny_assets, labels, forget=0):
    cfg = tiny_config(tiny_assets, forget_class=forget)
    data = load_dataset("digits")
    return evaluate.class_judge(cfg, data, labels, CPU)


def test_base_cache_is_keyed_by_what_fixes_the_judgement(tiny_assets, tmp_path):
    model = _model(tiny_assets)
    config = EvalConfig(n_forget_samples=3, n_retain_per_class=2, batch_size=4, sample_steps=3)
    labels = evaluate.eval_labels(10, 0, config)
    judge = _judge(tiny_assets, labels)

    def path(cfg=config, lab=labels, device="cpu", judge_id="judge"):
        return evaluate.base_cache_path(str(tmp_path), "model-id", lab, cfg, device, judge_id)

    assert path() == path()
    others = [
        path(EvalConfig(**{**config.__dict__, "batch_size": 8})),  # other chunks: other noise
        path(EvalConfig(**{**config.__dict__, "seed": 1})),
        path(EvalConfig(**{**config.__dict__, "guidance": 1.0})),
        path(lab=evaluate.eval_labels(10, 1, config)),
        path(device="cuda"),  # CUDA generators draw other numbers than CPU ones
        path(judge_id="another classifier"),
    ]
    assert path() not in others and len(set(others)) == len(others)
    # The cache written by one worker is exactly what two workers would judge.
    sample = evaluate.RankSampler(config, "cpu")
    cached = evaluate.base_judgement(model, labels, sample, judge, path())
    assert Path(path()).is_file()
    again = evaluate.base_judgement(model, labels, sample, judge, path())
    two = [Share.of(evaluate.sample_chunks(model, labels, config, list(range(r, 6, 2)), judge)) for r in range(2)]
    split = evaluate.judge_labels(model, labels, config, judge, 0, 2, lambda mine: two)
    for other in (again, split):
        assert other.rows.keys() == cached.rows.keys() and other.sums.keys() == cached.sums.keys()
        for k in cached.rows:  # bit for bit; a chunk with under 2 retained samples has no KID (nan)
            torch.testing.assert_close(other.rows[k], cached.rows[k], rtol=0, atol=0, equal_nan=True)
        assert all(torch.allclose(other.sums[k], cached.sums[k], rtol=1e-12) for k in cached.sums)


def test_a_judge_sees_the_classifier_and_the_fid_features(tiny_assets):
    """The judge's identity (part of the base cache key) changes with what scores the samples."""
    labels = evaluate.eval_labels(10, 0, EvalConfig())
    judge = _judge(tiny_assets, labels)
    cfg = tiny_config(tiny_assets)
    assert evaluate.judge_id(cfg, judge) == evaluate.judge_id(cfg, _judge(tiny_assets, labels))
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
    assert cfg.forget_classes() == [3, 7] and run_key(cfg).startswith("safemax-digits-c3+7-")
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
