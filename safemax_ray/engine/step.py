"""This rank's samples of one step's global batch (the update itself is the method's: `UnlearningMethod.step`).

Nothing here syncs the host: the indices are drawn on the device, from the step's generator.
"""

from __future__ import annotations

import torch

from safemax_ray.core.data import ImageData
from safemax_ray.core.randomness import RankRandom
from safemax_ray.methods.base import UnlearnBatch


def draw_batch(
    data: ImageData, forget_idx: torch.Tensor, remain_idx: torch.Tensor, per_rank: int, null_label: int, rng: RankRandom
) -> UnlearnBatch:
    """`per_rank` forget and `per_rank` remain images, drawn with replacement from the whole dataset."""
    f, r = rng.choice(forget_idx, per_rank), rng.choice(remain_idx, per_rank)
    return UnlearnBatch(data.images[f], data.labels[f], data.images[r], data.labels[r], null_label)
