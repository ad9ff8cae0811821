"""Finishing a run, the one way every driver does it: export the model, build the row, write it.

`unlearn`, every `batch` task and every Tune trial end here, so a row always means the same thing and a
model folder is always complete before its row exists.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from safemax_ray import storage
from safemax_ray.config import UnlearnConfig
from safemax_ray.core.intervals import INTERVAL_METRICS
from safemax_ray.engine.checkpoint import FORGET_GRID, SAMPLES_GRID
from safemax_ray.engine.outcome import Outcome, Status
from safemax_ray.engine.workloads import workload_for
from safemax_ray.identity import computation, run_key
from safemax_ray.methods import get_method
from safemax_ray.results.parquet import COMMON_OPTIONS, ENDS, option_columns, write_row
from safemax_ray.schema import to_dict
from safemax_ray.tracking import UNTRACKED, Tracker, tracking_uri

METRICS = ("ua", "entropy", "fid", "kid", "kid_std", "retain_acc", "noise_forget", "noise_retain")
INTERVALS = tuple(f"{m}_{end}" for m in INTERVAL_METRICS for end in ENDS)


def build_row(
    cfg: UnlearnConfig,
    metrics: dict[str, Any],
    run_id: str,
    model_path: str | None,
    grid_path: str | None,
    device: str,
    trial_id: str | None = None,
    score: float | None = None,
    pareto: bool | None = None,
) -> dict[str, Any]:
    """A Parquet row (results.parquet.schema()) from a run's config and the metrics its workers reported."""
    options = to_dict(cfg.options())
    workload = workload_for(cfg)
    forget = workload.forget_classes()
    return {
        "run_id": run_id,
        "run_key": run_key(cfg),
        "timestamp": datetime.now(timezone.utc),
        "method": cfg.method,
        "dataset": workload.data_name(),
        "workload": cfg.workload,
        "forget_class": forget[0],
        "forget_classes": workload.forget_label(),
        "per_class_json": json.dumps(metrics.get("per_class", {}), sort_keys=True),
        **{name: options.get(name) if name in get_method(cfg.method).ROW_COLUMNS else None for name in COMMON_OPTIONS},
        "method_options_json": json.dumps(options, sort_keys=True),
        **option_columns(cfg.method, options),
        "lr": cfg.learning_rate(),
        "iterations": cfg.iterations,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "guidance": cfg.eval.guidance,
        "sample_steps": int(metrics["sample_steps"]),
        "n_forget_samples": cfg.eval.n_forget_samples,
        "n_retain_per_class": cfg.eval.n_retain_per_class,
        **{k: _number(metrics.get(k)) for k in METRICS + INTERVALS},
        "fid_features": metrics.get("fid_features"),
        **{f"base_{k}": _number(metrics.get(f"base_{k}")) for k in METRICS + INTERVALS},
        "base_ok": None if metrics.get("base_ok") is None else bool(metrics["base_ok"]),
        **{f"sample_{k}": v for k, v in metrics.get("samples", {}).items()},
        "rte_s": float(metrics["rte_s"]),
        "setup_s": float(metrics.get("setup_s", 0.0)),
        "setup_cached": bool(metrics.get("setup_cached", False)),
        "peak_mem_mb": float(metrics["peak_mem_mb"]),
        "device": device,
        "num_workers": int(metrics.get("num_workers", cfg.ray.num_workers)),
        "eval_nodes": metrics.get("eval_nodes"),
        "resumed_from_step": metrics.get("resumed_from_step"),
        "model_path": model_path,
        "base_model": workload.base_model(),
        **workload.row_fields(metrics),
        "grid_path": grid_path,
        "study": cfg.study,
        "trial_id": trial_id,
        "score": score,
        "pareto": pareto,
        "config_json": json.dumps(to_dict(cfg), sort_keys=True),
    }


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def export_run(cfg: UnlearnConfig, checkpoint, output_dir: str) -> tuple[str, str]:
    """Write what the workload exports from the final checkpoint to `output_dir`, all or nothing;
    returns (model folder, sample grid)."""
    workload = workload_for(cfg)
    with checkpoint.as_directory() as folder:
        storage.write_folder_atomic(output_dir, lambda tmp: workload.export(Path(folder), tmp))
    return output_dir, storage.join(output_dir, SAMPLES_GRID)


def finish_run(
    cfg: UnlearnConfig,
    outcome: Outcome,
    run_id: str,
    output_dir: str,
    device: str,
    tracker: Tracker = UNTRACKED,
    **tune_fields: Any,
) -> tuple[dict[str, Any], str]:
    """Export the model, then write its row, then close its MLflow run with the figures, the sample grids
    and the row; returns (row, row path). A run that did not finish raises its one-line reason."""
    if outcome.status is not Status.FINISHED:
        tracker.failed(outcome.reason or outcome.status.value)
    outcome.require(Status.FINISHED)
    model_path, grid_path = export_run(cfg, outcome.checkpoint, output_dir)
    row = build_row(cfg, outcome.metrics, run_id, model_path, grid_path, device, **tune_fields)
    path = write_row(cfg.results_dir, row)
    tracker.finish(row, (grid_path, storage.join(output_dir, FORGET_GRID), path))
    return row, path


DEFAULT_EXPERIMENT = "safemax_ray"  # runs without a study label


def start_tracking(cfg: UnlearnConfig, run_id: str, parent: Tracker | None = None) -> Tracker:
    """The run's MLflow run, or none without a tracking URI: its experiment is its study, its parameters
    what it computes (the method and its options, lr, iterations, seeds, model and judge by content) and
    its run key."""
    uri = tracking_uri(cfg.tracking_uri)
    if uri is None:
        return UNTRACKED
    flat = _flat(computation(cfg))
    params = {
        **flat,
        "run_key": run_key(cfg),
        "forget_classes": workload_for(cfg).forget_label(),
        "num_workers": cfg.ray.num_workers,
    }
    return Tracker.start(uri, cfg.study or DEFAULT_EXPERIMENT, run_id, params, parent)


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'eval': {'seed': 1}, 'options': {'lam': 1}} -> {'eval.seed': 1, 'method.lam': 1}."""
    out = {}
    for key, value in values.items():
        name = prefix + ("method" if key == "options" else key)
        out |= _flat(value, f"{name}.") if isinstance(value, dict) else {name: value}
    return out
