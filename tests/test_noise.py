"""The classifier-free noise check: calibrated on real digits against clamped N(0, I) noise."""

import torch

from safemax_ray.core.data import load_digits
from safemax_ray.core.noise import calibrate, neighbour_correlation, noise_rate


def test_real_digits_are_not_noise_and_noise_of_any_scale_is():
    real = load_digits().images
    threshold = calibrate(real)
    g = torch.Generator().manual_seed(1)
    shape = (500, 1, 8, 8)
    assert noise_rate(real, threshold) <= 1.0
    assert noise_rate(torch.randn(shape, generator=g).clamp(-1, 1), threshold) >= 99.0
    assert noise_rate(torch.rand(shape, generator=g) * 2 - 1, threshold) >= 99.0  # Selective Amnesia's surrogate
    assert noise_rate(0.2 * torch.randn(shape, generator=g), threshold) >= 99.0  # faint noise is noise too


def test_scores_do_not_depend_on_brightness_or_contrast():
    images = load_digits().images[:50]
    torch.testing.assert_close(neighbour_correlation(images), neighbour_correlation(0.5 * images + 0.3))
    assert neighbour_correlation(torch.zeros(2, 1, 8, 8)).tolist() == [1.0, 1.0]  # a flat image is not noise
