"""The two baselines the paper compares against: SalUn's saliency mask and Selective Amnesia's Fisher
diagonal and EWC penalty."""

import pytest
import torch

from safemax_ray.config import EvalConfig, UnlearnConfig
from safemax_ray.core.models import build_scheduler
from safemax_ray.core.randomness import seeded_generator
from safemax_ray.engine.loop import open_session, run_setup, train
from safemax_ray.errors import SafemaxError
from safemax_ray.methods import method_options
from safemax_ray.methods.salun import saliency_mask
from safemax_ray.methods.selective_amnesia import fisher_diagonal

CPU = torch.device("cpu")


def session(tiny_assets, method, **options):
    model, classifier = tiny_assets
    cfg = UnlearnConfig(
        method=method,
        method_options=options,
        forget_class=2,
        model=model,
        classifier=classifier,
        iterations=4,
        batch_size=8,
        lr=1e-3,
        eval=EvalConfig(n_forget_samples=4, n_retain_per_class=2, sample_steps=3),
    )
    s = open_session(cfg, CPU)
    run_setup(s)
    return s


def test_saliency_mask_keeps_the_top_share():
    scores = {"a": torch.tensor([5.0, 1.0, 3.0]), "b": torch.tensor([[4.0, 0.0], [2.0, 6.0]])}
    mask = saliency_mask(scores, 0.5)
    # 7 weights, half rounds to 4: the scores 6, 5, 4 and 3 are kept
    assert mask["a"].tolist() == [1.0, 0.0, 1.0] and mask["b"].tolist() == [[1.0, 0.0], [0.0, 1.0]]


@pytest.mark.parametrize("ratio", [0.5, 0.2])
def test_salun_moves_only_the_masked_share_of_weights(tiny_assets, ratio):
    s = session(tiny_assets, "salun", mask_ratio=ratio)
    before = {n: p.detach().clone() for n, p in s.model.unet.named_parameters()}
    kept = sum(int(m.sum()) for m in s.method.mask.values())
    total = sum(p.numel() for p in before.values())
    assert abs(kept - ratio * total) <= 1 + 1e-3 * total  # ties at the threshold may add a few
    train(s)
    for name, p in s.model.unet.named_parameters():
        frozen = s.method.mask[name] == 0
        assert torch.equal(p.detach()[frozen], before[name][frozen]), name
    assert any(not torch.equal(p.detach(), before[n]) for n, p in s.model.unet.named_parameters())


class Linear(torch.nn.Module):
    """eps_theta(x_t, c, t) = w * x_t + b: a model whose gradients can be written by hand."""

    def __init__(self):
        super().__init__()
        self.w, self.b = torch.nn.Parameter(torch.tensor(0.7)), torch.nn.Parameter(torch.tensor(-0.2))

    def forward(self, x, t, class_labels):
        class Out:
            sample = self.w * x + self.b

        return Out()


def test_fisher_diagonal_matches_a_hand_computation():
    scheduler = build_scheduler(25)
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(3, 1, 2, 2, generator=g) * 2 - 1, torch.tensor([0, 1, 2])
    timesteps, ids = torch.tensor([0, 12, 24]), torch.tensor([5, 9, 11])
    model = Linear()
    got = fisher_diagonal(model, scheduler, images, labels, ids, timesteps, seed=7)
    want_w = want_b = 0.0
    for i, x0 in zip(ids.tolist(), images, strict=True):
        noise = torch.randn((3, 1, 2, 2), generator=seeded_generator(CPU, 4, 7, i))
        x_t = scheduler.add_noise(x0.expand(3, 1, 2, 2), noise, timesteps)
        r = 0.7 * x_t - 0.2 - noise  # residual; L = sum_t mean(r^2)
        dw, db = (2 * r * x_t).flatten(1).mean(1).sum(), (2 * r).flatten(1).mean(1).sum()
        want_w, want_b = want_w + dw**2, want_b + db**2
    assert got["w"].item() == pytest.approx(want_w.item(), rel=1e-5)
    assert got["b"].item() == pytest.approx(want_b.item(), rel=1e-5)


def test_selective_amnesia_ewc_is_zero_at_the_base_weights_and_grows_after(tiny_assets):
    s = session(tiny_assets, "sa", fisher_samples_per_class=2, fisher_timesteps=3)
    assert all(torch.equal(s.method.anchor[n], p) for n, p in s.model.unet.named_parameters())
    assert all((f >= 0).all() for f in s.method.fisher.values()) and any(f.sum() > 0 for f in s.method.fisher.values())
    assert (s.method.replay_labels != 2).all() and len(s.method.replay_labels) == 2 * 9  # no forget class
    from safemax_ray.core.randomness import RankRandom, step_generator
    from safemax_ray.engine.step import draw_batch

    rng = RankRandom(step_generator(0, 0))
    batch = draw_batch(s.data, s.forget_idx, s.remain_idx, 4, 10, rng)
    assert s.method.loss(s.model.unet, batch, rng).stats["ewc"].item() == 0.0
    train(s)
    assert s.method.loss(s.model.unet, batch, RankRandom(step_generator(0, 0))).stats["ewc"].item() > 0


@pytest.mark.parametrize(
    "method, options, message",
    [
        ("salun", {"mask_ratio": 0.0}, "mask_ratio must be in"),
        ("salun", {"alpha": -1.0}, "alpha must be >= 0"),
        ("salun", {"lam": 1.0}, "unknown key.*'lam'"),
        ("sa", {"fisher_samples_per_class": 0}, "fisher_samples_per_class must be >= 1"),
        ("sa", {"ewc_lambda": -2.0}, "ewc_lambda and gamma must be >= 0"),
        ("sa", {"gamma": "high"}, r"method_options \(sa\).gamma: expected a number"),
    ],
)
def test_bad_baseline_options_are_refused_by_name(method, options, message):
    with pytest.raises(SafemaxError, match=message):
        method_options(method, options)


def test_a_shared_set_up_is_computed_once_by_concurrent_runs_and_read_alike(tiny_assets, tmp_path):
    """Two sessions (two drivers, or two runs of a batch) set up SA on one cache folder at the same time:
    one computes the Fisher, the other waits for it and reads it; and a run that reads it ends with the
    weights of a run that computed it itself."""
    import threading

    from safemax_ray.config import UnlearnConfig
    from safemax_ray.engine.loop import open_session, run_setup, train

    model, classifier = tiny_assets
    options = {"fisher_samples_per_class": 2, "fisher_timesteps": 3}

    def session(forget_class):
        cfg = UnlearnConfig(
            forget_class=forget_class,
            model=model,
            classifier=classifier,
            method="sa",
            iterations=2,
            batch_size=8,
            method_options=options,
        )
        return open_session(cfg, torch.device("cpu"))

    shared = str(tmp_path / "shared")
    first, second = session(1), session(2)
    threads = [threading.Thread(target=run_setup, args=(s, shared)) for s in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted([first.state.setup_cached, second.state.setup_cached]) == [False, True]
    alone = session(2)
    run_setup(alone, str(tmp_path / "own"))  # computes its own
    assert not alone.state.setup_cached
    train(second)
    train(alone)
    for (name, a), b in zip(
        second.model.unet.state_dict().items(), alone.model.unet.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert not list((tmp_path / "shared").glob("*.claim"))  # claims are released
