"""Classifier-free-guided sampling: DDPM ancestral steps (the default), or generalized DDIM steps.

eps = (1 + w) * eps(x_t, c) - w * eps(x_t, null), one forward pass over the conditional and the null
copies of the batch. `steps=None` walks the model's full training schedule (the reference protocol);
fewer steps stride through it with the same update. `sampler="ddim"` is the reference codebases' own
sampler (diffusers' DDIMScheduler: uniform skip, `eta` 1.0 by default, no clipping of x0 in the steps).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

SAMPLERS = ("ddpm", "ddim")


@torch.no_grad()
def sample(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    labels: torch.Tensor,
    null_label: int,
    generator: torch.Generator,
    guidance: float = 2.0,
    steps: int | None = None,
    on_step: Callable[[], None] | None = None,
    bf16: bool = True,
    sampler: str = "ddpm",
    eta: float = 1.0,
) -> torch.Tensor:
    """Images in [-1, 1] for each entry of `labels` (one batch), returned on the CPU.

    Every draw (x_T and each step's noise) comes from `generator`, so a given generator seed gives the
    same images whichever worker runs the call; base and unlearned models are compared on identical noise.
    On CUDA the UNet runs under bf16 autocast (`bf16=False` for fp32); the update itself stays fp32.
    """
    pixels = scheduler.config.clip_sample  # pixel models end in [-1, 1]; latents are unbounded
    if sampler == "ddim":
        scheduler = DDIMScheduler.from_config(scheduler.config, clip_sample=False)
        step_kwargs = {"eta": eta}
    else:
        scheduler = DDPMScheduler.from_config(scheduler.config)  # set_timesteps mutates its scheduler
        step_kwargs = {}
    scheduler.set_timesteps(steps or scheduler.config.num_train_timesteps)
    shape = (len(labels), unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    x = torch.randn(shape, generator=generator, device=generator.device)
    x = _denoise(
        unet, scheduler, x, scheduler.timesteps, labels, null_label, generator, guidance, on_step, bf16, step_kwargs
    )
    return x.clamp(-1, 1) if pixels else x


@torch.no_grad()
def denoise_from(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    x_t: torch.Tensor,
    t0: int,
    labels: torch.Tensor,
    null_label: int,
    generator: torch.Generator,
    guidance: float = 2.0,
) -> torch.Tensor:
    """Guided ancestral denoising of `x_t` (noised to timestep t0) down to an image, on the CPU."""
    scheduler = DDPMScheduler.from_config(scheduler.config)
    scheduler.set_timesteps(scheduler.config.num_train_timesteps)
    timesteps = scheduler.timesteps[scheduler.timesteps <= t0]
    x = _denoise(unet, scheduler, x_t, timesteps, labels, null_label, generator, guidance)
    return x.clamp(-1, 1) if scheduler.config.clip_sample else x


def _denoise(
    unet, scheduler, x, timesteps, labels, null_label, generator, guidance, on_step=None, bf16=True, step_kwargs=None
):
    device = next(unet.parameters()).device
    x = x.to(device)
    cond = labels.to(device)
    both = torch.cat([cond, torch.full_like(cond, null_label)])
    use_bf16 = bf16 and device.type == "cuda"
    # The UNet gets the timestep already on the device (a host-to-device copy each step would stall
    # the launch queue); the scheduler indexes its own tables with the CPU copy.
    on_device = timesteps.to(device)
    for i, t in enumerate(timesteps):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
            eps_c, eps_u = unet(torch.cat([x, x]), on_device[i], class_labels=both).sample.float().chunk(2)
        eps = (1 + guidance) * eps_c - guidance * eps_u
        x = scheduler.step(eps, t, x, generator=generator, **(step_kwargs or {})).prev_sample
        if on_step is not None:
            on_step()
    return x.cpu()
