"""The Ray Train side of a run: the worker function around `engine.loop`, and `build_trainer`.

Each worker opens an engine session for its rank, restores the latest checkpoint if Ray Train hands one
over (a worker group restarted after a failure), wraps the UNet for DDP, and maps the loop's hooks onto
`ray.train.report`. No math lives here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from safemax_ray.config import UnlearnConfig
from safemax_ray.core.models import DiffusionModel
from safemax_ray.engine import checkpoint, evaluate
from safemax_ray.engine.loop import (
    Hooks,
    Session,
    TrainingDiverged,
    evaluate_run,
    open_session,
    run_setup,
    train,
    training_metrics,
)
from safemax_ray.engine.outcome import STATUS, Status
from safemax_ray.schema import to_dict
from safemax_ray.tracking import UNTRACKED, Tracker


def _threads(cpus_per_worker: float | None, local_workers: int) -> int:
    """Torch threads: the worker's CPUs, or by default this node's cores shared among its workers."""
    if cpus_per_worker is not None:
        return max(1, int(cpus_per_worker))
    return max(1, (os.cpu_count() or 1) // local_workers)


def _collectives(world: int) -> tuple[Callable[[torch.Tensor], torch.Tensor], evaluate.GatherObjects | None]:
    if world == 1:
        return (lambda x: x), None
    import torch.distributed as dist

    def all_reduce(x: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(x)
        return x

    def gather(obj: Any) -> list[Any]:
        parts: list[Any] = [None] * world
        dist.all_gather_object(parts, obj)
        return parts

    return all_reduce, gather


def _report(session: Session, metrics: dict[str, Any], write: Callable[[Path], None] | None) -> None:
    """Every rank reports (it is a barrier); rank 0 alone writes the checkpoint folder."""
    import ray.train
    from ray.train import Checkpoint

    if session.rank != 0 or write is None:
        ray.train.report(metrics, checkpoint=None)
        return
    folder = Path(tempfile.mkdtemp(prefix="safemax-ckpt-"))
    try:
        write(folder)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(folder)))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _save(session: Session) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        model = DiffusionModel(session.model.unet, session.model.scheduler)
        checkpoint.save(folder, session.workload, model, session.optimizer, session.method.state_dict(), session.state)

    return write


def train_loop(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: restore or set up, train, evaluate, report with checkpoints."""
    import ray.train
    import ray.train.torch

    cfg = UnlearnConfig.from_mapping(loop_config["config"])
    progress, probe_n = loop_config.get("progress"), loop_config.get("probe_samples")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(_threads(cfg.ray.cpus_per_worker, ctx.get_local_world_size()))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    all_reduce, gather = _collectives(world)

    session = open_session(cfg, device, rank, world, loop_config["cache_dir"])
    resumed_from = _restore_or_set_up(session, loop_config["cache_dir"], all_reduce, gather)
    session.unet = ray.train.torch.prepare_model(session.model.unet)

    tracker = loop_config.get("tracker") or UNTRACKED

    def on_stats(done: int, stats: dict[str, float]) -> None:
        if rank != 0:
            return
        tracker.log_step(done, stats)
        if progress is not None:
            progress.update.remote("train", done, cfg.iterations, stats.get("loss"))

    def on_checkpoint(done: int) -> None:
        metrics: dict[str, Any] = {"step": done, STATUS: Status.RUNNING.value}
        if probe_n:
            session.model.unet.eval()
            metrics.update(session.workload.probe(session.model, session.data, probe_n, rank, world, gather))
            session.model.unet.train()
        _report(session, metrics, _save(session))

    try:
        train(session, Hooks(_fault_drill(loop_config.get("fault_drill"), rank, world), on_stats, on_checkpoint))
    except TrainingDiverged as exc:
        # Reported, not raised: a raised error would make Ray Train restart the workers for nothing.
        message = str(exc)
        diverged = {STATUS: Status.DIVERGED.value, "diverged_at_step": exc.step, "reason": message}
        _report(session, diverged, lambda folder: checkpoint.mark_diverged(folder, message))
        return
    _evaluate_and_report(session, loop_config["cache_dir"], gather, progress, resumed_from)


