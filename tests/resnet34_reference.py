"""An independent forward of torchvision's ResNet-34 as plain functions over its state dict (conv1, bn1,
layer{1..4}.{i}.{conv1,bn1,conv2,bn2,downsample.0,downsample.1}, fc), with the reference preprocessing
written out for [0, 1] images: Resize(224) (bilinear), Normalize(mean 0.5, std 0.5). Eval mode."""

import torch
import torch.nn.functional as F


def _bn(sd, name, x):
    return F.batch_norm(
        x,
        sd[f"{name}.running_mean"],
        sd[f"{name}.running_var"],
        sd[f"{name}.weight"],
        sd[f"{name}.bias"],
        training=False,
        eps=1e-5,
    )


def _block(sd, name, x, stride):
    h = F.relu(_bn(sd, f"{name}.bn1", F.conv2d(x, sd[f"{name}.conv1.weight"], stride=stride, padding=1)))
    h = _bn(sd, f"{name}.bn2", F.conv2d(h, sd[f"{name}.conv2.weight"], padding=1))
    if f"{name}.downsample.0.weight" in sd:
        x = _bn(sd, f"{name}.downsample.1", F.conv2d(x, sd[f"{name}.downsample.0.weight"], stride=stride))
    return F.relu(h + x)


def random_state(num_classes=10, seed=0):
    """torchvision's parameter and buffer names with random values (running statistics included)."""
    g = torch.Generator().manual_seed(seed)
    sd = {"conv1.weight": torch.randn(64, 3, 7, 7, generator=g) * (3 * 49) ** -0.5}

    def bn(name, c):
        sd[f"{name}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.bias"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.running_mean"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.running_var"] = 1 + 0.1 * torch.rand(c, generator=g)
        sd[f"{name}.num_batches_tracked"] = torch.tensor(100)

    bn("bn1", 64)
    cin = 64
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512), strict=True), start=1):
        for i in range(blocks):
            name, c = f"layer{stage}.{i}", cin if i == 0 else width
            sd[f"{name}.conv1.weight"] = torch.randn(width, c, 3, 3, generator=g) * (9 * c) ** -0.5
            bn(f"{name}.bn1", width)
            sd[f"{name}.conv2.weight"] = torch.randn(width, width, 3, 3, generator=g) * (9 * width) ** -0.5 * 0.5
            bn(f"{name}.bn2", width)
            if i == 0 and (stage > 1):
                sd[f"{name}.downsample.0.weight"] = torch.randn(width, c, 1, 1, generator=g) * c**-0.5
                bn(f"{name}.downsample.1", width)
        cin = width
    sd["fc.weight"] = torch.randn(num_classes, 512, generator=g) * 512**-0.5
    sd["fc.bias"] = torch.zeros(num_classes)
    return sd


def forward(sd, images01):
    """Logits for [0, 1] images of any size, through the reference preprocessing."""
    x = F.interpolate(images01, size=(224, 224), mode="bilinear", align_corners=False)
    x = (x - 0.5) / 0.5
    x = F.relu(_bn(sd, "bn1", F.conv2d(x, sd["conv1.weight"], stride=2, padding=3)))
    x = F.max_pool2d(x, 3, 2, 1)
    for stage, blocks in enumerate((3, 4, 6, 3), start=1):
        for i in range(blocks):
            x = _block(sd, f"layer{stage}.{i}", x, 2 if (i == 0 and stage > 1) else 1)
    return F.linear(x.mean((2, 3)), sd["fc.weight"], sd["fc.bias"])
