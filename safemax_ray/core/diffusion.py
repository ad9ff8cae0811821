"""Small pieces of diffusion math shared by pretraining and every unlearning method."""

from __future__ import annotations

import torch


def drop_labels(labels: torch.Tensor, null_label: int, p: float, uniform: torch.Tensor) -> torch.Tensor:
    """Replace each label by the null label where `uniform` < p (classifier-free guidance training).

    `uniform` holds one U[0, 1) draw per label, so the caller decides where the randomness comes from.
    """
    return torch.where(uniform < p, torch.full_like(labels, null_label), labels)


def eps_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The ordinary DDPM loss: per-element mean squared error, in float32 whatever the autocast dtype."""
    return (target.float() - pred.float()).pow(2).mean()
