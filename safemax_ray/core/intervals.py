"""95% intervals for a run's figures, from its judged samples alone; no Ray, no sampling.

Proportions (UA, retained accuracy, the noise rates) get the exact Clopper-Pearson interval of a
binomial; the mean entropy H a percentile bootstrap over the forget-class samples with a fixed seed, so
the same samples always give the same interval. Either says how far the figure moves with which samples
the evaluation happened to draw: not with the training run's seed, and not the classifier's own error.
FID's interval is a bootstrap too: the generated samples' features resampled within each class (so
the class mix stays the protocol's), the real images' statistics held fixed. FID is biased upward in
the number of distinct samples and a resample repeats some, so its replicates sit above the point by
that extra bias; the interval is shifted back by the replicates' mean excess (a bias-corrected
percentile interval).
Two models judged on the same noise pair sample by sample: `paired_difference` bootstraps their
per-sample differences, far tighter than two separate intervals.
"""

from __future__ import annotations

import math

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
    real_sums: dict[str, torch.Tensor],
    features: torch.Tensor,
    strata: torch.Tensor,
    resamples: int,
    level: float = LEVEL,
    seed: int = SEED,
) -> tuple[float, float]:
    """Bias-corrected percentile bootstrap interval of the FID between fixed real statistics
    (`feature_sums`) and generated `features` (N, D), each replicate resampling the features within
    each stratum (class).
    Each replicate costs an N x D x D product and a D x D symmetric eigendecomposition (what the
    paper's 2048 Inception features make expensive); nan for no resamples."""
    if resamples == 0:
        return math.nan, math.nan
    f = features.double()
    mu1, sigma1 = moments(real_sums)
    values, vectors = torch.linalg.eigh(sigma1)
    root1 = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.t()  # sigma1^(1/2)
    rng = np.random.default_rng(seed)
    groups = [(strata == s).nonzero().squeeze(1).numpy() for s in strata.unique()]
    replicates = []
    for _ in range(resamples):
        picks = np.concatenate([g[rng.integers(len(g), size=len(g))] for g in groups])
        w = torch.from_numpy(np.bincount(picks, minlength=len(f))).double()
        mu2 = (w @ f) / len(f)
        sigma2 = ((f * w[:, None]).t() @ f - len(f) * torch.outer(mu2, mu2)) / (len(f) - 1)
        # tr sqrt(sigma1 sigma2) = sum of sqrt eigenvalues of sigma1^(1/2) sigma2 sigma1^(1/2) (symmetric)
        cross = torch.linalg.eigvalsh(root1 @ sigma2 @ root1).clamp(min=0).sqrt().sum()
        replicates.append(float((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * cross))
    point = frechet_from_sums(real_sums, feature_sums(f))
    bias = float(np.mean(replicates)) - point
    lo, hi = _percentiles(np.asarray(replicates), level)
    return lo - bias, hi - bias


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
