"""Relearning attacks and the trajectory probe: does the forgotten class come back?

Relearning (after DiMRA and concept-resurgence work): fine-tune the model with the plain DDPM loss on
k real forget-class images (or, k = 0, on retained images only) and watch the forget class return:
forget-class accuracy, UA, H and noise rate of guided forget-class samples after each of the given step
counts, and the first of them at which the forget-class accuracy passes 50%. The base model under the
same fine-tuning is the ceiling.

Trajectory probe: real forget-class images noised to t0 and denoised with the forget label. SAFEMax
weights small t most (psi), so a probe from t0 = 3T/4 asks the high-noise steps it weighted least.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from safemax_ray.core.classifier import Classifier
from safemax_ray.core.data import ImageData
from safemax_ray.core.diffusion import drop_labels, eps_mse
from safemax_ray.core.metrics import mean_entropy, unlearning_accuracy
from safemax_ray.core.models import DiffusionModel
from safemax_ray.core.noise import noise_rate
from safemax_ray.core.randomness import RankRandom, seeded_generator, step_generator
from safemax_ray.core.sampling import denoise_from, sample
from safemax_ray.engine.judging import classify, decode_all
from safemax_ray.schema import Settings

RECOVERED_AT = 50.0  # forget-class accuracy (%) at which the class counts as back


@dataclass
class AttackSettings(Settings):
    lr: float = 1e-4
    batch_size: int = 16
    null_drop: float = 0.1
    n_samples: int = 100  # forget-class samples judged at each evaluation point
    guidance: float = 2.0
    sample_steps: int | None = None  # None: the model's full schedule
    seed: int = 0


@dataclass
class Judge:
    """What scores forget-class samples: the classifier and the calibrated noise threshold."""

    classifier: Classifier
    noise_threshold: float
    forget_class: int
    decode: torch.nn.Module | None = None  # samples -> images, where the model draws latents

    def __call__(self, images: torch.Tensor) -> dict[str, float]:
        if self.decode is not None:
            images = decode_all(self.decode, images)
        logits = classify(self.classifier, images)
        ua = unlearning_accuracy(logits, self.forget_class)
        return {
            "forget_acc": 100.0 - ua,
            "ua": ua,
            "entropy": mean_entropy(logits),
            "noise": noise_rate(images, self.noise_threshold),
        }


def _forget_samples(model: DiffusionModel, judge: Judge, s: AttackSettings) -> dict[str, float]:
    model.unet.eval()
    labels = torch.full((s.n_samples,), judge.forget_class)
    g = seeded_generator(next(model.unet.parameters()).device, 5, s.seed)
    images = sample(model.unet, model.scheduler, labels, model.null_label, g, s.guidance, s.sample_steps)
    model.unet.train()
    return judge(images)


def attack_pool(data: ImageData, forget_class: int, shots: int, seed: int) -> torch.Tensor:
    """Indices the attacker trains on: k fixed real forget-class images, or (k = 0) the retained data."""
    forget = (data.labels == forget_class).nonzero().flatten()
    if shots == 0:
        return (data.labels != forget_class).nonzero().flatten()
    g = torch.Generator().manual_seed(seed)
    return forget[torch.randperm(len(forget), generator=g)[:shots].to(forget.device)]


def relearn(
    model: DiffusionModel, data: ImageData, judge: Judge, shots: int, checkpoints: list[int], s: AttackSettings
) -> list[dict[str, float]]:
    """Fine-tune `model` in place with the plain loss on the attack pool; a row per evaluation point."""
    pool = attack_pool(data, judge.forget_class, shots, s.seed)
    optimizer = torch.optim.Adam(model.unet.parameters(), lr=s.lr)
    rows, done = [], 0
    model.unet.train()
    for until in sorted(checkpoints):
        for step in range(done, until):
            _relearn_step(model, data, pool, optimizer, step, s)
        done = until
        rows.append({"step": until, **_forget_samples(model, judge, s)})
    return rows


def _relearn_step(model: DiffusionModel, data: ImageData, pool: torch.Tensor, optimizer, step: int, s) -> None:
    rng = RankRandom(step_generator(s.seed, step, data.images.device))
    idx = rng.choice(pool, s.batch_size)
    x0, y = data.images[idx], data.labels[idx]
    eps, t = rng.normal(x0.shape), rng.integers(model.num_train_timesteps, len(x0))
    y = drop_labels(y, model.null_label, s.null_drop, rng.uniform(len(y)))
    loss = eps_mse(model.unet(model.scheduler.add_noise(x0, eps, t), t, class_labels=y).sample, eps)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.unet.parameters(), 1.0)
    optimizer.step()


def steps_to_recover(rows: list[dict[str, float]]) -> int | None:
    """The first evaluated step count at which forget-class accuracy passes 50%, or None."""
    return next((int(r["step"]) for r in rows if r["forget_acc"] > RECOVERED_AT), None)


def trajectory_probe(
    model: DiffusionModel, data: ImageData, judge: Judge, fractions: list[float], s: AttackSettings
) -> list[dict[str, float]]:
    """Real forget images noised to t0 = fraction * T, denoised with the forget label; a row per t0."""
    model.unet.eval()
    device = next(model.unet.parameters()).device
    forget = (data.labels == judge.forget_class).nonzero().flatten()
    rows = []
    for fraction in fractions:
        g = seeded_generator(device, 6, s.seed, round(1000 * fraction))
        x0 = data.images[forget[torch.randint(len(forget), (s.n_samples,), generator=g, device=device)]]
        t0 = min(model.num_train_timesteps - 1, round(fraction * model.num_train_timesteps))
        t = torch.full((len(x0),), t0, device=device)
        x_t = model.scheduler.add_noise(x0, torch.randn(x0.shape, generator=g, device=device), t)
        labels = torch.full((len(x0),), judge.forget_class)
        images = denoise_from(model.unet, model.scheduler, x_t, t0, labels, model.null_label, g, s.guidance)
        rows.append({"t0": t0, **judge(images)})
    return rows
