"""Judging samples where they are drawn.

An evaluation draws thousands of images; its metrics need far less of them: the classifier's logits
(UA, H, accuracy), a noise flag per image, the FID feature sums of the retained samples, one KID
estimate per chunk, and the few images a grid shows. A chunk judge turns one chunk of samples into
that `Judgement` on the device that drew it (a Train worker or an evaluation task), so only the
judgement travels: each worker sends a
`Share` (its chunks' rows, and their sums added once) and `assemble` joins the shares in sample order.
The metrics are those of scoring every image in one place, up to the order floating-point sums are
taken in.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol

import torch
from torch import nn

from safemax_ray.core.metrics import feature_sums, kid_mmd
from safemax_ray.core.noise import is_noise


@dataclass
class Judgement:
    """What judging samples leaves: rows in sample order, and sums."""

    rows: dict[str, torch.Tensor]  # joined by concatenation, in sample order
    sums: dict[str, torch.Tensor]  # joined by addition

    def tensors(self) -> dict[str, torch.Tensor]:
        """Flat, for a safetensors cache entry."""
        return {**{f"rows.{k}": v for k, v in self.rows.items()}, **{f"sums.{k}": v for k, v in self.sums.items()}}

    @classmethod
    def from_tensors(cls, flat: dict[str, torch.Tensor]) -> Judgement:
        part = lambda prefix: {k[len(prefix) :]: v for k, v in flat.items() if k.startswith(prefix)}  # noqa: E731
        return cls(part("rows."), part("sums."))


@dataclass
class Share:
    """What one worker sends of the chunks it judged: each chunk's rows, and the chunks' sums added
    (FID's feature sums are as large for one chunk as for all of them)."""

    rows: dict[int, dict[str, torch.Tensor]]  # chunk -> its rows
    sums: dict[str, torch.Tensor]

    @classmethod
    def of(cls, judged: dict[int, Judgement]) -> Share:
        return cls({c: j.rows for c, j in judged.items()}, _add([j.sums for j in judged.values()]))

    def nbytes(self) -> int:
        """The bytes of tensors it carries (what a task sends back to the driver)."""
        tensors = [*self.sums.values(), *(t for rows in self.rows.values() for t in rows.values())]
        return sum(t.numel() * t.element_size() for t in tensors)


def assemble(shares: list[Share]) -> Judgement:
    """The judgement of every chunk from the workers' shares: rows in chunk order, sums added."""
    by_chunk = {c: rows for share in shares for c, rows in share.rows.items()}
    ordered = [by_chunk[c] for c in range(len(by_chunk))]
    return Judgement({k: torch.cat([r[k] for r in ordered]) for k in ordered[0]}, _add([s.sums for s in shares]))


def _add(sums: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    present = [s for s in sums if s]
    return {k: torch.stack([s[k] for s in present]).sum(0) for k in present[0]} if present else {}


class ChunkJudge(Protocol):
    """Judges one chunk of samples; `index` is each sample's position in the evaluation's labels."""

    def to(self, device: torch.device) -> ChunkJudge: ...

    def __call__(self, images: torch.Tensor, index: torch.Tensor) -> Judgement: ...


class KeepImages:
    """Judges nothing and keeps every image: concept grids, training latents, sampling without a judge."""

    def to(self, device: torch.device) -> KeepImages:
        return self

    def __call__(self, images: torch.Tensor, index: torch.Tensor) -> Judgement:
        return Judgement({"images": images.cpu()}, {})


@torch.no_grad()
def classify(classifier: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Logits, in the classifier's own batch size, on its device."""
    device = next(classifier.parameters()).device
    return torch.cat([classifier(chunk.to(device)).float().cpu() for chunk in images.split(classifier.batch_size)])


@dataclass
class ClassJudge:
    """The paper's judge of class-conditional samples: classifier logits and a noise flag for every
    sample, FID feature sums of the retained-class samples, and each class's first `grid_per_class`
    samples for the grid."""

    classifier: nn.Module
    features: nn.Module  # images in [-1, 1] -> (N, num_features): the FID feature space
    labels: torch.Tensor  # the class of every sample of the evaluation
    forget: list[int]
    noise_threshold: float
    kid_real: torch.Tensor  # real retained-class images each chunk's KID is measured against
    grid_per_class: int = 10
    # kid_real's features, computed once where the judge works (a task's copy computes its own)
    kid_reference: torch.Tensor | None = field(default=None, repr=False)

    def to(self, device: torch.device) -> ClassJudge:
        return replace(self, classifier=self.classifier.to(device), features=self.features.to(device))

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, index: torch.Tensor) -> Judgement:
        labels = self.labels[index]
        retained = ~torch.isin(labels, torch.tensor(self.forget))
        keep = self.grid_positions()[index] < self.grid_per_class
        features = self.features_of(images[retained.to(images.device)])
        if self.kid_reference is None:
            self.kid_reference = self.features_of(self.kid_real)
        return Judgement(
            {
                "logits": classify(self.classifier, images),
                "noise": is_noise(images, self.noise_threshold).cpu(),
                "grid": images[keep.to(images.device)].cpu(),
                "grid_labels": labels[keep],
                "kid": torch.tensor([kid_mmd(features, self.kid_reference)], dtype=torch.float64),  # one a chunk
            },
            feature_sums(features.cpu()),
        )

    @torch.no_grad()
    def features_of(self, images: torch.Tensor) -> torch.Tensor:
        """The FID features of `images` (any number, in the feature network's batch size), float64 on the
        feature network's device."""
        device = next(self.features.parameters()).device
        parts = [self.features(chunk.to(device)).double() for chunk in images.split(self.features.batch_size)]
        return torch.cat(parts) if parts else torch.empty((0, self.features.num_features), dtype=torch.float64)

    def fid_sums(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """FID's sums of the features of `images`."""
        return feature_sums(self.features_of(images).cpu())

    def grid_positions(self) -> torch.Tensor:
        """Each sample's position among the samples of its class."""
        position = torch.empty_like(self.labels)
        for c in self.labels.unique():
            where = (self.labels == c).nonzero().squeeze(1)
            position[where] = torch.arange(len(where))
        return position
