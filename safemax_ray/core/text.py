"""Text-to-image pipelines, seen by the engine as class-conditional models.

A pipeline folder is what `StableDiffusionPipeline.save_pretrained` writes: `model_index.json`, `unet/`
(a UNet2DConditionModel), `vae/` (an AutoencoderKL), `text_encoder/` and `tokenizer/` (CLIP) and
`scheduler/` (any DDPM-family scheduler; it is read as a DDPMScheduler). Training happens in latent space.

A run fixes its prompts up front and encodes them once with the frozen text encoder; from then on prompt
i is "class" i and the empty prompt is the null label, so every method, the sampler, Ray Train and the
checkpoints work on a pipeline unchanged. transformers is imported here only, when a pipeline is loaded
(install the `text` extra).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.configuration_utils import FrozenDict

from safemax_ray.core.models import DiffusionModel, content_hash, require_parts
from safemax_ray.errors import SafemaxError

PIPELINE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


class PromptUNet(torch.nn.Module):
    """A UNet2DConditionModel called with class labels: label i means prompt i of `prompt_embeds`.

    The embeddings are a non-persistent buffer, so the state dict is exactly the UNet's (prefixed
    `unet.`) and a checkpoint stores the UNet alone.
    """

    def __init__(self, unet: UNet2DConditionModel, prompt_embeds: torch.Tensor):
        super().__init__()
        self.unet = unet
        self.register_buffer("prompt_embeds", prompt_embeds, persistent=False)
        # What the engine reads of a class-conditional UNet's config.
        self.config = FrozenDict({**unet.config, "num_class_embeds": len(prompt_embeds)})

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor) -> Any:
        states = self.prompt_embeds[class_labels.to(self.prompt_embeds.device)].to(sample.dtype)
        return self.unet(sample, timestep, encoder_hidden_states=states)


@dataclass
class TextPipeline:
    path: Path
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: torch.nn.Module
    tokenizer: Any
    scheduler: DDPMScheduler

    def to(self, device: torch.device | str) -> TextPipeline:
        for module in (self.unet, self.vae, self.text_encoder):
            module.to(device)
        return self


def check_pipeline_folder(path: str | Path) -> Path:
    """The folder, if it holds every part of a text-to-image pipeline; else a one-line error."""
    path = require_parts(path, PIPELINE_PARTS, "text-to-image", "StableDiffusionPipeline.save_pretrained")
    kind = (path / "unet" / "config.json").read_text() if (path / "unet" / "config.json").is_file() else ""
    if '"UNet2DConditionModel"' not in kind:
        raise SafemaxError(f"{path}/unet is not a UNet2DConditionModel")
    return path


def load_pipeline(path: str | Path) -> TextPipeline:
    """Every part from local files, in eval mode; the VAE and text encoder stay frozen."""
    try:
        from transformers import CLIPTextModel, CLIPTokenizer
        from transformers.utils import logging as transformers_logging
    except ImportError:
        raise SafemaxError("text-to-image pipelines need transformers: pip install 'safemax-ray[text]'") from None
    transformers_logging.disable_progress_bar()  # its bars would interleave with ours
    path = check_pipeline_folder(path)
    local = {"local_files_only": True}
    pipe = TextPipeline(
        path=path,
        unet=load_unet(path),
        vae=AutoencoderKL.from_pretrained(path, subfolder="vae", low_cpu_mem_usage=False, **local),
        text_encoder=CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **local),
        tokenizer=CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", **local),
        scheduler=DDPMScheduler.from_pretrained(path, subfolder="scheduler", **local),
    )
    for frozen in (pipe.vae, pipe.text_encoder):
        frozen.eval().requires_grad_(False)
    return pipe


def load_unet(path: str | Path) -> UNet2DConditionModel:
    return UNet2DConditionModel.from_pretrained(path, subfolder="unet", local_files_only=True, low_cpu_mem_usage=False)


@torch.no_grad()
def encode_prompts(pipe: TextPipeline, prompts: list[str]) -> torch.Tensor:
    """(len(prompts) + 1, tokens, width): the prompts' CLIP states, then the empty prompt's (the null)."""
    tokens = pipe.tokenizer(
        [*prompts, ""],
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    device = next(pipe.text_encoder.parameters()).device
    return pipe.text_encoder(tokens.to(device))[0].float()


def prompt_model(pipe: TextPipeline, prompts: list[str], unet: UNet2DConditionModel | None = None) -> DiffusionModel:
    """The pipeline's UNet (or `unet`) as a class-conditional model over `prompts`."""
    return DiffusionModel(PromptUNet(unet or pipe.unet, encode_prompts(pipe, prompts)), pipe.scheduler)


@torch.no_grad()
def encode_images(pipe: TextPipeline, images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> scaled latents (the posterior mean: no sampling noise)."""
    device = next(pipe.vae.parameters()).device
    latents = torch.cat([pipe.vae.encode(x.to(device)).latent_dist.mode() for x in images.split(16)])
    return (latents * pipe.vae.config.scaling_factor).cpu()


@torch.no_grad()
def decode_latents(pipe: TextPipeline, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents -> images in [-1, 1]."""
    device = next(pipe.vae.parameters()).device
    parts = [pipe.vae.decode(z.to(device) / pipe.vae.config.scaling_factor).sample for z in latents.split(16)]
    return torch.cat(parts).clamp(-1, 1).cpu()


def pipeline_fingerprint(path: str | Path) -> str:
    """The pipeline by the content of every weight, config and tokenizer file (for run keys and caches)."""
    return content_hash(sorted(f for part in PIPELINE_PARTS for f in (Path(path) / part).rglob("*") if f.is_file()))


def export_pipeline(base: str | Path, unet_dir: Path, out: Path) -> None:
    """A complete pipeline folder at `out`: the base pipeline's parts with the unlearned UNet."""
    shutil.copytree(base, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("unet"))
    shutil.copytree(unet_dir, out / "unet")
