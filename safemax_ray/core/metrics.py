"""The paper's figures from classifier logits and image features; no Ray, no sampling.

UA    = 100 - percent of forget-class samples the classifier labels as the forget class.
H     = mean natural-log entropy of the classifier's softmax on forget-class samples (max ln K).
FID   = Frechet distance between features of retained-class samples and real retained-class images,
        computed by torchmetrics' FrechetInceptionDistance with a pluggable feature extractor.
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance


def unlearning_accuracy(logits: torch.Tensor, forget_class: int | torch.Tensor) -> float:
    """% of samples not labelled as the forget class (a class, or each sample's own class)."""
    return 100.0 - 100.0 * (logits.argmax(1) == forget_class).float().mean().item()


def mean_entropy(logits: torch.Tensor) -> float:
    log_p = torch.log_softmax(logits.double(), dim=1)
    return float(-(log_p.exp() * log_p).sum(1).mean())


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Percent of samples labelled as the class they were generated for."""
    if len(labels) == 0:
        return float("nan")
    return 100.0 * (logits.argmax(1) == labels).float().mean().item()


def frechet_distance(
    real: torch.Tensor, fake: torch.Tensor, extractor: nn.Module | int, weights_path: str | None = None
) -> float:
    """FID between image sets in [-1, 1]. `extractor` is a feature module (with `num_features`) or, for
    the Inception network, its feature size (2048) plus a local weights file.

    The caller holds all images, so the metric must not sync across DDP ranks (rank 0 scores alone).
    """
    if isinstance(extractor, nn.Module):
        metric = FrechetInceptionDistance(feature=extractor, normalize=True, sync_on_compute=False)
        prepare = lambda x: x  # noqa: E731  (the module takes our [-1, 1] images as they are)
    else:
        metric = FrechetInceptionDistance(
            feature=extractor, normalize=True, feature_extractor_weights_path=weights_path, sync_on_compute=False
        )
        prepare = lambda x: ((x + 1) / 2).expand(-1, 3, -1, -1)  # noqa: E731  ([0, 1] RGB for Inception)
    with torch.no_grad():
        for chunk in real.split(1024):
            metric.update(prepare(chunk), real=True)
        for chunk in fake.split(1024):
            metric.update(prepare(chunk), real=False)
    return float(metric.compute())
