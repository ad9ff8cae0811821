"""What an unlearning method is: something that turns a forget batch and a remain batch into a loss.

The trainer owns everything else (data, optimiser, clipping, DDP, checkpoints), so a method is a few
dozen lines of math. Methods get the whole run config and read the fields they need; settings that only
one method knows go in `config.method_options`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from diffusers import DDPMScheduler, UNet2DModel

from safemax_ray.config import UnlearnConfig


@dataclass
class UnlearnBatch:
    x_forget: torch.Tensor  # images of the forget class, [-1, 1]
    x_remain: torch.Tensor  # images of the other classes
    y_remain: torch.Tensor  # their labels
    forget_class: int
    null_label: int


@dataclass
class LossOutput:
    loss: torch.Tensor
    stats: dict[str, float] = field(default_factory=dict)  # detached figures for logging


class UnlearningMethod(ABC):
    def __init__(self, config: UnlearnConfig, scheduler: DDPMScheduler):
        self.config = config
        self.scheduler = scheduler

    @abstractmethod
    def loss(self, unet: UNet2DModel, batch: UnlearnBatch, generator: torch.Generator) -> LossOutput:
        """The training loss for one step; randomness must come from `generator` (CPU)."""
