"""One unlearning step in plain torch: draw this rank's rows of the global batch, loss, backward, update.

Nothing here syncs the host: indices, noise and statistics stay on the device, and the statistics come
back as tensors for the loop to read every few steps.
"""

from __future__ import annotations

import torch

from safemax_ray.core.data import ImageData
from safemax_ray.core.randomness import RankRandom
from safemax_ray.methods.base import UnlearnBatch, UnlearningMethod


def draw_batch(
    data: ImageData, forget_idx: torch.Tensor, remain_idx: torch.Tensor, per_rank: int, null_label: int, rng: RankRandom
) -> UnlearnBatch:
    """`per_rank` forget and `per_rank` remain images, drawn with replacement from the whole dataset."""
    f, r = rng.choice(forget_idx, per_rank), rng.choice(remain_idx, per_rank)
    return UnlearnBatch(data.images[f], data.labels[f], data.images[r], data.labels[r], null_label)


def train_step(
    unet: torch.nn.Module,
    method: UnlearningMethod,
    optimizer: torch.optim.Optimizer,
    batch: UnlearnBatch,
    rng: RankRandom,
    grad_clip: float,
) -> dict[str, torch.Tensor]:
    """Forward and loss (bf16 autocast on CUDA), backward, the method's gradient hook, clip, update."""
    device = batch.x_forget.device
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        out = method.loss(unet, batch, rng)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    method.after_backward(unet)
    grad_norm = torch.nn.utils.clip_grad_norm_(unet.parameters(), grad_clip)
    optimizer.step()
    return {**out.stats, "grad_norm": grad_norm.detach()}
