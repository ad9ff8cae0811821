"""SFR-on (Huang et al., NeurIPS 2024), as its authors' DDPM code runs it
(`K1nght/Unified-Unlearning-w-Remain-Geometry`, `DDPM/runners/diffusion.py`: `generate_fisher` and
`sfron_forget`; `DDPM/generate_fisher_mask.py`; README's command: `--forget_alpha 10.0
--decay_forget_alpha --remain_alpha 1.0 --method ron --unlearn_loss adaga`, `configs/cifar10_sfron.yml`).

Set-up, per forget class: in eval mode, for each mini-batch of the forget set and then of the remain
set, the loss of the guided (w = 2) prediction (squared error summed over pixels, batch mean),
backward, the gradient clipped to norm 1 in place, grad^2 / batches accumulated: F_f and F_r. The mask
keeps the weights with (F_f + 1e-15) / (F_r + 1e-15) >= threshold (1.0). It is cached by content.

Each iteration is two Adam steps on one optimiser. (1) Forget: per-sample losses l_i (summed over
pixels) with weights w_i proportional to stop_grad(l_i)^-lambd (lambd 0.5), normalised over the
global batch; L = -alpha_s sum_i w_i l_i with alpha_s = 10 (1 + cos(pi s / S)) / 2 over the run's S
iterations; backward, gradient times the mask, clip, step. (2) Remain, on the updated weights: the
ordinary loss (summed over pixels, batch mean); backward, clip, step, no mask. Labels drop to null
with probability 0.1 in both; timesteps in antithetic pairs. Evaluation samples the raw weights (their
EMA rate, 0.0001, keeps none of the history). Their budget: 150 iterations.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from safemax_ray import cache, storage
from safemax_ray.core.data import ImageData
from safemax_ray.core.diffusion import drop_labels
from safemax_ray.core.randomness import RankRandom, seeded_generator
from safemax_ray.errors import SafemaxError
from safemax_ray.methods.base import (
    LossOutput,
    MethodOptions,
    SetupContext,
    UnlearnBatch,
    UnlearningMethod,
    option,
    sum_over_ranks,
)
from safemax_ray.methods.registry import register_method


@dataclass
class SFRonOptions(MethodOptions):
    forget_alpha: float = option(10.0, "alpha of the forget step (cosine-decayed to 0 over the run when decay)")
    decay: bool = option(True, "decay alpha with a cosine over the run's iterations, as their --decay_forget_alpha")
    remain_alpha: float = option(1.0, "weight of the remain step's loss")
    lambd: float = option(0.5, "adaptive weights w_i proportional to stop_grad(l_i)^-lambd")
    threshold: float = option(1.0, "mask: keep weights with F_forget / F_remain >= threshold")
    fisher_guidance: float = option(2.0, "guidance w of the prediction the Fisher diagonals are taken of")
    null_drop: float = option(0.1, "null-label drop in both steps")

    def validate(self) -> None:
        if self.forget_alpha < 0 or self.remain_alpha < 0 or self.lambd < 0 or self.threshold < 0:
            raise SafemaxError("forget_alpha, remain_alpha, lambd and threshold must be >= 0")
        if not 0 <= self.null_drop < 1:
            raise SafemaxError(f"null_drop must be in [0, 1), got {self.null_drop}")


def summed_error(pred: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Per-sample squared error summed over pixels (their loss reduction), in float32."""
    return (eps.float() - pred.float()).pow(2).flatten(1).sum(1)


