"""Selective Amnesia (Heng and Soh, NeurIPS 2023), as its public DDPM code does it.

Set-up (the expensive part): samples of every class from the base model, then the diagonal Fisher
information from them: for each sample, the gradient of the diffusion loss summed over timesteps,
squared, averaged over samples. Both are cached under the run's cache folder by the base model's content
and the settings, and computed sharded over the ranks (each rank a share of the samples, then summed).

Loss: the forget class is remapped to a surrogate, uniform-noise images U[-1, 1] labelled c_f and
trained with the ordinary loss (no label drop); generative replay keeps the other classes (the base
model's own samples, ordinary loss); an EWC penalty lambda/2 sum F (theta - theta*)^2 holds the weights
that matter near the base model theta*. The reference runs 20 times SAFEMax's iterations (`compare`
does so).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import torch

from safemax_ray import cache, storage
from safemax_ray.core.diffusion import eps_mse
from safemax_ray.core.randomness import RankRandom, seeded_generator
from safemax_ray.errors import SafemaxError
from safemax_ray.methods.base import LossOutput, MethodOptions, SetupContext, UnlearnBatch, UnlearningMethod, option
from safemax_ray.methods.registry import register_method


@dataclass
class SelectiveAmnesiaOptions(MethodOptions):
    ewc_lambda: float = option(10.0, "weight lambda of the EWC penalty lambda/2 sum F (theta - theta*)^2")
    gamma: float = option(1.0, "weight of the generative replay loss")
    fisher_samples_per_class: int = option(500, "base-model samples per class for the Fisher and replay")
    fisher_timesteps: int = option(0, "timesteps summed per sample in the Fisher (0: all of them)")

    def validate(self) -> None:
        if self.ewc_lambda < 0 or self.gamma < 0:
            raise SafemaxError(f"ewc_lambda and gamma must be >= 0, got {self.ewc_lambda} and {self.gamma}")
        if self.fisher_samples_per_class < 1:
            raise SafemaxError(f"fisher_samples_per_class must be >= 1, got {self.fisher_samples_per_class}")
        if self.fisher_timesteps < 0:
            raise SafemaxError(f"fisher_timesteps must be >= 0 (0: all), got {self.fisher_timesteps}")


def fisher_diagonal(
    unet: torch.nn.Module,
    scheduler,
    images: torch.Tensor,
    labels: torch.Tensor,
    ids: torch.Tensor,
    timesteps: torch.Tensor,
    seed: int,
) -> dict[str, torch.Tensor]:
    """Sum over the given samples of (d/dtheta sum_t ||eps - eps_theta(x_t, c, t)||^2 / pixels)^2.

    Sample `ids[i]` noises with a generator seeded by (seed, ids[i]), so a share of the samples gives its
    share of the sum whichever rank computes it. Divide by the total sample count for the mean."""
    device = images.device
    total = {name: torch.zeros_like(p) for name, p in unet.named_parameters()}
    for i, x0, y in zip(ids.tolist(), images, labels, strict=True):
        g = seeded_generator(device, 4, seed, i)
        x0s = x0.expand(len(timesteps), *x0.shape)
        eps = torch.randn(x0s.shape, generator=g, device=device)
        pred = unet(scheduler.add_noise(x0s, eps, timesteps), timesteps, class_labels=y.expand(len(timesteps))).sample
        unet.zero_grad(set_to_none=True)
        (pred.float() - eps).pow(2).flatten(1).mean(1).sum().backward()
        for name, p in unet.named_parameters():
            total[name] += p.grad.detach().pow(2)
    unet.zero_grad(set_to_none=True)
    return total


@register_method("sa")
class SelectiveAmnesia(UnlearningMethod):
    Options = SelectiveAmnesiaOptions
    SEARCHABLE = ("ewc_lambda", "gamma")
    SEARCH_SPACE = {"ewc_lambda": {"low": 1.0, "high": 100.0, "log": True}}
    DEFAULT_LR = 1e-4  # the reference's
    ITERATIONS_VS_SAFEMAX = 20  # the paper: 20000 iterations against SAFEMax's 1000
    SETUP_DEPENDS_ON_CLASS = False  # the Fisher and the replay samples cover every class
    options: SelectiveAmnesiaOptions

    @classmethod
    def setup_passes(cls, options, forget_images: int, num_classes: int, sample_steps: int, timesteps: int):
        """Sampling the replay set (guided: 2 passes a step), then per-sample gradients over the timesteps."""
        samples = options.fisher_samples_per_class * num_classes
        return samples * (options.fisher_timesteps or timesteps), samples * sample_steps * 2

    def setup(self, ctx: SetupContext) -> None:
        # The Fisher does not depend on the class: one run of a batch computes it, the others read it.
        agree = lambda flag: ctx.all_reduce(flag.to(ctx.device))  # noqa: E731  (NCCL wants device tensors)
        saved, computed = cache.compute_once(self._cache_path(ctx), lambda: self._compute(ctx), ctx.rank, agree)
        self.setup_cached = not computed
        names = [name for name, _ in ctx.unet.named_parameters()]
        self.fisher = {name: saved[f"fisher.{name}"].to(ctx.device) for name in names}
        self.anchor = {name: p.detach().clone() for name, p in ctx.unet.named_parameters()}
        keep = ~torch.isin(saved["replay_labels"], torch.tensor(ctx.forget_classes))
        self.replay_images = saved["replay_images"][keep].to(ctx.device)
        self.replay_labels = saved["replay_labels"][keep].to(ctx.device)

    @classmethod
    def setup_cache_name(cls, model_id: str, options, seed: int, device_type: str) -> str:
        key = json.dumps([model_id, asdict(options), seed, device_type], sort_keys=True)
        return f"sa-fisher-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"

    def _cache_path(self, ctx: SetupContext) -> str | None:
        if not ctx.cache_dir:
            return None
        return storage.join(ctx.cache_dir, self.setup_cache_name(ctx.model_id, self.options, ctx.seed, ctx.device.type))

    def _compute(self, ctx: SetupContext) -> dict[str, torch.Tensor]:
        opts, unet = self.options, ctx.unet
        num_classes = int(unet.config.num_class_embeds) - 1
        labels = torch.arange(num_classes).repeat_interleave(opts.fisher_samples_per_class)
        images = ctx.sample(labels).to(ctx.device)  # every class, sampled over the ranks
        num_t = int(self.scheduler.config.num_train_timesteps)
        steps = opts.fisher_timesteps or num_t
        timesteps = torch.linspace(0, num_t - 1, steps, device=ctx.device).round().long()
        mine = torch.arange(ctx.rank, len(labels), ctx.world)
        unet.train()
        part = fisher_diagonal(
            unet, self.scheduler, images[mine], labels[mine].to(ctx.device), mine, timesteps, ctx.seed
        )
        fisher = {name: ctx.all_reduce(v) / len(labels) for name, v in part.items()}
        return {
            **{f"fisher.{name}": v.contiguous().cpu() for name, v in fisher.items()},
            "replay_images": images.cpu().contiguous(),
            "replay_labels": labels.contiguous(),
        }

    def loss(self, unet, batch: UnlearnBatch, rng: RankRandom) -> LossOutput:
        opts = self.options
        num_t = int(self.scheduler.config.num_train_timesteps)
        n_f, n_r = len(batch.x_forget), len(batch.x_remain)
        surrogate = rng.rand(batch.x_forget.shape) * 2 - 1  # U[-1, 1] images labelled c_f
        replay = rng.integers(len(self.replay_labels), n_r)
        x0 = torch.cat([surrogate, self.replay_images[replay]])
        labels = torch.cat([batch.y_forget, self.replay_labels[replay]])
        eps = torch.cat([rng.normal(batch.x_forget.shape), rng.normal(batch.x_remain.shape)])
        t = torch.cat([rng.integers(num_t, n_f), rng.integers(num_t, n_r)])
        pred = unet(self.scheduler.add_noise(x0, eps, t), t, class_labels=labels).sample
        loss_f, loss_r = eps_mse(pred[:n_f], eps[:n_f]), eps_mse(pred[n_f:], eps[n_f:])
        module = unet.module if hasattr(unet, "module") else unet
        ewc = sum((self.fisher[n] * (p - self.anchor[n]).pow(2)).sum() for n, p in module.named_parameters())
        loss = loss_f + opts.gamma * loss_r + opts.ewc_lambda / 2 * ewc
        stats = {"loss": loss.detach(), "loss_forget": loss_f.detach(), "loss_remain": loss_r.detach()}
        return LossOutput(loss, {**stats, "ewc": ewc.detach()})

    def state_dict(self) -> dict:
        return {
            "fisher": self.fisher,
            "anchor": self.anchor,
            "images": self.replay_images,
            "labels": self.replay_labels,
        }

    def load_state_dict(self, state: dict) -> None:
        self.fisher, self.anchor = state["fisher"], state["anchor"]
        self.replay_images, self.replay_labels = state["images"], state["labels"]
