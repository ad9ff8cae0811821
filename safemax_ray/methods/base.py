"""What an unlearning method is, and the life it leads inside the engine.

The engine owns data, the optimiser's creation, DDP, checkpoints and timing. A method brings:

- `Options`: a dataclass of its own hyperparameters, validated by `validate()`; `SEARCHABLE` names the
  ones a Tune search may vary (as `method.<name>`);
- `setup(ctx)`: once before step 0 on every rank (saliency masks, Fisher diagonals, frozen copies); it
  may sample, all-reduce, and cache under `ctx.cache_dir`. Its time is measured apart (`setup_s`);
  a set-up loaded from that cache sets `setup_cached`, so cost tables count only set-ups computed;
- `loss(unet, batch, rng)`: the step's loss; randomness only from `rng`, so work splits and resumes
  reproducibly;
- `after_backward(unet)`: a gradient hook (e.g. masking), after DDP has averaged the gradients;
- `step(unet, optimizer, batch, rng, grad_clip)`: the iteration's update(s); the default is one update
  (loss, backward, hook, clip, step), and a method with several (an inner loop, two Adam steps) owns it;
- `attach(data, forget_idx, remain_idx, iterations)`: the data and the run's length, at every start;
- `finish(unet)`: after the last step (EMA weights into place);
- `state_dict()` / `load_state_dict()`: what a resumed run needs instead of running `setup` again.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from diffusers import DDPMScheduler, UNet2DModel

from safemax_ray.core.data import ImageData
from safemax_ray.core.randomness import RankRandom
from safemax_ray.schema import Settings


def sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """x summed over the ranks of the run's process group (x itself on one process): for an update that
    needs a figure of the global batch (a normaliser, a gradient's direction) inside `step`."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        x = x.clone()
        torch.distributed.all_reduce(x)
    return x


def option(default: Any, help: str) -> Any:
    """A field of an Options dataclass; `help` becomes the text of its command-line flag."""
    return field(default=default, metadata={"help": help})


@dataclass
class MethodOptions(Settings):
    """A method's hyperparameters; subclasses add fields and checks."""

    def validate(self) -> None:
        """Raise SafemaxError naming the bad option."""


@dataclass
class UnlearnBatch:
    """This rank's samples of the step's global batch, on the training device."""

    x_forget: torch.Tensor  # forget-class images, [-1, 1]
    y_forget: torch.Tensor  # their labels (the forget class)
    x_remain: torch.Tensor  # images of the other classes
    y_remain: torch.Tensor  # their labels
    null_label: int


@dataclass
class LossOutput:
    loss: torch.Tensor
    stats: dict[str, torch.Tensor] = field(default_factory=dict)  # detached scalars, left on the device


@dataclass
class SetupContext:
    """What `setup` may use; everything is this rank's view of the run."""

    unet: UNet2DModel  # the model being unlearned (not yet wrapped for DDP)
    scheduler: DDPMScheduler
    data: ImageData  # on `device`
    forget_idx: torch.Tensor  # indices of the forget class in `data`
    remain_idx: torch.Tensor
    forget_classes: list[int]
    device: torch.device
    rank: int
    world: int
    seed: int
    all_reduce: Callable[[torch.Tensor], torch.Tensor]  # sum over ranks (identity on one worker)
    sample: Callable[[torch.Tensor], torch.Tensor]  # guided samples of the *base* model for the given labels
    cache_dir: str | None  # a folder shared by runs, for set-up results keyed by content
    model_id: str  # the base model's content hash (for cache keys)
    batch_size: int  # the run's global batch (forget and remain images a step, each)
    null_label: int


class UnlearningMethod(ABC):
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    SEARCHABLE: ClassVar[tuple[str, ...]] = ()
    # Options stored in typed Parquet columns of the same name (results/parquet.py: lam, alpha, target are
    # SAFEMax's); every option of every method is in method_options_json.
    ROW_COLUMNS: ClassVar[tuple[str, ...]] = ()
    # The ranges `tune` searches when its config has no `search:` (besides lr and iterations), each as
    # the study YAML writes one: {"low": ..., "high": ..., "log": ...} or {"choices": [...]}.
    SEARCH_SPACE: ClassVar[dict[str, dict[str, Any]]] = {}
    DEFAULT_LR: ClassVar[float] = 1e-4  # the run's lr when none is given
    # Iterations relative to SAFEMax's in the paper's protocol (`compare` multiplies the common budget).
    ITERATIONS_VS_SAFEMAX: ClassVar[float] = 1.0
    # Whether `setup` depends on the forget class; one that does not can be computed once and shared.
    SETUP_DEPENDS_ON_CLASS: ClassVar[bool] = True

    def __init__(self, options: MethodOptions, scheduler: DDPMScheduler):
        self.options = options
        self.scheduler = scheduler
        # True when `setup` loaded its result from `ctx.cache_dir` instead of computing it: that run's
        # `setup_s` is a file read, not the method's set-up cost.
        self.setup_cached = False

    @classmethod
    def step_passes(cls, options: MethodOptions, batch_size: int, forget_images: int) -> tuple[int, int]:
        """UNet passes one training step pushes through the model on average: (with a backward, forward
        only). `plan` turns them into GPU time. Default: the forget and the remain batch, both trained."""
        return 2 * batch_size, 0

    @classmethod
    def setup_passes(
        cls, options: MethodOptions, forget_images: int, num_classes: int, sample_steps: int, timesteps: int
    ) -> tuple[int, int]:
        """UNet passes of `setup`: (with a backward, forward only). Default: no set-up."""
        return 0, 0

    @classmethod
    def setup_cache_name(cls, model_id: str, options: MethodOptions, seed: int, device_type: str) -> str | None:
        """The cache entry (a file name under the cache folder) a set-up that does not depend on the
        class is shared through; `batch` and `compare` start the runs that read it after it exists."""
        return None

    def setup(self, ctx: SetupContext) -> None:  # noqa: B027  (optional hook)
        """Once before step 0 on every rank."""

    def attach(  # noqa: B027  (optional hook)
        self, data: ImageData, forget_idx: torch.Tensor, remain_idx: torch.Tensor, iterations: int
    ) -> None:
        """The run's data on the training device and its length, given at every start (a resumed run
        too, which skips `setup`): for updates that read beyond their batch (a pass over the forget set)
        or that change over the run (a decaying weight)."""

    def finish(self, unet: torch.nn.Module) -> None:  # noqa: B027  (optional hook)
        """After the last step, before evaluation and export: e.g. put EMA weights in place."""

    @abstractmethod
    def loss(self, unet: UNet2DModel, batch: UnlearnBatch, rng: RankRandom) -> LossOutput:
        """The training loss for one step."""

    def after_backward(self, unet: torch.nn.Module) -> None:  # noqa: B027  (optional hook)
        """Called after backward (gradients already averaged over ranks), before clipping."""

    def step(
        self,
        unet: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        batch: UnlearnBatch,
        rng: RankRandom,
        grad_clip: float,
    ) -> dict[str, torch.Tensor]:
        """One iteration's update(s); returns the loss statistics (detached, on the device) with
        `loss` and `grad_norm`, which the engine checks for divergence. The default is one update:
        forward and `loss` (bf16 autocast on CUDA), backward, `after_backward`, clip, step. A method
        whose iteration makes several updates (an inner loop, a second Adam step on a remain batch)
        overrides it; the engine still owns DDP, the optimiser's creation, checkpoints (the optimiser
        state included), timing and the divergence check."""
        device = batch.x_forget.device
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = self.loss(unet, batch, rng)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.after_backward(unet)
        grad_norm = torch.nn.utils.clip_grad_norm_(unet.parameters(), grad_clip)
        optimizer.step()
        return {**out.stats, "grad_norm": grad_norm.detach()}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027  (optional hook)
        """Restore what `state_dict` returned, instead of running `setup` again."""
