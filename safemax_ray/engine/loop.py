"""One rank's unlearning run in plain torch: open, set up the method, train, evaluate.

Runs as it is on one process (tests, a GPU box without Ray) and inside a Ray Train worker, which passes
its rank, an all-reduce and a gather, wraps the UNet for DDP, and turns the hooks into reports and
checkpoints. Statistics and the divergence check are read from the device every `stats_every` steps
(every step on a CPU, where reading is free), never in between.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from safemax_ray.config import UnlearnConfig
from safemax_ray.core.data import ImageData
from safemax_ray.core.models import DiffusionModel, peak_memory_mb, use_shared_inductor_cache
from safemax_ray.core.randomness import RankRandom, step_generator
from safemax_ray.engine import evaluate
from safemax_ray.engine.checkpoint import TrainState
from safemax_ray.engine.step import draw_batch
from safemax_ray.engine.workloads import workload_for
from safemax_ray.engine.workloads.base import Evaluation, Workload
from safemax_ray.errors import SafemaxError
from safemax_ray.methods import SetupContext, UnlearningMethod, get_method


class TrainingDiverged(SafemaxError):
    def __init__(self, step: int, lr: float):
        super().__init__(
            f"training diverged at step {step}: the loss or gradient became non-finite; lower the learning "
            f"rate (--lr, now {lr:g})"
        )
        self.step = step


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclass
class Session:
    """Everything one rank trains with. `unet` may be replaced by a DDP wrapper of `model.unet`."""

    cfg: UnlearnConfig
    workload: Workload
    model: DiffusionModel  # the model being unlearned (unwrapped)
    unet: torch.nn.Module
    method: UnlearningMethod
    optimizer: torch.optim.Optimizer
    data: ImageData  # on `device`
    forget_idx: torch.Tensor
    remain_idx: torch.Tensor
    device: torch.device
    rank: int = 0
    world: int = 1
    state: TrainState = field(default_factory=TrainState)


# Measured on one H200 with the 35.7M CIFAR UNet: compiling costs ~160 s cold (far less from a warm
# cache) and saves ~25-45 ms a step, so it pays for runs of a few thousand steps (SA's 20000, not
# SAFEMax's 1000) unless asked for.
COMPILE_PAYS_AFTER = 3000


def should_compile(cfg: UnlearnConfig, device: torch.device) -> bool:
    if cfg.compile is not None:
        return cfg.compile
    return device.type == "cuda" and cfg.iterations >= COMPILE_PAYS_AFTER


def compile_in_place(unet: torch.nn.Module) -> None:
    """Compile the forward in place: parameter names, and so saved models, stay as they are."""
    use_shared_inductor_cache()
    unet.compile()


def new_session(
    cfg: UnlearnConfig, model: DiffusionModel, data: ImageData, device: torch.device, rank: int = 0, world: int = 1
) -> Session:
    """A session over given data and model (moved to `device`); `open_session` loads them from `cfg`."""
    return _session(workload_for(cfg), model, data, device, rank, world)


def _session(
    workload: Workload, model: DiffusionModel, data: ImageData, device: torch.device, rank: int, world: int
) -> Session:
    cfg = workload.cfg
    model.unet.to(device).train()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest convolution once
    if should_compile(cfg, device):
        compile_in_place(model.unet)
    forget_idx, remain_idx = data.split(workload.forget_classes())
    optimizer = torch.optim.Adam(model.unet.parameters(), lr=cfg.learning_rate(), fused=device.type == "cuda")
    method = get_method(cfg.method)(cfg.options(), model.scheduler)
    data, forget_idx, remain_idx = data.to(device), forget_idx.to(device), remain_idx.to(device)
    method.attach(data, forget_idx, remain_idx, cfg.iterations)
    return Session(
        cfg=cfg,
        workload=workload,
        model=model,
        unet=model.unet,
        method=method,
        optimizer=optimizer,
        data=data,
        forget_idx=forget_idx,
        remain_idx=remain_idx,
        device=device,
        rank=rank,
        world=world,
    )


def open_session(
    cfg: UnlearnConfig, device: torch.device, rank: int = 0, world: int = 1, cache_dir: str | None = None
) -> Session:
    """The model and data of `cfg`'s workload (what it generates is cached in `cache_dir`)."""
    workload = workload_for(cfg)
    model, data = workload.open(device, cache_dir)
    return _session(workload, model, data, device, rank, world)