@register_method("sfron")
class SFRon(UnlearningMethod):
    Options = SFRonOptions
    SEARCHABLE = ("forget_alpha", "lambd", "threshold")
    SEARCH_SPACE = {"forget_alpha": {"low": 1.0, "high": 30.0, "log": True}}
    DEFAULT_LR = 1e-4  # theirs
    ITERATIONS_VS_SAFEMAX = 0.15  # 150 iterations against SAFEMax's 1000
    options: SFRonOptions

    def __init__(self, options: SFRonOptions, scheduler):
        super().__init__(options, scheduler)
        self.mask: list[torch.Tensor] = []
        self.done = 0
        self.iterations = 1

    @classmethod
    def setup_passes(cls, options, forget_images: int, num_classes: int, sample_steps: int, timesteps: int):
        """The guided loss's gradient (conditional and null passes) over every training image, once."""
        return 2 * forget_images * num_classes, 0

    def attach(self, data: ImageData, forget_idx: torch.Tensor, remain_idx: torch.Tensor, iterations: int) -> None:
        self.iterations = iterations

    def setup(self, ctx: SetupContext) -> None:
        agree = lambda flag: ctx.all_reduce(flag.to(ctx.device))  # noqa: E731  (NCCL wants device tensors)
        saved, computed = cache.compute_once(self._cache_path(ctx), lambda: self._compute(ctx), ctx.rank, agree)
        self.setup_cached = not computed
        names = [name for name, _ in ctx.unet.named_parameters()]
        self.mask = [saved[f"mask.{name}"].to(ctx.device) for name in names]

    def _cache_path(self, ctx: SetupContext) -> str | None:
        if not ctx.cache_dir:
            return None
        content = hashlib.sha256()
        for part in ctx.data.images.split(4096):  # the data's content, without a copy of all of it
            content.update(part.cpu().numpy().tobytes())
        data = content.hexdigest()[:16]
        key = json.dumps(
            [ctx.model_id, data, ctx.forget_classes, asdict(self.options), ctx.seed, ctx.device.type], sort_keys=True
        )
        return storage.join(ctx.cache_dir, f"sfron-mask-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors")

    def _compute(self, ctx: SetupContext) -> dict[str, torch.Tensor]:
        f_forget = self.fisher(ctx, ctx.forget_idx)
        f_remain = self.fisher(ctx, ctx.remain_idx)
        return {
            f"mask.{name}": ((f_forget[name] + 1e-15) / (f_remain[name] + 1e-15) >= self.options.threshold)
            .contiguous()
            .cpu()
            for name in f_forget
        }

    def fisher(self, ctx: SetupContext, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """sum over mini-batches of the clipped gradient squared of the guided loss, / batches. Rank r
        takes batches r, r + world, ...; every batch's gradient is one rank's, so the sum is exact."""
        unet, w = ctx.unet, self.options.fisher_guidance
        unet.eval()
        num_t = int(self.scheduler.config.num_train_timesteps)
        batches = idx.split(ctx.batch_size)
        total = {name: torch.zeros_like(p) for name, p in unet.named_parameters()}
        for b in range(ctx.rank, len(batches), ctx.world):
            rng = RankRandom(seeded_generator(ctx.device, 5, ctx.seed, b))
            x0, y = ctx.data.images[batches[b]], ctx.data.labels[batches[b]]
            t, eps = rng.antithetic(num_t, len(x0)), rng.normal(x0.shape)
            x_t = self.scheduler.add_noise(x0, eps, t)
            both = torch.cat([y, torch.full_like(y, ctx.null_label)])
            cond, null = unet(torch.cat([x_t, x_t]), torch.cat([t, t]), class_labels=both).sample.chunk(2)
            unet.zero_grad(set_to_none=True)
            summed_error((1 + w) * cond - w * null, eps).mean().backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            for name, p in unet.named_parameters():
                total[name] += p.grad.detach().pow(2) / len(batches)
        unet.zero_grad(set_to_none=True)
        return {name: ctx.all_reduce(v) for name, v in total.items()}

    def _alpha(self) -> float:
        alpha = self.options.forget_alpha
        return alpha * (1 + math.cos(math.pi * self.done / self.iterations)) / 2 if self.options.decay else alpha

    def _noised(self, x0, y, null_label: int, rng: RankRandom):
        t, eps = rng.antithetic(int(self.scheduler.config.num_train_timesteps), len(x0)), rng.normal(x0.shape)
        labels = drop_labels(y, null_label, self.options.null_drop, rng.uniform(len(y)))
        return self.scheduler.add_noise(x0, eps, t), t, labels, eps

    def loss(self, unet, batch: UnlearnBatch, rng: RankRandom) -> LossOutput:
        """The forget step's loss: -alpha_s sum_i w_i l_i, weights normalised over the global batch."""
        x_t, t, labels, eps = self._noised(batch.x_forget, batch.y_forget, batch.null_label, rng)
        per_sample = summed_error(unet(x_t, t, class_labels=labels).sample, eps)
        coef = 1 / (per_sample.detach().pow(self.options.lambd) + 1e-8)
        total = sum_over_ranks(coef.sum())
        # DDP averages the ranks' gradients: times the world size, that is the global batch's sum.
        weighted = (coef / total * per_sample).sum() * rng.world
        loss = -self._alpha() * weighted
        return LossOutput(loss, {"loss_forget": weighted.detach() / rng.world})

    def step(self, unet, optimizer, batch: UnlearnBatch, rng: RankRandom, grad_clip: float) -> dict[str, torch.Tensor]:
        forget = super().step(unet, optimizer, batch, rng, grad_clip)  # loss, backward, mask, clip, step
        device = batch.x_remain.device
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            x_t, t, labels, eps = self._noised(batch.x_remain, batch.y_remain, batch.null_label, rng)
            remain = self.options.remain_alpha * summed_error(unet(x_t, t, class_labels=labels).sample, eps).mean()
        optimizer.zero_grad(set_to_none=True)
        remain.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(unet.parameters(), grad_clip)
        optimizer.step()
        self.done += 1
        loss = remain.detach() - forget["loss_forget"] * self._alpha()
        return {**forget, "loss": loss, "loss_remain": remain.detach(), "grad_norm": grad_norm.detach()}

    def after_backward(self, unet: torch.nn.Module) -> None:
        """The forget step's gradient, masked to the weights the Fisher ratio selected."""
        for p, keep in zip(unet.parameters(), self.mask, strict=True):
            if p.grad is not None:
                p.grad.mul_(keep)

    def state_dict(self) -> dict[str, Any]:
        return {"mask": self.mask, "done": self.done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mask, self.done = list(state["mask"]), int(state["done"])
