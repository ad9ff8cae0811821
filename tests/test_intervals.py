"""95% intervals: exact binomial intervals and a fixed-seed bootstrap, checked where the answer is known,
and every figure of an evaluation inside its interval."""

import math

import numpy as np
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


def test_a_paired_difference_sees_what_two_separate_intervals_cannot():
    from safemax_ray.core.intervals import paired_difference

    g = torch.Generator().manual_seed(1)
    a = torch.rand(200, generator=g).numpy()  # one model's per-sample values
    b = a + 0.02  # another's on the same samples: shifted a little
    lo_a, hi_a = bootstrap_mean_interval(a)
    lo_b, hi_b = bootstrap_mean_interval(b)
    assert lo_b < hi_a  # apart, the two intervals overlap: no order could be stated
    mean, lo, hi = paired_difference([b - a])
    assert mean == pytest.approx(0.02) and lo == pytest.approx(0.02) and hi == pytest.approx(0.02)
    # Over classes: the mean of the per-class means, every class resampled in each replicate.
    mean, lo, hi = paired_difference([np.full(10, 1.0), np.full(30, 3.0)])
    assert (mean, lo, hi) == (pytest.approx(2.0), pytest.approx(2.0), pytest.approx(2.0))
    assert all(math.isnan(v) for v in paired_difference([]))


def test_the_report_pairs_methods_sample_by_sample_and_stars_what_holds():
    import pandas as pd

    from safemax_ray.results.tables import paired_table

    def row(group, cls, entropy_shift):
        label = np.array([cls] * 50 + [c for c in range(10) if c != cls] * 5)
        pred = np.where(label == cls, (cls + 1) % 10, label)  # every forget sample called another class
        entropy = np.linspace(0.1, 1.0, len(label)) + entropy_shift
        return {
            "group": group,
            "forget_class": cls,
            "forget_classes": str(cls),
            "sample_label": label,
            "sample_pred": pred,
            "sample_entropy": entropy,
            "sample_noise": label == cls,
        }

    df = pd.DataFrame([row("safemax", c, 0.0) for c in (0, 1)] + [row("salun", c, -0.5) for c in (0, 1)])
    table = paired_table(df)
    assert table.loc["H", "salun"] == "-0.5 [-0.5, -0.5] *"  # lower on every sample: the order holds
    assert table.loc["UA %", "salun"] == "+0 [0, 0]"  # no difference: not starred
    assert table.loc["classes paired", "salun"] == "2 classes"
    other_samples = df.assign(sample_label=[r[::-1] for r in df["sample_label"]])
    assert paired_table(pd.concat([df.iloc[:2], other_samples.iloc[2:]])) is None  # different samples never pair


def test_fid_interval_is_the_spread_a_bootstrap_within_classes_measures():
    """The delta method's standard error against brute force: FID recomputed on 300 resamples drawn
    within each class (the protocol fixes the samples per class)."""
    from safemax_ray.core.intervals import frechet_interval
    from safemax_ray.core.metrics import feature_sums, frechet_from_sums

    g = torch.Generator().manual_seed(0)
    real = feature_sums(torch.randn(3000, 4, generator=g, dtype=torch.float64))
    strata = torch.arange(1500) % 3
    fake = torch.randn(1500, 4, generator=g, dtype=torch.float64) * 1.3 + 0.2 + 0.3 * strata[:, None]
    lo, hi = frechet_interval(real, fake, strata)
    point = frechet_from_sums(real, feature_sums(fake))
    assert lo < point < hi and (lo + hi) / 2 == pytest.approx(point)
    rng = np.random.default_rng(0)
    groups = [(strata == s).nonzero().squeeze(1).numpy() for s in range(3)]
    replicates = [
        frechet_from_sums(real, feature_sums(fake[np.concatenate([rng.choice(g, len(g)) for g in groups])]))
        for _ in range(300)
    ]
    assert (hi - lo) / (2 * 1.96) == pytest.approx(np.std(replicates), rel=0.15)
    # Fewer samples than features: the generated covariance is singular and FID has no expansion.
    assert all(math.isnan(v) for v in frechet_interval(real, fake[:4], strata[:4]))
