"""The checkpoint folder of a run, written by rank 0 and read on resume and export.

    model/                 the diffusers folder (DDPMPipeline layout, safetensors; a concept run: unet/
                           and scheduler/ only, the rest stays in the base pipeline)
    train_state.pt         optimizer state, step, seconds so far, set-up seconds (and whether cached),
                           the method's state
    samples.safetensors    the final evaluation images and labels (last checkpoint only)
    diverged.json          instead of all the above when training diverged

train_state.pt holds tensors and numbers only, so it loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from safetensors.torch import load_file
from safetensors.torch import save as tensors_to_bytes

from safemax_ray.core.models import DiffusionModel

MODEL_DIR = "model"
TRAIN_STATE = "train_state.pt"
SAMPLES = "samples.safetensors"
DIVERGED = "diverged.json"
SAMPLES_GRID = "samples.png"  # an exported model folder's grid: a row per class, the forgotten first
FORGET_GRID = "forget.png"  # the forgotten classes' rows alone (the report's Figure 2 reads them)
UNET_WEIGHTS = "diffusion_pytorch_model.safetensors"  # what diffusers' save_pretrained names them


class ModelFolder(Protocol):
    """How a model is written into, and read back from, a checkpoint's model folder (a workload)."""

    def save_model(self, model: DiffusionModel, folder: Path) -> None: ...

    def load_weights(self, unet: torch.nn.Module, folder: Path) -> None: ...


@dataclass
class TrainState:
    step: int = 0
    elapsed_s: float = 0.0  # training seconds before this attempt (steps only)
    setup_s: float = 0.0
    setup_cached: bool = False  # the method's set-up came from the cache (setup_s is a file read)


def save(folder: Path, workload: ModelFolder, model: DiffusionModel, optimizer, method_state: dict, state: TrainState):
    workload.save_model(model, folder / MODEL_DIR)
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "step": state.step,
            "elapsed_s": state.elapsed_s,
            "setup_s": state.setup_s,
            "setup_cached": state.setup_cached,
            "method": method_state,
        },
        folder / TRAIN_STATE,
    )


def restore(folder: Path, workload: ModelFolder, unet: torch.nn.Module, optimizer) -> tuple[TrainState, dict]:
    """Load weights and optimizer state in place; returns the counters and the method's state."""
    workload.load_weights(unet, folder / MODEL_DIR)
    raw = torch.load(folder / TRAIN_STATE, weights_only=True, map_location=next(unet.parameters()).device)
    optimizer.load_state_dict(raw["optimizer"])
    state = TrainState(int(raw["step"]), float(raw["elapsed_s"]), float(raw["setup_s"]), bool(raw["setup_cached"]))
    return state, raw["method"]


def save_samples(folder: Path, images: torch.Tensor, labels: torch.Tensor) -> None:
    (folder / SAMPLES).write_bytes(samples_bytes(images, labels))


def samples_bytes(images: torch.Tensor, labels: torch.Tensor) -> bytes:
    return tensors_to_bytes({"images": images.contiguous(), "labels": labels.contiguous()})


def load_samples(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    samples = load_file(str(folder / SAMPLES))
    return samples["images"], samples["labels"]


def mark_diverged(folder: Path, message: str) -> None:
    (folder / DIVERGED).write_text(json.dumps({"message": message}))