def _restore_or_set_up(session: Session, cache_dir: str, all_reduce, gather) -> int:
    """Restore the checkpoint Ray Train hands over (a restarted worker group), or run the method's set-up;
    returns the step the run resumes from (0 for a fresh run)."""
    import ray.train

    restored = ray.train.get_checkpoint()
    if restored is None:
        run_setup(session, cache_dir, all_reduce, gather)
        return 0
    with restored.as_directory() as folder:
        session.state, method_state = checkpoint.restore(
            Path(folder), session.workload, session.model.unet, session.optimizer
        )
    session.method.load_state_dict(method_state)
    return session.state.step


def _evaluate_and_report(session: Session, cache_dir: str, gather, progress, resumed_from: int) -> None:
    """The final report: with the evaluation when the workload evaluates on the Train workers, else the
    training figures only, for the driver to evaluate over the cluster (ray/evaluation.py)."""
    # resumed_from_step > 0 when a worker failure made Ray Train restore a checkpoint
    if not session.workload.evaluates_in_workers(session.model, session.data):
        trained = {**training_metrics(session), "resumed_from_step": resumed_from, STATUS: Status.TRAINED.value}
        _report(session, trained, _save(session))
        return

    def on_sample(phase: str):
        if session.rank != 0 or progress is None:
            return None
        return lambda i, n: progress.update.remote(phase, i, n, None) if i % 5 == 0 or i == n else None

    result = evaluate_run(session, cache_dir, gather, on_sample)
    metrics = {**result.metrics, "resumed_from_step": resumed_from, STATUS: Status.FINISHED.value}

    def write_final(folder: Path) -> None:
        _save(session)(folder)
        checkpoint.save_samples(folder, result.images, result.labels)

    _report(session, metrics, write_final)


FAULT_DRILL_ENV = "SAFEMAX_RAY_FAULT_DRILL"  # "STEP:MARKER_FILE", set by fault-tolerance tests only


def _fault_drill(spec: str | None, rank: int, world: int) -> Callable[[int], None] | None:
    """For fault-tolerance tests: the last rank exits its process once at STEP, like a lost node; the
    marker file makes it happen once. Read from the driver's environment by `build_trainer`."""
    if not spec:
        return None
    crash_at, marker = int(spec.split(":", 1)[0]), Path(spec.split(":", 1)[1])

    def before_step(step: int) -> None:
        if step == crash_at and rank == world - 1 and not marker.exists():
            marker.touch()
            os._exit(1)

    return before_step


def build_trainer(
    cfg: UnlearnConfig,
    name: str,
    storage_path: str,
    use_gpu: bool,
    cache_dir: str,
    progress: Any = None,
    callbacks: list | None = None,
    probe_samples: int | None = None,
    tracker: Tracker | None = None,
):
    """A TorchTrainer for one run: DDP over `cfg.ray.num_workers`, NCCL on whole GPUs, else gloo (NCCL
    refuses two ranks on one GPU: "Duplicate GPU detected")."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    resources = {"CPU": cfg.ray.cpus_per_worker or 1.0}
    if use_gpu:
        resources["GPU"] = cfg.ray.gpus_per_worker
    nccl = use_gpu and cfg.ray.gpus_per_worker == 1
    return TorchTrainer(
        train_loop,
        train_loop_config={
            "config": to_dict(cfg),
            "progress": progress,
            "cache_dir": cache_dir,
            "fault_drill": os.environ.get(FAULT_DRILL_ENV),
            "probe_samples": probe_samples,
            "tracker": tracker,  # rank 0 logs the loss by step to the run's MLflow run
        },
        torch_config=TorchConfig(backend="nccl" if nccl else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.ray.num_workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
        ),
    )
