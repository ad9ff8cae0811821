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

from dataclasses import dataclass

import torch

from safemax_ray.core.diffusion import drop_labels, eps_mse
from safemax_ray.core.randomness import RankRandom
from safemax_ray.errors import SafemaxError
from safemax_ray.methods.base import LossOutput, MethodOptions, UnlearnBatch, UnlearningMethod, option
from safemax_ray.methods.registry import register_method

TARGETS = ("independent", "trajectory")


@dataclass
class SafeMaxOptions(MethodOptions):
    lam: float = option(1.0, "lambda of psi(t) = exp(-lambda t / T); 0 turns the weighting off")
    alpha: float = option(1.0, "weight of the remain loss")
    target: str = option("independent", "eps_T reading: independent or trajectory")
    null_drop: float = option(0.1, "null-label drop in the remain loss (classifier-free guidance)")

    def validate(self) -> None:
        if self.lam < 0:
            raise SafemaxError(f"lam (lambda) must be >= 0, got {self.lam}; 0 turns the psi weighting off")
        if self.alpha < 0:
            raise SafemaxError(f"alpha must be >= 0, got {self.alpha}")
        if self.target not in TARGETS:
            raise SafemaxError(f"target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if not 0 <= self.null_drop < 1:
            raise SafemaxError(f"null_drop must be in [0, 1), got {self.null_drop}")


def psi(t: torch.Tensor, lam: float, num_train_timesteps: int) -> torch.Tensor:
    """exp(-lambda t / T): weights small t, where class detail lives, more; lambda = 0 weights all equally."""
    return torch.exp(-lam * t.float() / num_train_timesteps)


def trajectory_target(
    eps: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor, eta: torch.Tensor
) -> torch.Tensor:
    """Cumulative noise of x_T reached from x_t on the same forward trajectory, continued with fresh noise eta.

    x_T = sqrt(abar_T) x_0 + sqrt(1 - abar_T) eps_T, so
    eps_T = (sqrt(abar_T / abar_t) sqrt(1 - abar_t) eps + sqrt(1 - abar_T / abar_t) eta) / sqrt(1 - abar_T).
    """
    alphas_cumprod = alphas_cumprod.to(eps.device)
    abar_t = alphas_cumprod[t].view(-1, *([1] * (eps.dim() - 1))).to(eps.dtype)
    abar_T = alphas_cumprod[-1].to(eps.dtype)
    ratio = abar_T / abar_t
    return (ratio.sqrt() * (1 - abar_t).sqrt() * eps + (1 - ratio).clamp_min(0).sqrt() * eta) / (1 - abar_T).sqrt()


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
    loss_r = eps_mse(pred_remain, eps_remain) if pred_remain.numel() else pred_forget.new_zeros((), dtype=torch.float32)
    return loss_f + alpha * loss_r, loss_f, loss_r


@register_method("safemax")
class SafeMax(UnlearningMethod):
    """SAFEMax with one forward pass over the concatenated forget and remain batches."""

    Options = SafeMaxOptions
    SEARCHABLE = ("lam", "alpha", "target")
    SEARCH_SPACE = {"lam": {"low": 0.0, "high": 4.0}}
    ROW_COLUMNS = ("lam", "alpha", "target")
    DEFAULT_LR = 1e-3  # 200 iterations on digits (the paper: 1e-4 for 1000 iterations on CIFAR-10)
    options: SafeMaxOptions

    def loss(self, unet, batch: UnlearnBatch, rng: RankRandom) -> LossOutput:
        opts, scheduler = self.options, self.scheduler
        num_t = int(scheduler.config.num_train_timesteps)
        n_f, n_r = len(batch.x_forget), len(batch.x_remain)
        # Each stream draws its own global tensors, so a rank's samples do not depend on the worker count.
        eps_f, eps_r = rng.normal(batch.x_forget.shape), rng.normal(batch.x_remain.shape)
        t_f, t_r = rng.integers(num_t, n_f), rng.integers(num_t, n_r)
        y_r = drop_labels(batch.y_remain, batch.null_label, opts.null_drop, rng.uniform(n_r))
        if opts.target == "independent":
            target_f = rng.normal(batch.x_forget.shape)
        else:
            target_f = trajectory_target(eps_f, t_f, scheduler.alphas_cumprod, rng.normal(batch.x_forget.shape))
        x0, eps, t = torch.cat([batch.x_forget, batch.x_remain]), torch.cat([eps_f, eps_r]), torch.cat([t_f, t_r])
        x_t = scheduler.add_noise(x0, eps, t)
        pred = unet(x_t, t, class_labels=torch.cat([batch.y_forget, y_r])).sample
        loss, loss_f, loss_r = safemax_loss(pred[:n_f], target_f, t_f, pred[n_f:], eps_r, opts.lam, num_t, opts.alpha)
        return LossOutput(loss, {"loss": loss.detach(), "loss_forget": loss_f.detach(), "loss_remain": loss_r.detach()})
