"""A tiny random text-to-image pipeline, written as a diffusers folder, for tests that cannot reach a hub.

Same parts and layout as Stable Diffusion (UNet2DConditionModel, AutoencoderKL, CLIP text encoder and
tokenizer, a DDPM scheduler with clip_sample off), a few thousand parameters each. The tokenizer's
vocabulary is every lowercase letter, digit and space-free punctuation mark, alone and word-final, with no
merges: every word is spelled out character by character.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

TOKENS = 16  # prompt length in tokens


def make_tiny_pipeline(path: Path, seed: int = 0) -> Path:
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    symbols = string.ascii_lowercase + string.digits + ".,'!?-"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in symbols:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), model_max_length=TOKENS)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=TOKENS,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 16),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )
    # Betas small enough that a random UNet samples bounded latents (Stable Diffusion: clip_sample off too).
    scheduler = DDPMScheduler(
        num_train_timesteps=100, beta_start=1e-3, beta_end=0.02, clip_sample=False, steps_offset=1
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path / "pipeline", safe_serialization=True)
    return path / "pipeline"
