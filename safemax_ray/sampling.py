"""Classifier-free-guided DDPM ancestral sampling.

eps = (1 + w) * eps(x_t, c) - w * eps(x_t, null), one forward pass over the conditional and the null
copies of the batch. `steps=None` walks the model's full training schedule (the reference protocol);
fewer steps stride through it with the same ancestral update.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DDPMScheduler, UNet2DModel


@torch.no_grad()
def sample(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    labels: torch.Tensor,
    null_label: int,
    guidance: float = 2.0,
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 512,
    on_step: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Images in [-1, 1] for each entry of `labels`, on the CPU.

    Noise comes from a CPU generator seeded with `seed`, so the same call gives the same samples on any
    device and the base and unlearned models can be compared on identical noise.
    """
    device = next(unet.parameters()).device
    scheduler = DDPMScheduler.from_config(scheduler.config)  # set_timesteps mutates its scheduler
    scheduler.set_timesteps(steps or scheduler.config.num_train_timesteps)
    generator = torch.Generator().manual_seed(seed)
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    chunks = []
    total = len(scheduler.timesteps) * -(-len(labels) // batch_size)
    for c, chunk_labels in enumerate(labels.split(batch_size)):
        x = torch.randn((len(chunk_labels), *shape), generator=generator).to(device)
        cond = chunk_labels.to(device)
        both = torch.cat([cond, torch.full_like(cond, null_label)])
        for i, t in enumerate(scheduler.timesteps):
            eps_c, eps_u = unet(torch.cat([x, x]), t, class_labels=both).sample.float().chunk(2)
            eps = (1 + guidance) * eps_c - guidance * eps_u
            # diffusers draws the step noise on the CPU generator and moves it to the device.
            x = scheduler.step(eps, t, x, generator=generator).prev_sample
            if on_step is not None:
                on_step(c * len(scheduler.timesteps) + i + 1, total)
        chunks.append(x.clamp(-1, 1).cpu())
    return torch.cat(chunks) if chunks else torch.empty((0, *shape))
