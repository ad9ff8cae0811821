"""The paper's figures from classifier logits and image features; no Ray, no sampling.

UA    = 100 - percent of forget-class samples the classifier labels as the forget class.
H     = mean natural-log entropy of the classifier's softmax on forget-class samples (max ln K).
FID   = Frechet distance between features of retained-class samples and real retained-class images,
        from feature sums that add across chunks (so no process needs every image).
KID   = unbiased squared MMD (cubic polynomial kernel) between the same features, over random subsets
        of both sides (torchmetrics' way); its mean and standard deviation over the subsets.
"""

from __future__ import annotations

import torch
from torch import nn


def unlearning_accuracy(logits: torch.Tensor, forget_class: int | torch.Tensor) -> float:
    """% of samples not labelled as the forget class (a class, or each sample's own class)."""
    return 100.0 - 100.0 * (logits.argmax(1) == forget_class).float().mean().item()


def entropies(logits: torch.Tensor) -> torch.Tensor:
    """Each sample's natural-log entropy of the classifier's softmax (float64)."""
    log_p = torch.log_softmax(logits.double(), dim=1)
    return -(log_p.exp() * log_p).sum(1)


def mean_entropy(logits: torch.Tensor) -> float:
    return float(entropies(logits).mean())


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Percent of samples labelled as the class they were generated for."""
    if len(labels) == 0:
        return float("nan")
    return 100.0 * (logits.argmax(1) == labels).float().mean().item()


def percent(flags: torch.Tensor) -> float:
    """% of true flags (nan for none)."""
    return 100.0 * float(flags.float().mean()) if len(flags) else float("nan")


def feature_sums(features: torch.Tensor) -> dict[str, torch.Tensor]:
    """What FID needs of a set of (N, D) features, as sums that add across chunks: the sum, the sum of
    outer products and the count, in float64 (as torchmetrics keeps them)."""
    f = features.double()
    count = torch.tensor(float(len(f)), dtype=torch.float64)
    return {"fid_sum": f.sum(0), "fid_outer": f.t().mm(f), "fid_count": count}


def kid_mmd(x: torch.Tensor, y: torch.Tensor) -> float:
    """The unbiased squared MMD between features x (m, D) and y (n, D) under KID's polynomial kernel
    k(a, b) = (a.b / D + 1)^3 (Binkowski et al. 2018; torchmetrics' KernelInceptionDistance per subset),
    in float64 on x's device; nan when either side has fewer than 2 rows."""
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        return float("nan")
    x, y = x.double(), y.to(x.device).double()
    kernel = lambda a, b: (a @ b.t() / x.shape[1] + 1) ** 3  # noqa: E731
    k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return float(within_x + within_y - 2 * k_xy.mean())


def moments(sums: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and the (unbiased) covariance of a feature set given by `feature_sums`."""
    n = sums["fid_count"]
    if n < 2:
        raise ValueError(f"FID needs at least 2 samples on each side, got {int(n)}")
    mean = sums["fid_sum"] / n
    return mean, (sums["fid_outer"] - n * torch.outer(mean, mean)) / (n - 1)


def frechet_from_sums(real: dict[str, torch.Tensor], fake: dict[str, torch.Tensor]) -> float:
    """The Frechet distance between two feature sets given by `feature_sums` (added over any chunks);
    the same arithmetic as torchmetrics' FrechetInceptionDistance.compute."""
    (mu1, sigma1), (mu2, sigma2) = moments(real), moments(fake)
    a = (mu1 - mu2).square().sum()
    b = sigma1.trace() + sigma2.trace()
    c = torch.linalg.eigvals(sigma1 @ sigma2).sqrt().real.sum()
    return float(a + b - 2 * c)


def kid(
    fake: torch.Tensor, real: torch.Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID as torchmetrics' KernelInceptionDistance computes it: `kid_mmd` of `subsets` random pairs of
    subsets of `subset_size` fake and real features (fewer where a side has fewer), drawn without
    replacement with a fixed seed; their mean and standard deviation. nan for fewer than 2 on a side."""
    size = min(subset_size, len(fake), len(real))
    if size < 2:
        return float("nan"), float("nan")
    g = torch.Generator().manual_seed(seed)

    def subset(features: torch.Tensor) -> torch.Tensor:
        return features[torch.randperm(len(features), generator=g)[:size]]

    scores = torch.tensor([kid_mmd(subset(fake), subset(real)) for _ in range(subsets)], dtype=torch.float64)
    return float(scores.mean()), float(scores.std(unbiased=False))


class InceptionFeatures(nn.Module):
    """The 2048 Inception pool features FID is defined on, from images in [-1, 1] (grey or RGB), with a
    local weights file (torchmetrics' network; needs the `cifar` extra's torch-fidelity)."""

    num_features = 2048
    batch_size = 256  # images per forward at 299 x 299

    def __init__(self, weights_path: str):
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.net = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=weights_path
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torchmetrics' FID with normalize=True: [0, 1] floats become bytes before the network
        return self.net((((x + 1) / 2).expand(-1, 3, -1, -1) * 255).byte())
