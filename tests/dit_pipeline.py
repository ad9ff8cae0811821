"""A tiny random class-conditional DiT pipeline for the 8x8 digits, written as a diffusers folder.

Same parts and layout as facebook/DiT-XL-2-256 (DiTTransformer2DModel with learned sigma, AutoencoderKL,
a DDIM scheduler), a few thousand parameters each: a one-level VAE from 1x8x8 digits to 4x8x8 latents
and a one-layer transformer over 2x2 patches with a label table of 10 classes plus the null label.
"""

from __future__ import annotations

from pathlib import Path

import torch


def make_tiny_dit(path: Path, seed: int = 0, timesteps: int = 50) -> Path:
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(seed)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,  # learned sigma, as DiT-XL-2: the second half is the variance
        num_layers=1,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=10,
    )
    vae = AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(8,),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=8,
    )
    scheduler = DDIMScheduler(num_train_timesteps=timesteps, clip_sample=False)
    DiTPipeline(transformer=transformer, vae=vae, scheduler=scheduler).save_pretrained(path)
    return path
