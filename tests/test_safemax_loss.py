"""The SAFEMax math: psi, the eps_T targets, the loss, and what the forget term is conditioned on."""

import math

import pytest
import torch

from safemax_ray.core.models import build_scheduler
from safemax_ray.core.randomness import RankRandom
from safemax_ray.errors import SafemaxError
from safemax_ray.methods import UnlearnBatch, get_method, method_options
from safemax_ray.methods.safemax import psi, safemax_loss, trajectory_target


def safemax(scheduler, **options):
    return get_method("safemax")(method_options("safemax", options), scheduler)


def test_psi_values():
    t = torch.tensor([0, 250, 500, 1000])
    assert torch.allclose(psi(t, 1.0, 1000), torch.tensor([1.0, math.exp(-0.25), math.exp(-0.5), math.exp(-1.0)]))
    assert torch.equal(psi(t, 0.0, 1000), torch.ones(4))  # lambda = 0: no weighting
    assert psi(torch.tensor([10]), 5.0, 100).item() == pytest.approx(math.exp(-0.5))


def test_psi_weights_small_t_more():
    w = psi(torch.arange(100), 2.0, 100)
    assert torch.all(w[1:] < w[:-1])


def test_loss_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    pf, tf, pr, er = (torch.randn(4, 1, 2, 2, generator=g) for _ in range(4))
    t = torch.tensor([0, 10, 50, 99])
    loss, lf, lr = safemax_loss(pf, tf, t, pr, er, lam=1.0, num_train_timesteps=100, alpha=0.5)
    w = torch.exp(-t / 100)
    expected_f = (w * ((tf - pf) ** 2).mean(dim=(1, 2, 3))).mean()
    expected_r = ((er - pr) ** 2).mean()
    assert lf.item() == pytest.approx(expected_f.item(), rel=1e-6)
    assert lr.item() == pytest.approx(expected_r.item(), rel=1e-6)
    assert loss.item() == pytest.approx((expected_f + 0.5 * expected_r).item(), rel=1e-6)


def test_loss_is_zero_at_the_targets():
    x = torch.randn(3, 1, 4, 4)
    loss, _, _ = safemax_loss(x, x, torch.tensor([1, 2, 3]), x, x, 1.0, 10, 1.0)
    assert loss.item() == 0


def test_trajectory_target_is_unit_gaussian_and_mostly_new_noise():
    sched = build_scheduler(1000)
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(20000, 1, 1, 1, generator=g)
    t = torch.full((20000,), 10)
    target = trajectory_target(eps, t, sched.alphas_cumprod, torch.randn(eps.shape, generator=g))
    assert target.std().item() == pytest.approx(1.0, abs=0.02)
    corr = torch.corrcoef(torch.stack([eps.flatten(), target.flatten()]))[0, 1].item()
    assert abs(corr) < 0.05  # sqrt(abar_T) ~ 0.006: x_T has all but forgotten x_t's noise


def _recording_unet(seen: dict):
    """A stand-in UNet that records its inputs and returns zeros with a gradient path."""

    class Out:
        def __init__(self, sample):
            self.sample = sample

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t, class_labels):
            seen.update(x=x, t=t, labels=class_labels, calls=seen.get("calls", 0) + 1)
            return Out(x * self.w)

    return Recorder()


def _batch(n=64):
    g = torch.Generator().manual_seed(1)
    return UnlearnBatch(
        x_forget=torch.rand(n, 1, 8, 8, generator=g) * 2 - 1,
        y_forget=torch.zeros(n, dtype=torch.int64),
        x_remain=torch.rand(n, 1, 8, 8, generator=g) * 2 - 1,
        y_remain=torch.randint(1, 10, (n,), generator=g),
        null_label=10,
    )


@pytest.mark.parametrize("target", ["independent", "trajectory"])
def test_forget_term_always_uses_the_forget_label_and_one_forward(target):
    seen: dict = {}
    method = safemax(build_scheduler(100), target=target, null_drop=0.5)
    method.loss(_recording_unet(seen), _batch(), RankRandom(torch.Generator().manual_seed(2)))
    labels = seen["labels"]
    assert seen["calls"] == 1  # one forward over [forget; remain]
    assert len(labels) == 128
    assert torch.all(labels[:64] == 0)  # never the null label in the forget half
    assert (labels[64:] == 10).any()  # the remain half does get the null drop


def test_independent_target_is_not_the_noise_that_made_x_t():
    """An oracle that predicts exactly the noise that made x_t has zero remain loss; if the forget target
    were that noise too, its forget loss would be 0. Independent eps_T gives E||eps_T - eps||^2 = 2."""
    sched = build_scheduler(100)
    batch = _batch(256)
    # Reproduce the method's first draws: the forget stream's eps, then the remain stream's.
    replay = RankRandom(torch.Generator().manual_seed(3))
    eps = torch.cat([replay.normal(batch.x_forget.shape), replay.normal(batch.x_remain.shape)])

    class EpsOracle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, x, t, class_labels):
            class Out:
                sample = eps * self.w

            return Out()

    out = safemax(sched, lam=0.0).loss(EpsOracle(), batch, RankRandom(torch.Generator().manual_seed(3)))
    assert float(out.stats["loss_remain"]) == pytest.approx(0.0, abs=1e-10)  # remain target is that eps
    assert float(out.stats["loss_forget"]) == pytest.approx(2.0, rel=0.05)  # ||eps_T - eps||^2, independent: 2


@pytest.mark.parametrize(
    "options, message",
    [
        ({"lam": -1.0}, "lam"),
        ({"alpha": -0.5}, "alpha"),
        ({"target": "sideways"}, "target must be one of"),
        ({"null_drop": 1.0}, "null_drop"),
        ({"lamda": 1.0}, "unknown key.*'lamda'"),
        ({"lam": "high"}, "method_options .safemax..lam: expected a number"),
    ],
)
def test_bad_options_are_refused_by_name(options, message):
    with pytest.raises(SafemaxError, match=message):
        method_options("safemax", options)
