"""One run on Ray, the way every driver does it: train on a worker group, then evaluate where the
workload says (on the Train workers already, or over the cluster's evaluation tasks).

`unlearn`, every `batch`/`compare` task and every Tune trial call `train_and_evaluate`, then
`drivers/finish.finish_run`; no driver reads Ray's result objects itself.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from safemax_ray.config import UnlearnConfig
from safemax_ray.engine.outcome import STATUS, Outcome, Status
from safemax_ray.engine.workloads import workload_for
from safemax_ray.ray.evaluation import OnProgress, evaluate_checkpoint
from safemax_ray.ray.worker import build_trainer
from safemax_ray.tracking import Tracker


def outcome_of(result) -> Outcome:
    """A Ray Train (or Tune) result as an Outcome."""
    if result.error is not None:
        return Outcome(Status.FAILED, dict(result.metrics or {}), None, f"failed: {str(result.error).splitlines()[0]}")
    metrics = dict(result.metrics or {})
    status = Status(metrics.get(STATUS, Status.STOPPED.value))
    if status is Status.RUNNING:  # the last report was a mid-run one: a scheduler stopped the trial
        status = Status.STOPPED
    reason = {
        Status.DIVERGED: metrics.get("reason", ""),
        Status.STOPPED: f"stopped early at step {metrics.get('step', 0)}",
    }.get(status, "")
    return Outcome(status, metrics, result.checkpoint, reason)


def train_and_evaluate(
    cfg: UnlearnConfig,
    *,
    name: str,
    storage_path: str,
    use_gpu: bool,
    cache_dir: str,
    progress: Any = None,
    on_progress: OnProgress | None = None,
    callbacks: list | None = None,
    probe_samples: int | None = None,
    tracker: Tracker | None = None,
) -> Outcome:
    """Fit the run's TorchTrainer and evaluate it; a failed fit raises its error, a diverged run comes
    back as such (the caller decides whether that is an error)."""
    trainer = build_trainer(cfg, name, storage_path, use_gpu, cache_dir, progress, callbacks, probe_samples, tracker)
    result = fit_keeping_ctrl_c(trainer)
    if result.error is not None:
        raise result.error
    outcome = outcome_of(result)
    if outcome.status is Status.TRAINED:
        metrics = evaluate_checkpoint(
            workload_for(cfg), outcome.checkpoint, outcome.metrics, use_gpu, cache_dir, on_progress
        )
        outcome = Outcome(Status.FINISHED, {**metrics, STATUS: Status.FINISHED.value}, outcome.checkpoint)
    return outcome


def fit_keeping_ctrl_c(fittable: Any) -> Any:
    """`fittable.fit()` (a Ray Train trainer or a Tune Tuner), then the Ctrl-C handler the process had
    before. Both install their own (Ctrl-C aborts the run or the study) and leave it installed: a later
    Ctrl-C in this process (a notebook, a batch) would go to a finished run instead of interrupting."""
    # Off the main thread (a Tune trial) they install nothing; None: a handler not set from Python.
    before = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    try:
        return fittable.fit()
    finally:
        if before is not None:
            signal.signal(signal.SIGINT, before)
