"""Training the base class-conditional DDPM and the evaluation classifier.

The base model learns eps-prediction with the null label dropped in 10% of the time, so that
classifier-free guidance works at sampling time. `safemax-ray pretrain --dataset digits` with the
defaults here made the weights shipped in `safemax_ray/assets/digits/`.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import Progress, TextColumn

from safemax_ray import storage
from safemax_ray.core.classifier import Classifier, ClassifierConfig
from safemax_ray.core.data import ImageData
from safemax_ray.core.diffusion import drop_labels
from safemax_ray.core.models import PRESET_FILE, DiffusionModel, build_preset, build_scheduler
from safemax_ray.errors import SafemaxError
from safemax_ray.schema import Settings


@dataclass
class PretrainConfig(Settings):
    steps: int = 3000
    batch_size: int = 128
    lr: float = 1e-3
    ema_decay: float = 0.999
    null_drop: float = 0.1
    arch: str = "digits-tiny"  # a preset of safemax_ray.core.models.PRESETS
    num_train_timesteps: int | None = None  # None: the preset's
    block_out_channels: tuple[int, ...] | None = None  # None: the preset's widths
    classifier_steps: int = 1500
    classifier_lr: float = 2e-3
    seed: int = 0

    def validate(self) -> None:
        if self.steps < 1 or self.classifier_steps < 1:
            raise SafemaxError("pretraining needs --steps >= 1 and --classifier-steps >= 1")
        if self.lr <= 0 or self.classifier_lr <= 0:
            raise SafemaxError("learning rates must be > 0")
        if not 0 <= self.ema_decay < 1:
            raise SafemaxError(f"ema_decay must be in [0, 1), got {self.ema_decay}")


def pretrain_diffusion(
    data: ImageData,
    config: PretrainConfig,
    device: torch.device,
    on_step: Callable[[int, float], None] | None = None,
) -> DiffusionModel:
    """Train from scratch; returns the EMA weights."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = build_preset(config.arch, data.num_classes, data.channels, data.image_size, config.block_out_channels)
    unet = model.unet.to(device)
    scheduler = build_scheduler(config.num_train_timesteps) if config.num_train_timesteps else model.scheduler
    num_t = int(scheduler.config.num_train_timesteps)
    ema = copy.deepcopy(unet).requires_grad_(False)
    optimizer = torch.optim.Adam(unet.parameters(), lr=config.lr)
    null_label = data.num_classes
    for step in range(1, config.steps + 1):
        idx = torch.randint(len(data.labels), (config.batch_size,), generator=generator)
        x0, labels = data.images[idx], data.labels[idx]
        labels = drop_labels(labels, null_label, config.null_drop, torch.rand(labels.shape, generator=generator))
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(num_t, (len(x0),), generator=generator)
        x_t = scheduler.add_noise(x0, noise, t)
        pred = unet(x_t.to(device), t.to(device), class_labels=labels.to(device)).sample
        loss = F.mse_loss(pred, noise.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            for e, p in zip(ema.parameters(), unet.parameters(), strict=True):
                e.lerp_(p, 1 - config.ema_decay)
        if on_step is not None:
            on_step(step, loss.item())
    return DiffusionModel(ema.cpu().eval(), scheduler)


def train_classifier(
    data: ImageData,
    config: PretrainConfig,
    device: torch.device,
    holdout: float = 0.15,
) -> tuple[Classifier, float]:
    """Train on (1 - holdout) of the data; returns the model and its held-out accuracy."""
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    order = torch.randperm(len(data.labels), generator=generator)
    n_test = int(len(order) * holdout)
    test, train = order[:n_test], order[n_test:]
    model = Classifier(ClassifierConfig(data.channels, data.num_classes, data.image_size)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.classifier_lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.classifier_steps)
    for _ in range(config.classifier_steps):
        idx = train[torch.randint(len(train), (config.batch_size,), generator=generator)]
        x = data.images[idx]
        # Small shifts and noise make the classifier robust to the imperfections of generated samples.
        x = torch.roll(x, shifts=tuple(torch.randint(-1, 2, (2,), generator=generator).tolist()), dims=(2, 3))
        x = (x + 0.1 * torch.randn(x.shape, generator=generator)).clamp(-1, 1)
        loss = F.cross_entropy(model(x.to(device)), data.labels[idx].to(device), label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        logits = model(data.images[test].to(device)).cpu()
    accuracy = (logits.argmax(1) == data.labels[test]).float().mean().item() if n_test else float("nan")
    if n_test:
        model.config.temperature = fit_temperature(logits, data.labels[test])
    return model.cpu(), accuracy


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The softmax temperature that minimises held-out NLL (Guo et al., 2017); 1.0 (no calibration)
    when the fit runs off, as it can for a barely trained model."""
    log_t = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], max_iter=100)

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    return temperature if math.isfinite(temperature) and 0.05 <= temperature <= 20 else 1.0


def run_pretrain(
    config: PretrainConfig,
    dataset: str,
    data_root: str | None,
    image_size: int | None,
    output: str | Path,
    overwrite: bool = False,
    device: str | None = None,
    console: Console | None = None,
) -> Path:
    """Train both models and write `<output>/model` (diffusers) and `<output>/classifier`, plus a
    `pretrain.json` that records the settings and the classifier's held-out accuracy."""
    from safemax_ray.core.classifier import save_classifier
    from safemax_ray.core.data import load_dataset
    from safemax_ray.core.models import save_model

    config.validate()
    output = Path(output)
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise SafemaxError(f"{output} already exists and is not empty; pass --overwrite or choose another --output")
    console = console or Console(quiet=True)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data = load_dataset(dataset, data_root, image_size)
    console.log(f"{dataset}: {len(data.labels)} images, {data.num_classes} classes, {data.image_size}px, on {dev}")
    began = time.perf_counter()
    classifier, accuracy = train_classifier(data, config, dev)
    console.log(f"classifier: held-out accuracy {100 * accuracy:.2f}% in {time.perf_counter() - began:.0f}s")
    with Progress(*Progress.get_default_columns(), TextColumn("{task.fields[loss]}"), console=console) as bar:
        task = bar.add_task("diffusion model", total=config.steps, loss="")
        model = pretrain_diffusion(
            data, config, dev, on_step=lambda i, loss: bar.update(task, completed=i, loss=f"loss {loss:.4f}")
        )

    def fill(folder: Path) -> None:
        save_model(model, folder / "model")
        (folder / "model" / PRESET_FILE).write_text(json.dumps({"arch": config.arch}))
        save_classifier(classifier, folder / "classifier")
        record = {
            "dataset": dataset,
            "settings": asdict(config),
            "classifier_holdout_accuracy": accuracy,
            "seconds": time.perf_counter() - began,
            "device": str(dev),
        }
        (folder / "pretrain.json").write_text(json.dumps(record, indent=2))

    storage.write_folder_atomic(output, fill, overwrite=True)
    console.log(f"wrote {output}/model and {output}/classifier in {time.perf_counter() - began:.0f}s")
    return output
