"""SAFEMax (Spartalis et al., 2025): teach the model to predict pure noise for the forget class.

    L_f = E_{t, eps}[ psi(t) * || eps_T - eps_theta(x_t, c_f, t) ||^2 ],   psi(t) = exp(-lambda * t / T)
    L   = L_f + alpha * L_r,   L_r the ordinary DDPM loss on the other classes.

x_t is a real forget-class image noised as usual. eps_T, the noise of the maximum-entropy state x_T, is
never the eps that made x_t (that would be the ordinary loss and reinforce the class): by default an
independent N(0, I) draw; `target: trajectory` uses the cumulative noise of x_T on the same forward
trajectory instead. Under either the best prediction is ~0, so sampling for c_f stops denoising.
The forget term is always conditioned on c_f: dropping its label would train the null embedding, which
guidance uses for every class.
"""

from __future__ import annotations

import math

import torch

from safemax_ray.methods.base import LossOutput, UnlearnBatch, UnlearningMethod
from safemax_ray.methods.registry import register_method
from safemax_ray.pretrain import drop_labels


def psi(t: torch.Tensor, lam: float, num_train_timesteps: int) -> torch.Tensor:
    """exp(-lambda t / T): weights small t, where class detail lives, more; lambda = 0 weights all equally."""
    return torch.exp(-lam * t.float() / num_train_timesteps)


def independent_target(shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=generator)


def trajectory_target(
    eps: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Cumulative noise of x_T reached from x_t on the same forward trajectory.

    x_T = sqrt(abar_T) x_0 + sqrt(1 - abar_T) eps_T, continuing x_t with fresh noise eta:
    eps_T = (sqrt(abar_T / abar_t) sqrt(1 - abar_t) eps + sqrt(1 - abar_T / abar_t) eta) / sqrt(1 - abar_T).
    """
    abar_t = alphas_cumprod[t].view(-1, *([1] * (eps.dim() - 1))).to(eps.dtype)
    abar_T = alphas_cumprod[-1].to(eps.dtype)
    ratio = abar_T / abar_t
    eta = torch.randn(eps.shape, generator=generator).to(eps.dtype)
    return (ratio.sqrt() * (1 - abar_t).sqrt() * eps + (1 - ratio).clamp_min(0).sqrt() * eta) / math.sqrt(
        1 - float(abar_T)
    )


def safemax_loss(
    pred_forget: torch.Tensor,
    target_forget: torch.Tensor,
    t_forget: torch.Tensor,
    pred_remain: torch.Tensor,
    eps_remain: torch.Tensor,
    lam: float,
    num_train_timesteps: int,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L, L_f, L_r), both terms per-element means so that alpha = 1 balances them."""
    per_sample = (target_forget.float() - pred_forget.float()).pow(2).flatten(1).mean(1)
    weights = psi(t_forget, lam, num_train_timesteps).to(per_sample.device)
    loss_f = (weights * per_sample).mean()
    if pred_remain.numel():
        loss_r = (eps_remain.float() - pred_remain.float()).pow(2).mean()
    else:
        loss_r = pred_forget.new_zeros(())
    return loss_f + alpha * loss_r, loss_f, loss_r


@register_method("safemax")
class SafeMax(UnlearningMethod):
    """SAFEMax with one forward pass over the concatenated forget and remain batches."""

    def loss(self, unet, batch: UnlearnBatch, generator: torch.Generator) -> LossOutput:
        config, scheduler = self.config, self.scheduler
        num_t = int(scheduler.config.num_train_timesteps)
        device = next(unet.parameters()).device
        n_f = len(batch.x_forget)
        x0 = torch.cat([batch.x_forget, batch.x_remain])
        eps = torch.randn(x0.shape, generator=generator)
        t = torch.randint(num_t, (len(x0),), generator=generator)
        x_t = scheduler.add_noise(x0, eps, t)
        labels = torch.cat(
            [
                torch.full((n_f,), batch.forget_class, dtype=torch.int64),
                drop_labels(batch.y_remain, batch.null_label, config.null_drop, generator),
            ]
        )
        if config.target == "independent":
            target_f = independent_target(batch.x_forget.shape, generator)
        else:
            target_f = trajectory_target(eps[:n_f], t[:n_f], scheduler.alphas_cumprod, generator)
        pred = unet(x_t.to(device), t.to(device), class_labels=labels.to(device)).sample
        loss, loss_f, loss_r = safemax_loss(
            pred[:n_f], target_f.to(device), t[:n_f], pred[n_f:], eps[n_f:].to(device), config.lam, num_t, config.alpha
        )
        return LossOutput(loss, {"loss": loss.item(), "loss_forget": loss_f.item(), "loss_remain": loss_r.item()})
