"""Judging a model the paper's way: sample with guidance, classify, compute UA, H, FID and accuracy.

Sampling is the expensive part, so it can be split across Ray Train workers (each samples its share,
rank 0 gathers) and the base model's samples are cached, so its "before" figures are computed once per
(model, forget class, evaluation setting).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from safemax_ray import storage
from safemax_ray.classifier import Classifier, FeatureExtractor
from safemax_ray.config import EvalConfig
from safemax_ray.data import ImageData
from safemax_ray.metrics import accuracy, frechet_distance, mean_entropy, unlearning_accuracy
from safemax_ray.models import DiffusionModel
from safemax_ray.sampling import sample

Gather = Callable[[torch.Tensor], torch.Tensor]
OnStep = Callable[[int, int], None]


@dataclass
class EvalResult:
    ua: float  # %
    entropy: float  # nats
    fid: float
    retain_acc: float  # % of retained-class samples labelled as their class
    fid_features: str  # "classifier" or "inception"

    def as_dict(self) -> dict:
        return asdict(self)


def eval_labels(num_classes: int, forget_class: int, config: EvalConfig) -> torch.Tensor:
    """n_forget_samples of the forget class, then n_retain_per_class of every other class."""
    retained = [c for c in range(num_classes) if c != forget_class]
    return torch.cat(
        [
            torch.full((config.n_forget_samples,), forget_class),
            torch.tensor(retained).repeat_interleave(config.n_retain_per_class),
        ]
    ).long()


def sample_sharded(
    model: DiffusionModel,
    labels: torch.Tensor,
    config: EvalConfig,
    rank: int = 0,
    world_size: int = 1,
    gather: Gather | None = None,
    on_step: OnStep | None = None,
) -> torch.Tensor:
    """Each rank samples an equal slice of `labels` (seed offset by rank); `gather` joins the slices."""
    per_rank = -(-len(labels) // world_size)
    mine = labels[rank * per_rank : (rank + 1) * per_rank]
    padded = torch.cat([mine, labels[: per_rank - len(mine)]])  # equal sizes for all_gather
    images = sample(
        model.unet,
        model.scheduler,
        padded,
        model.null_label,
        guidance=config.guidance,
        steps=config.sample_steps,
        seed=config.seed + rank,
        batch_size=config.batch_size,
        on_step=on_step,
    )
    if world_size > 1:
        assert gather is not None, "several workers need a gather function"
        images = gather(images)
    return images[: len(labels)]


@torch.no_grad()
def classify(classifier: Classifier, images: torch.Tensor) -> torch.Tensor:
    device = next(classifier.parameters()).device
    return torch.cat([classifier(chunk.to(device)).float().cpu() for chunk in images.split(1024)])


def score(
    images: torch.Tensor,
    labels: torch.Tensor,
    forget_class: int,
    classifier: Classifier,
    real: ImageData,
    config: EvalConfig,
) -> EvalResult:
    logits = classify(classifier, images)
    is_forget = labels == forget_class
    real_retained = real.images[real.labels != forget_class]
    if config.fid_weights:
        fid = frechet_distance(real_retained, images[~is_forget], 2048, config.fid_weights)
        features = "inception"
    else:
        extractor = FeatureExtractor(classifier.cpu())
        fid = frechet_distance(real_retained, images[~is_forget], extractor)
        features = "classifier"
    return EvalResult(
        ua=unlearning_accuracy(logits[is_forget], forget_class),
        entropy=mean_entropy(logits[is_forget]),
        fid=fid,
        retain_acc=accuracy(logits[~is_forget], labels[~is_forget]),
        fid_features=features,
    )


def base_cache_path(cache_dir: str, model_id: str, dataset: str, forget_class: int, config: EvalConfig) -> str:
    key = json.dumps([model_id, dataset, forget_class, asdict(config)], sort_keys=True)
    return storage.join(cache_dir, f"base-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors")


def base_samples(
    model: DiffusionModel,
    labels: torch.Tensor,
    config: EvalConfig,
    cache_path: str,
    rank: int = 0,
    world_size: int = 1,
    gather: Gather | None = None,
    on_step: OnStep | None = None,
) -> torch.Tensor:
    """The base model's samples for `labels`, from the cache or made (and cached by rank 0).

    Same labels and seeds as the unlearned model's evaluation: both are judged on identical noise.
    """
    if storage.exists(cache_path):
        return load_tensors(storage.read_bytes(cache_path))["images"]
    images = sample_sharded(model, labels, config, rank, world_size, gather, on_step)
    if rank == 0:
        try:
            # The labels are part of the cache key (forget class and evaluation settings), so only images are kept.
            storage.write_bytes_atomic(cache_path, save_tensors({"images": images.contiguous()}))
        except FileExistsError:
            pass  # a concurrent run cached the same samples first
    return images


def save_grid(images: torch.Tensor, labels: torch.Tensor, forget_class: int, path: str, per_row: int = 10) -> None:
    """PNG: a row of forget-class samples, then a few of each retained class."""
    from PIL import Image

    rows = []
    for c in [forget_class] + sorted(set(labels.tolist()) - {forget_class}):
        picks = images[labels == c][:per_row]
        if len(picks) < per_row:
            picks = torch.cat([picks, -torch.ones((per_row - len(picks), *images.shape[1:]))])
        gap = -torch.ones((images.shape[1], images.shape[2], 1))  # a dark column between samples
        rows.append(torch.cat([torch.cat([p, gap], dim=-1) for p in picks], dim=-1))
        rows.append(-torch.ones((images.shape[1], 1, rows[-1].shape[-1])))  # and a dark row between classes
    grid = torch.cat(rows, dim=-2)  # (C, rows*(H+1), per_row*(W+1))
    pixels = ((grid.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    img = Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels)
    scale = max(1, 256 // max(img.size))
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    storage.write_bytes_atomic(path, buffer.getvalue(), overwrite=True)
