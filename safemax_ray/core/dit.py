"""Class-conditional latent DiT pipelines, seen by the engine as class-conditional models.

A pipeline folder is what `DiTPipeline.save_pretrained` writes: `model_index.json`, `transformer/` (a
DiTTransformer2DModel whose `num_embeds_ada_norm` is its class count K; its label table has K + 1 rows,
the last the null label of classifier-free guidance), `vae/` (an AutoencoderKL) and `scheduler/` (any
DDPM-family scheduler; it is read as a DDPMScheduler, unclipped, as latents are unbounded).

Training and sampling happen in latent space: the images are encoded once (the VAE's posterior mean,
times its scaling factor, as DiT trains), and a judge decodes the samples before classifying them.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, DiTTransformer2DModel
from diffusers.configuration_utils import FrozenDict
from diffusers.models.embeddings import LabelEmbedding
from diffusers.models.modeling_outputs import Transformer2DModelOutput

from safemax_ray.core.models import DiffusionModel, content_hash, require_parts

PARTS = ("transformer", "vae", "scheduler")
WEIGHTS = "diffusion_pytorch_model.safetensors"  # what diffusers' save_pretrained names them


class LabelledDiT(torch.nn.Module):
    """A DiTTransformer2DModel called the way the engine calls a class-conditional UNet: it returns the
    noise prediction only (a learned-sigma model's variance half is dropped, as DiTPipeline drops it),
    and it never drops labels on its own: the methods decide where the null label goes.

    Its state dict is the transformer's, prefixed `transformer.`."""

    def __init__(self, transformer: DiTTransformer2DModel):
        super().__init__()
        self.transformer = transformer
        for module in transformer.modules():
            if isinstance(module, LabelEmbedding):
                module.dropout_prob = 0.0  # its table keeps the null row; training no longer drops to it
        config = transformer.config
        self.config = FrozenDict({**config, "num_class_embeds": int(config.num_embeds_ada_norm) + 1})

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int, class_labels: torch.Tensor) -> Any:
        steps = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(len(sample))
        out = self.transformer(sample, timestep=steps, class_labels=class_labels).sample
        return Transformer2DModelOutput(sample=out[:, : sample.shape[1]])


class LatentDecoder(torch.nn.Module):
    """Latents -> images in [-1, 1], through the pipeline's VAE (what a judge of a DiT sees)."""

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents / self.vae.config.scaling_factor).sample.clamp(-1, 1)


@dataclass
class DiTParts:
    path: Path
    transformer: DiTTransformer2DModel
    vae: AutoencoderKL
    scheduler: DDPMScheduler

    def model(self) -> DiffusionModel:
        return DiffusionModel(LabelledDiT(self.transformer), self.scheduler)

    @property
    def num_classes(self) -> int:
        return int(self.transformer.config.num_embeds_ada_norm)

    @property
    def image_size(self) -> int:
        """The pixel size the VAE turns into the transformer's latent size."""
        scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return int(self.transformer.config.sample_size) * scale


def check_folder(path: str | Path) -> Path:
    """The folder, if it holds every part of a DiT pipeline; else a one-line error."""
    return require_parts(path, PARTS, "DiTPipeline", "DiTPipeline.save_pretrained: transformer/, vae/, scheduler/")


def load_parts(path: str | Path, transformer_from: str | Path | None = None) -> DiTParts:
    """The pipeline's parts on the CPU, in float32; the transformer from `transformer_from` when given
    (an unlearned one beside the base pipeline's VAE and scheduler)."""
    path = check_folder(path)
    transformer = DiTTransformer2DModel.from_pretrained(
        Path(transformer_from or path) / "transformer", low_cpu_mem_usage=False
    )
    vae = AutoencoderKL.from_pretrained(path / "vae", low_cpu_mem_usage=False).eval().requires_grad_(False)
    scheduler = DDPMScheduler.from_pretrained(path / "scheduler", clip_sample=False)
    return DiTParts(path, transformer.float(), vae.float(), scheduler)


def fingerprint(path: str | Path) -> str:
    """The pipeline by the content of every weight and config file (for run keys and caches)."""
    return content_hash(sorted(f for part in PARTS for f in (Path(path) / part).rglob("*") if f.is_file()))


@torch.no_grad()
def encode(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Images in [-1, 1] -> latents: the posterior mean times the scaling factor (deterministic)."""
    parts = [vae.encode(x).latent_dist.mean * vae.config.scaling_factor for x in images.split(batch_size)]
    return torch.cat(parts).contiguous()


def export(base: str | Path, transformer_dir: Path, out: Path) -> None:
    """A complete DiTPipeline folder at `out`: the base pipeline with the unlearned transformer."""
    shutil.copytree(base, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("transformer"))
    shutil.copytree(transformer_dir, out / "transformer")
