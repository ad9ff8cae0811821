"""95% intervals for a run's figures, from its judged samples alone; no Ray, no sampling.

Proportions (UA, retained accuracy, the noise rates) get the exact Clopper-Pearson interval of a
binomial; the mean entropy H a percentile bootstrap over the forget-class samples with a fixed seed, so
the same samples always give the same interval. Either says how far the figure moves with which samples
the evaluation happened to draw: not with the training run's seed, and not the classifier's own error.
FID's interval is the delta method's: FID's first-order response to each generated sample (its
influence function), its variance within each class (the protocol fixes the samples per class), the
real images' statistics held fixed. It says how far FID moves with which samples were drawn, to first
order; it does not cover FID's own upward bias at a finite sample count, nor the real images' sampling.
Two models judged on the same noise pair sample by sample: `paired_difference` bootstraps their
per-sample differences, far tighter than two separate intervals.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import torch

from safemax_ray.core.metrics import feature_sums, frechet_from_sums, moments

LEVEL = 0.95
RESAMPLES = 2000
SEED = 0
INTERVAL_METRICS = ("ua", "entropy", "retain_acc", "noise_forget", "noise_retain", "fid")


def proportion_interval(successes: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of the proportion successes / n, in percent; nan for n = 0."""
    from scipy.stats import beta

    if n == 0:
        return math.nan, math.nan
    tail = (1 - level) / 2
    lo = 0.0 if successes == 0 else float(beta.ppf(tail, successes, n - successes + 1))
    hi = 1.0 if successes == n else float(beta.ppf(1 - tail, successes + 1, n - successes))
    return 100 * lo, 100 * hi


def bootstrap_mean_interval(
    values, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (a tensor or an array); nan for none."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if len(values) == 0:
        return math.nan, math.nan
    return _percentiles(_resampled_means(values, np.random.default_rng(seed), resamples), level)


def frechet_interval(
    real_sums: dict[str, torch.Tensor], features: torch.Tensor, strata: torch.Tensor, level: float = LEVEL
) -> tuple[float, float]:
    """95% interval of the FID between fixed real statistics (`feature_sums`) and the generated
    `features` (N, D), drawn a fixed number per stratum (class): the FID plus or minus z standard errors,
    the standard error from FID's influence function (the delta method), its variance taken within each
    stratum. Costs one D x D eigendecomposition and one N x D x D product; nan where the generated
    covariance is singular (N <= D), where FID has no first-order expansion."""
    f = features.double()
    n, d = f.shape
    if n <= d:
        return math.nan, math.nan
    fake_sums = feature_sums(f)  # an N x D x D product: once
    mu1, sigma1 = moments(real_sums)
    mu2, sigma2 = moments(fake_sums)
    root1 = _sqrtm(sigma1)
    values, vectors = torch.linalg.eigh(root1 @ sigma2 @ root1)
    if values.min() <= 1e-10 * values.max():
        return math.nan, math.nan
    # dFID = 2 (mu2 - mu1) . dmu2 + tr(A dSigma2), A = I - R M^(-1/2) R, R = sigma1^(1/2), M = R sigma2 R
    a = torch.eye(d, dtype=torch.float64) - root1 @ (vectors * values.rsqrt()) @ vectors.t() @ root1
    centred = f - mu2
    influence = 2 * centred @ (mu2 - mu1) + ((centred @ a) * centred).sum(1)
    groups = [influence[strata == s] for s in strata.unique()]
    variance = sum((len(g) / n) ** 2 * g.var() / len(g) for g in groups if len(g) > 1)
    point = frechet_from_sums(real_sums, fake_sums)
    half = NormalDist().inv_cdf(0.5 + level / 2) * math.sqrt(float(variance))
    return point - half, point + half


def _sqrtm(sigma: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a covariance (negative rounding noise clipped to 0)."""
    values, vectors = torch.linalg.eigh(sigma)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.t()


def paired_difference(
    differences: list[np.ndarray], level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED
) -> tuple[float, float, float]:
    """(mean, lo, hi) of the mean over classes of each class's mean per-sample difference between two
    models that drew the same samples. Each bootstrap replicate resamples every class's samples, the
    pairs together (a difference is one resampled unit), so the noise the two models share cancels."""
    if not differences or any(len(d) == 0 for d in differences):
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    replicates = sum(_resampled_means(np.asarray(d, dtype=np.float64), rng, resamples) for d in differences)
    mean = float(np.mean([np.mean(d) for d in differences]))
    return (mean, *_percentiles(replicates / len(differences), level))


def _resampled_means(values: np.ndarray, rng: np.random.Generator, resamples: int) -> np.ndarray:
    """The means of `resamples` resamples with replacement, drawn in blocks so memory stays at a few
    hundred copies of `values` however many resamples."""
    blocks = [
        values[rng.integers(len(values), size=(min(200, resamples - start), len(values)))].mean(1)
        for start in range(0, resamples, 200)
    ]
    return np.concatenate(blocks)


def _percentiles(replicates: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2
    lo, hi = np.quantile(replicates, [tail, 1 - tail])
    return float(lo), float(hi)
