"""The paper's judge: torchvision's ResNet-34 with a K-way head, fine-tuned on CIFAR-10 and saved as a
plain state dict (`cifar10_resnet34.pth`), as SalUn's and SAFEMax's evaluations use it.

The network is written here with torchvision's layout and parameter names (so its state dicts load as
they are) rather than imported: torchvision's wheels must match the torch build exactly, and the CPU
build of torch that this package installs has none on its index. Its preprocessing is the reference's:
images resized to 224 x 224 and normalised with mean = std = 0.5. Our images are already in [-1, 1],
which is that normalisation of [0, 1] images, and resizing commutes with it, so a bilinear resize of our
images is the whole transform. The file loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from safemax_ray.errors import SafemaxError

INPUT_SIZE = 224
BLOCKS = (3, 4, 6, 3)  # ResNet-34's basic blocks per stage
WIDTHS = (64, 128, 256, 512)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm, and a 1x1 projection of the input when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + identity)


class ResNet34(nn.Module):
    """torchvision.models.resnet34's modules, under its names."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for stage, (blocks, width) in enumerate(zip(BLOCKS, WIDTHS, strict=True)):
            stride = 1 if stage == 0 else 2
            layers = [BasicBlock(cin if i == 0 else width, width, stride if i == 0 else 1) for i in range(blocks)]
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layers))
            cin = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)


class ResNetJudge(nn.Module):
    """A classifier of the evaluation slot (logits, `features`, `feature_dim`) around a ResNet-34."""

    feature_dim = 512
    batch_size = 64  # images per forward: 224 x 224 activations are large

    def __init__(self, num_classes: int):
        super().__init__()
        self.net = ResNet34(num_classes)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x.float(), size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled 512-d activations before the head."""
        n = self.net
        h = n.maxpool(n.relu(n.bn1(n.conv1(self._prepare(x)))))
        h = n.layer4(n.layer3(n.layer2(n.layer1(h))))
        return torch.flatten(n.avgpool(h), 1)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """The logits of `features(x)`: the head."""
        return self.net.fc(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.features(x))


def load_resnet_judge(path: str | Path, num_classes: int | None = None) -> ResNetJudge:
    """A ResNet-34 state dict file (keys `conv1.weight`, ..., `fc.weight`), checked against the data."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (not a torch file, or truncated)
        raise SafemaxError(f"cannot read classifier {path} as a torch state dict ({type(exc).__name__})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or "fc.weight" not in state or "layer4.2.conv2.weight" not in state:
        raise SafemaxError(
            f"classifier {path} is not a torchvision ResNet-34 state dict (no fc.weight / layer4.2); "
            "give the folder of a classifier made by `safemax-ray pretrain`, or a ResNet-34 state dict"
        )
    state = {k.removeprefix("module."): v for k, v in state.items()}
    classes, width = state["fc.weight"].shape
    if num_classes is not None and classes != num_classes:
        head = " (the ImageNet head: fine-tune it with fc = Linear(512, K) first)" if classes == 1000 else ""
        raise SafemaxError(f"classifier {path} has {classes} classes but the data has {num_classes}{head}")
    judge = ResNetJudge(classes)
    try:
        judge.net.load_state_dict(state)
    except RuntimeError as exc:
        raise SafemaxError(f"classifier {path} does not fit ResNet-34: {str(exc).splitlines()[0]}") from None
    return judge.eval()
