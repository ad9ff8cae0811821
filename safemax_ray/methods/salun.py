"""SalUn, random-label variant (Fan et al., ICLR 2024), as its public DDPM code does it.

Set-up: a saliency mask. The gradient of the guided forget loss, (1 + w) eps(x_t, c_f) - w eps(x_t, null)
against the noise, is accumulated in absolute value over the whole forget set; the `mask_ratio` share
of weights with the largest accumulated magnitude is kept, and only those weights move (gradients are
masked after backward).

Loss: the forget term pulls the prediction for (x_t, c_f) to the model's own, detached prediction for
the fixed pseudo label c' = (c_f + 1) mod K, so the forget class turns into class c'; the remain term is
the ordinary loss summed over pixels and averaged over the batch (the reference's scale, which is why
alpha is 1e-3 there: alpha = 0 unlearns every class, their issue #19).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from safemax_ray.core.diffusion import drop_labels
from safemax_ray.core.randomness import RankRandom, seeded_generator
from safemax_ray.errors import SafemaxError
from safemax_ray.methods.base import LossOutput, MethodOptions, SetupContext, UnlearnBatch, UnlearningMethod, option
from safemax_ray.methods.registry import register_method

SETUP_BATCH = 64  # forget images per saliency batch; batch b draws from a generator seeded by (seed, b)


@dataclass
class SalUnOptions(MethodOptions):
    alpha: float = option(1e-3, "weight of the remain loss (summed over pixels, as the reference)")
    mask_ratio: float = option(0.5, "share of weights that may move: those most salient for the forget class")
    mask_guidance: float = option(2.0, "guidance weight w of the output whose gradient makes the mask")
    null_drop: float = option(0.1, "null-label drop in the remain loss (classifier-free guidance)")

    def validate(self) -> None:
        if self.alpha < 0:
            raise SafemaxError(f"alpha must be >= 0, got {self.alpha}")
        if not 0 < self.mask_ratio <= 1:
            raise SafemaxError(f"mask_ratio must be in (0, 1], got {self.mask_ratio}")
        if self.mask_guidance < 0:
            raise SafemaxError(f"mask_guidance must be >= 0, got {self.mask_guidance}")
        if not 0 <= self.null_drop < 1:
            raise SafemaxError(f"null_drop must be in [0, 1), got {self.null_drop}")


def saliency_mask(scores: dict[str, torch.Tensor], ratio: float) -> dict[str, torch.Tensor]:
    """1 for the `ratio` share of weights with the largest score (over all tensors), else 0."""
    flat = torch.cat([s.flatten() for s in scores.values()])
    keep = max(1, round(ratio * flat.numel()))
    threshold = torch.topk(flat, keep, sorted=False).values.min()
    return {name: (s >= threshold).float() for name, s in scores.items()}


@register_method("salun")
class SalUn(UnlearningMethod):
    Options = SalUnOptions
    SEARCHABLE = ("alpha", "mask_ratio")
    SEARCH_SPACE = {"alpha": {"low": 1e-4, "high": 1e-1, "log": True}}
    DEFAULT_LR = 1e-4  # the reference's
    options: SalUnOptions

    @classmethod
    def step_passes(cls, options, batch_size: int, forget_images: int) -> tuple[int, int]:
        return 2 * batch_size, batch_size  # and the pseudo label's output, without a gradient

    @classmethod
    def setup_passes(cls, options, forget_images: int, num_classes: int, sample_steps: int, timesteps: int):
        return 2 * forget_images, 0  # the guided output's gradient over the whole forget set

    def setup(self, ctx: SetupContext) -> None:
        unet, opts = ctx.unet, self.options
        num_t = int(self.scheduler.config.num_train_timesteps)
        scores = {name: torch.zeros_like(p) for name, p in unet.named_parameters()}
        batches = ctx.forget_idx.split(SETUP_BATCH)
        for b in range(ctx.rank, len(batches), ctx.world):  # rank r takes batches r, r + N, ...
            g = seeded_generator(ctx.device, 3, ctx.seed, b)
            x0 = ctx.data.images[batches[b]]
            eps = torch.randn(x0.shape, generator=g, device=ctx.device)
            t = torch.randint(num_t, (len(x0),), generator=g, device=ctx.device)
            x_t = self.scheduler.add_noise(x0, eps, t)
            cond = ctx.data.labels[batches[b]]  # each forget image under its own class
            null = torch.full_like(cond, int(unet.config.num_class_embeds) - 1)
            eps_c, eps_u = unet(
                torch.cat([x_t, x_t]), torch.cat([t, t]), class_labels=torch.cat([cond, null])
            ).sample.chunk(2)
            guided = (1 + opts.mask_guidance) * eps_c - opts.mask_guidance * eps_u
            unet.zero_grad(set_to_none=True)
            (guided - eps).pow(2).mean().backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            for name, p in unet.named_parameters():
                scores[name] += p.grad.abs()
        unet.zero_grad(set_to_none=True)
        self.mask = saliency_mask({k: ctx.all_reduce(v) for k, v in scores.items()}, opts.mask_ratio)

    def loss(self, unet, batch: UnlearnBatch, rng: RankRandom) -> LossOutput:
        opts = self.options
        num_t = int(self.scheduler.config.num_train_timesteps)
        n_f, n_r = len(batch.x_forget), len(batch.x_remain)
        eps_f, eps_r = rng.normal(batch.x_forget.shape), rng.normal(batch.x_remain.shape)
        t_f, t_r = rng.integers(num_t, n_f), rng.integers(num_t, n_r)
        y_r = drop_labels(batch.y_remain, batch.null_label, opts.null_drop, rng.uniform(n_r))
        pseudo = (batch.y_forget + 1) % batch.null_label
        x_f = self.scheduler.add_noise(batch.x_forget, eps_f, t_f)
        with torch.no_grad():
            target_f = unet(x_f, t_f, class_labels=pseudo).sample.float()
        x = torch.cat([x_f, self.scheduler.add_noise(batch.x_remain, eps_r, t_r)])
        pred = unet(x, torch.cat([t_f, t_r]), class_labels=torch.cat([batch.y_forget, y_r])).sample.float()
        loss_f = (pred[:n_f] - target_f).pow(2).mean()
        loss_r = (pred[n_f:] - eps_r).pow(2).flatten(1).sum(1).mean()
        loss = loss_f + opts.alpha * loss_r
        return LossOutput(loss, {"loss": loss.detach(), "loss_forget": loss_f.detach(), "loss_remain": loss_r.detach()})

    def after_backward(self, unet: torch.nn.Module) -> None:
        module = unet.module if hasattr(unet, "module") else unet
        for name, p in module.named_parameters():
            if p.grad is not None:
                p.grad.mul_(self.mask[name])

    def state_dict(self) -> dict:
        return {"mask": self.mask}

    def load_state_dict(self, state: dict) -> None:
        self.mask = state["mask"]