def run_setup(
    session: Session,
    cache_dir: str | None = None,
    all_reduce: Callable[[torch.Tensor], torch.Tensor] = _identity,
    gather: evaluate.GatherObjects | None = None,
) -> None:
    """The method's set-up phase on the unwrapped model; its seconds go to `session.state.setup_s`."""
    s = session
    base = DiffusionModel(s.model.unet, s.model.scheduler)  # before step 0 this *is* the base model

    def sample(labels: torch.Tensor) -> torch.Tensor:
        return evaluate.sample_labels(base, labels, s.cfg.eval, s.rank, s.world, gather)

    ctx = SetupContext(
        unet=s.model.unet,
        scheduler=s.model.scheduler,
        data=s.data,
        forget_idx=s.forget_idx,
        remain_idx=s.remain_idx,
        forget_classes=s.workload.forget_classes(),
        device=s.device,
        rank=s.rank,
        world=s.world,
        seed=s.cfg.seed,
        all_reduce=all_reduce,
        sample=sample,
        cache_dir=cache_dir,
        model_id=s.workload.model_id(),
        batch_size=s.cfg.batch_size,
        null_label=s.model.null_label,
    )
    began = time.perf_counter()
    s.method.setup(ctx)
    s.model.unet.train()
    s.state.setup_s = time.perf_counter() - began
    s.state.setup_cached = s.method.setup_cached


@dataclass
class Hooks:
    """Where the loop hands control back to its runner (a Ray worker, a test, a benchmark)."""

    before_step: Callable[[int], None] | None = None  # step index about to run
    on_stats: Callable[[int, dict[str, float]], None] | None = None  # steps done, mean stats since last call
    on_checkpoint: Callable[[int], None] | None = None  # steps done (session.state is current)


def train(session: Session, hooks: Hooks | None = None) -> dict[str, float]:
    """Steps from `session.state.step` to `cfg.iterations`; returns the last statistics.

    Raises TrainingDiverged at the first step whose loss or gradient norm is not finite.
    """
    s, cfg, hooks = session, session.cfg, hooks or Hooks()
    sync_every = 1 if s.device.type == "cpu" else cfg.stats_every
    per_rank = cfg.batch_size // s.world
    sums: dict[str, torch.Tensor] = {}
    first_bad = torch.full((), -1, dtype=torch.int64, device=s.device)
    stats: dict[str, float] = {}
    window, began = 0, time.perf_counter()
    for step in range(s.state.step, cfg.iterations):
        if hooks.before_step is not None:
            hooks.before_step(step)
        rng = RankRandom(step_generator(cfg.seed, step, s.device), s.rank, s.world)
        batch = draw_batch(s.data, s.forget_idx, s.remain_idx, per_rank, s.model.null_label, rng)
        out = s.method.step(s.unet, s.optimizer, batch, rng, cfg.grad_clip)
        bad = ~torch.isfinite(out["loss"]) | ~torch.isfinite(out["grad_norm"])
        first_bad = torch.where(bad & (first_bad < 0), step, first_bad)
        sums = {k: sums.get(k, 0) + v.float() for k, v in out.items()}
        window += 1
        done = step + 1
        checkpoint_due = done % cfg.ray.checkpoint_every == 0 and done < cfg.iterations
        if done % sync_every == 0 or done == cfg.iterations or checkpoint_due:
            if int(first_bad) >= 0:
                raise TrainingDiverged(int(first_bad), cfg.learning_rate())
            stats = {k: float(v) / window for k, v in sums.items()}
            sums, window = {}, 0
            if hooks.on_stats is not None:
                hooks.on_stats(done, stats)
        s.state.step = done
        if checkpoint_due and hooks.on_checkpoint is not None:
            s.state.elapsed_s += time.perf_counter() - began  # hooks' own time is not unlearning time
            hooks.on_checkpoint(done)
            began = time.perf_counter()
    s.state.elapsed_s += time.perf_counter() - began
    if s.state.step == cfg.iterations:
        s.method.finish(s.model.unet)
    return stats


def training_metrics(session: Session) -> dict[str, Any]:
    """What a run reports about its training, whoever evaluates it."""
    s = session
    return {
        "step": s.state.step,
        "rte_s": s.state.elapsed_s,
        "setup_s": s.state.setup_s,
        "setup_cached": s.state.setup_cached,
        "peak_mem_mb": peak_memory_mb(s.device),
        "num_workers": s.world,
        "num_classes": s.data.num_classes,
    }


def evaluate_run(
    session: Session,
    cache_dir: str | None = None,
    gather: evaluate.GatherObjects | None = None,
    on_sample: Callable[[str], evaluate.OnStep | None] = lambda phase: None,
) -> Evaluation:
    """The workload's evaluation of the unlearned model over this run's ranks, with the training figures
    added; the workload's metrics are on rank 0 only."""
    s = session
    sample = evaluate.RankSampler(s.cfg.eval, s.device.type, s.rank, s.world, gather, on_sample)
    result = s.workload.evaluate(s.model, s.data, sample, cache_dir, s.rank)
    result.metrics = {**training_metrics(s), **result.metrics}
    return result
