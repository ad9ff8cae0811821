"""Judging samples where they are drawn.

An evaluation draws thousands of images; its metrics need far less of them: the classifier's logits
(UA, H, accuracy), a noise flag and the FID feature vector of each image, and the few images a grid
shows. A chunk judge turns one chunk of samples (all of one class: engine/evaluate.py) into that
`Judgement` on the device that drew it (a Train worker or an evaluation task), so only the judgement
travels: each worker sends a `Share` (its chunks' judgements) and `assemble` joins the shares in sample order.
A chunk's judgement depends on its class and its samples alone, not on which classes the run forgets,
so the base model's judgement of a class serves every run that needs that class.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import torch
from torch import nn

from safemax_ray.core.classifier import FeatureExtractor
from safemax_ray.core.noise import is_noise


@dataclass(frozen=True)
class Chunk:
    """One sampling chunk: `labels[start:stop]`, all of class `label`, the `part`-th chunk of that class
    (its first sample is the class's sample number `offset`)."""

    label: int
    part: int
    start: int
    stop: int
    offset: int

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass
class Judgement:
    """What judging samples leaves: a tensor per name (logits, noise flags, features...) whose first
    dimension is the samples, in sample order (the grid's tensors hold the grid's samples only)."""

    per_sample: dict[str, torch.Tensor]

    def tensors(self) -> dict[str, torch.Tensor]:
        """Flat, for a safetensors cache entry."""
        return dict(self.per_sample)

    @classmethod
    def from_tensors(cls, flat: dict[str, torch.Tensor]) -> Judgement:
        return cls(dict(flat))


def join(judgements: list[Judgement]) -> Judgement:
    """One judgement of consecutive parts, their samples concatenated in the order given."""
    keys = judgements[0].per_sample.keys()
    return Judgement({k: torch.cat([j.per_sample[k] for j in judgements]) for k in keys})


@dataclass
class Share:
    """What one worker sends of the chunks it judged: each chunk's judgement."""

    per_chunk: dict[int, dict[str, torch.Tensor]]  # chunk number -> its per-sample tensors

    @classmethod
    def of(cls, judged: dict[int, Judgement]) -> Share:
        return cls({c: j.per_sample for c, j in judged.items()})

    def nbytes(self) -> int:
        """The bytes of tensors it carries (what a task sends back to the driver)."""
        return sum(t.numel() * t.element_size() for tensors in self.per_chunk.values() for t in tensors.values())


def assemble(shares: list[Share]) -> Judgement:
    """The judgement of every chunk from the workers' shares, in chunk order."""
    by_chunk = {c: tensors for share in shares for c, tensors in share.per_chunk.items()}
    return join([Judgement(by_chunk[c]) for c in range(len(by_chunk))])


class ChunkJudge(Protocol):
    """Judges the images of one chunk."""

    def to(self, device: torch.device) -> ChunkJudge: ...

    def __call__(self, images: torch.Tensor, chunk: Chunk) -> Judgement: ...


class KeepImages:
    """Judges nothing and keeps every image: concept grids, training latents, sampling without a judge."""

    def to(self, device: torch.device) -> KeepImages:
        return self

    def __call__(self, images: torch.Tensor, chunk: Chunk) -> Judgement:
        return Judgement({"images": images.cpu()})


@torch.no_grad()
def classify(classifier: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Logits, in the classifier's own batch size, on its device."""
    device = next(classifier.parameters()).device
    return torch.cat([classifier(chunk.to(device)).float().cpu() for chunk in images.split(classifier.batch_size)])


@torch.no_grad()
def decode_all(decode: nn.Module, samples: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """`decode` over `samples` in batches, on its device: the images a latent model's samples show."""
    device = next(decode.parameters()).device
    return torch.cat([decode(part.to(device)).float() for part in samples.split(batch_size)])


GRID_KEYS = ("grid", "grid_labels")  # the grid's samples only, not one entry per sample


@dataclass
class ClassJudge:
    """The paper's judge of class-conditional samples: for every sample its classifier logits, its
    noise flag and its FID features (float32), and each class's first `grid_per_class` samples for the
    grid."""

    classifier: nn.Module
    features: nn.Module  # images in [-1, 1] -> (N, num_features): the FID feature space
    noise_threshold: float
    grid_per_class: int = 10
    decode: nn.Module | None = None  # samples -> images in [-1, 1], where the model draws latents

    def to(self, device: torch.device) -> ClassJudge:
        decode = None if self.decode is None else self.decode.to(device)
        return replace(self, classifier=self.classifier.to(device), features=self.features.to(device), decode=decode)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, chunk: Chunk) -> Judgement:
        if self.decode is not None:
            images = decode_all(self.decode, images)
        grid = images[: max(0, self.grid_per_class - chunk.offset)].cpu()
        logits, features = self.logits_and_features(images)
        return Judgement(
            {
                "logits": logits,
                "noise": is_noise(images, self.noise_threshold).cpu(),
                "features": features.float().cpu(),
                "grid": grid,
                "grid_labels": torch.full((len(grid),), chunk.label, dtype=torch.long),
            }
        )

    @torch.no_grad()
    def logits_and_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The classifier's logits (float32, on the CPU) and the FID features (`features_of`). Where the
        FID features are the classifier's own (no Inception weights), one pass gives both: the
        classifier's body would otherwise run twice on every sample (a ResNet-34 at 224 x 224)."""
        if not (isinstance(self.features, FeatureExtractor) and self.features.classifier is self.classifier):
            return classify(self.classifier, images), self.features_of(images)
        device = next(self.classifier.parameters()).device
        features = [self.features(part.to(device)) for part in images.split(self.classifier.batch_size)]
        logits = torch.cat([self.classifier.logits(f).float().cpu() for f in features])
        return logits, torch.cat([f.double() for f in features])

    @torch.no_grad()
    def features_of(self, images: torch.Tensor) -> torch.Tensor:
        """The FID features of `images` (any number, in the feature network's batch size), float64 on the
        feature network's device."""
        device = next(self.features.parameters()).device
        parts = [self.features(chunk.to(device)).double() for chunk in images.split(self.features.batch_size)]
        return torch.cat(parts) if parts else torch.empty((0, self.features.num_features), dtype=torch.float64)
