"""95% intervals: exact binomial intervals and a fixed-seed bootstrap, checked where the answer is known,
and every figure of an evaluation inside its interval."""

import math

import pytest
import torch

from safemax_ray.core.intervals import bootstrap_mean_interval, proportion_interval
from safemax_ray.engine.evaluate import intervals


def test_the_exact_binomial_interval_at_its_closed_forms():
    # None or all of n: one end is exact, the other (alpha/2)^(1/n) from the binomial's tail.
    lo, hi = proportion_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(100 * (1 - 0.025 ** (1 / 10)), abs=1e-9)
    lo, hi = proportion_interval(10, 10)
    assert hi == 100.0 and lo == pytest.approx(100 * 0.025 ** (1 / 10), abs=1e-9)
    # 5 of 10, a textbook value (Clopper-Pearson 95%: 0.1871, 0.8129), symmetric about one half.
    lo, hi = proportion_interval(5, 10)
    assert (lo, hi) == (pytest.approx(18.71, abs=0.01), pytest.approx(81.29, abs=0.01))
    assert all(math.isnan(v) for v in proportion_interval(0, 0))


def test_the_bootstrap_is_exact_on_a_constant_and_fixed_by_its_seed():
    assert bootstrap_mean_interval(torch.full((50,), 0.7)) == pytest.approx((0.7, 0.7))
    # Two values 0 and 1: a resample's mean is 0, 1/2 or 1 with odds 1:2:1, so the 2.5% and 97.5%
    # quantiles of 2000 resamples are 0 and 1.
    assert bootstrap_mean_interval(torch.tensor([0.0, 1.0])) == (0.0, 1.0)
    values = torch.rand(300, generator=torch.Generator().manual_seed(3))
    assert bootstrap_mean_interval(values) == bootstrap_mean_interval(values.clone())
    lo, hi = bootstrap_mean_interval(values)
    # The mean of 300 U(0,1) draws: standard error ~ 0.289 / sqrt(300) = 0.0167, so a 95% width ~ 0.065.
    assert lo < float(values.mean()) < hi and 0.05 < hi - lo < 0.08
    assert all(math.isnan(v) for v in bootstrap_mean_interval(torch.empty(0)))


def test_an_all_correct_classifier_gives_ua_zero_and_accuracy_one_hundred_with_their_exact_ends():
    labels = torch.tensor([3] * 20 + [0, 1, 2, 4] * 10)
    logits = torch.nn.functional.one_hot(labels, 10).float() * 50  # certain and right every time
    noise = torch.zeros(len(labels), dtype=torch.bool)
    got = intervals(labels, logits, noise, labels == 3)
    assert got["ua"] == (0.0, pytest.approx(100 * (1 - 0.025 ** (1 / 20))))  # none of 20 missed
    assert got["retain_acc"] == (pytest.approx(100 * 0.025 ** (1 / 40)), 100.0)  # all 40 right
    assert got["entropy"][0] == pytest.approx(0.0, abs=1e-12) and got["entropy"][1] < 1e-12
    assert got["noise_forget"][0] == 0.0 and got["noise_retain"][0] == 0.0
