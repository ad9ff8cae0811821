"""Is a sample noise? A check that needs no classifier.

Real images are smooth: a pixel looks like its neighbours. Noise, Gaussian or clamped, scaled or not,
is not. The score of an image is the correlation between each pixel and its right and lower neighbours
(all channels pooled); an image scores as noise below a threshold that is calibrated on the dataset's
real images against N(0, I) noise clamped to [-1, 1] (as samples are), at the point that separates them
best. Unlike UA it cannot be fooled by a classifier that calls noise some class (the paper's "bird").
"""

from __future__ import annotations

import torch

from safemax_ray.core.metrics import percent

CALIBRATION_IMAGES = 2000  # real images (and as many noise images) used to place the threshold


def neighbour_correlation(images: torch.Tensor) -> torch.Tensor:
    """(N,) Pearson correlation of each image's pixels with their right and lower neighbours."""
    x = images.float()
    a = torch.cat([x[..., :, :-1].flatten(1), x[..., :-1, :].flatten(1)], dim=1)
    b = torch.cat([x[..., :, 1:].flatten(1), x[..., 1:, :].flatten(1)], dim=1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    denom = (a.pow(2).sum(1) * b.pow(2).sum(1)).sqrt()
    corr = (a * b).sum(1) / denom
    return torch.where(denom > 0, corr, torch.ones_like(corr))  # a flat image is not noise


def calibrate(real: torch.Tensor, seed: int = 0) -> float:
    """The threshold that best separates real images from clamped N(0, I) noise (balanced accuracy)."""
    g = torch.Generator().manual_seed(seed)
    real = real[torch.randperm(len(real), generator=g)[:CALIBRATION_IMAGES]].cpu()
    noise = torch.randn(real.shape, generator=g).clamp(-1, 1)
    s_real, s_noise = neighbour_correlation(real), neighbour_correlation(noise)
    candidates = torch.cat([s_real, s_noise]).sort().values
    cuts = (candidates[1:] + candidates[:-1]) / 2
    balanced = (
        (s_noise[None, :] < cuts[:, None]).float().mean(1) + (s_real[None, :] >= cuts[:, None]).float().mean(1)
    ) / 2
    return float(cuts[balanced.argmax()])


def is_noise(images: torch.Tensor, threshold: float) -> torch.Tensor:
    """(N,) True where an image scores as noise."""
    return neighbour_correlation(images) < threshold


def noise_rate(images: torch.Tensor, threshold: float) -> float:
    """% of images that score as noise."""
    return percent(is_noise(images, threshold))
