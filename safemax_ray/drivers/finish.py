"""Finishing a run, the one way every driver does it: export the model, build the row, write it.

`unlearn`, every `batch` task and every Tune trial end here, so a row always means the same thing and a
model folder is always complete before its row exists.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from safemax_ray import storage
from safemax_ray.config import UnlearnConfig, to_dict
from safemax_ray.core.models import SHIPPED_MODEL
from safemax_ray.engine import checkpoint as layout
from safemax_ray.errors import SafemaxError
from safemax_ray.results.parquet import COMMON_OPTIONS, write_row
from safemax_ray.results.report import FORGET_PNG

METRICS = ("ua", "entropy", "fid", "retain_acc", "noise_forget", "noise_retain")
CONCEPT_METRICS = ("forget_mse", "remain_mse")


def check_not_diverged(checkpoint) -> None:
    """Raise the worker's one-line divergence message, if that is how the run ended."""
    with checkpoint.as_directory() as folder:
        message = layout.diverged_message(Path(folder))
    if message:
        raise SafemaxError(message)


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
    """A Parquet row (results.parquet.SCHEMA) from a run's config and the metrics its workers reported."""
    options = to_dict(cfg.options())
    return {
        "run_id": run_id,
        "run_key": cfg.run_key(),
        "timestamp": datetime.now(timezone.utc),
        "method": cfg.method,
        "dataset": cfg.data_name(),
        "forget_class": cfg.forget_classes()[0],
        "forget_classes": cfg.forget_label(),
        "per_class_json": json.dumps(metrics.get("per_class", {}), sort_keys=True),
        **{name: options.get(name) for name in COMMON_OPTIONS},
        "method_options_json": json.dumps(options, sort_keys=True),
        "lr": cfg.learning_rate(),
        "iterations": cfg.iterations,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "guidance": cfg.eval.guidance,
        "sample_steps": int(metrics["sample_steps"]),
        "n_forget_samples": cfg.eval.n_forget_samples,
        "n_retain_per_class": cfg.eval.n_retain_per_class,
        **{k: _number(metrics.get(k)) for k in METRICS + CONCEPT_METRICS},
        "fid_features": metrics.get("fid_features"),
        **{f"base_{k}": _number(metrics.get(f"base_{k}")) for k in METRICS + CONCEPT_METRICS},
        "base_ok": None if metrics.get("base_ok") is None else bool(metrics["base_ok"]),
        "concept": cfg.concept.concept if cfg.concept else None,
        "rte_s": float(metrics["rte_s"]),
        "setup_s": float(metrics.get("setup_s", 0.0)),
        "setup_cached": bool(metrics.get("setup_cached", False)),
        "peak_mem_mb": float(metrics["peak_mem_mb"]),
        "device": device,
        "num_workers": int(metrics.get("num_workers", cfg.ray.num_workers)),
        "eval_nodes": metrics.get("eval_nodes"),
        "model_path": model_path,
        "base_model": cfg.concept.pipeline if cfg.concept else cfg.model or str(SHIPPED_MODEL),
        "grid_path": grid_path,
        "study": cfg.study,
        "trial_id": trial_id,
        "score": score,
        "pareto": pareto,
        "config_json": json.dumps(to_dict(cfg), sort_keys=True),
    }


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def export_run(cfg: UnlearnConfig, checkpoint, output_dir: str) -> tuple[str, str | None]:
    """Copy the final checkpoint's model folder to `output_dir` atomically and draw the sample grid
    (a concept run: the whole pipeline with the unlearned UNet, no grid)."""
    from safemax_ray.core.text import export_pipeline

    if storage.is_uri(output_dir):  # build it locally, then one upload
        with tempfile.TemporaryDirectory() as local:
            export_run(cfg, checkpoint, str(Path(local) / "model"))
            try:
                storage.upload_dir(Path(local) / "model", output_dir)
            except FileExistsError:
                raise SafemaxError(f"{output_dir} already exists; not overwriting it") from None
        return output_dir, None if cfg.concept is not None else storage.join(output_dir, "samples.png")
    out = Path(output_dir)
    if out.exists() and any(out.iterdir()):
        raise SafemaxError(f"output folder {out} already exists and is not empty; not overwriting it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)
    try:
        with checkpoint.as_directory() as folder:
            if cfg.concept is not None:  # the whole pipeline, so that diffusers loads it as it is
                export_pipeline(cfg.concept.pipeline, Path(folder) / layout.MODEL_DIR / "unet", tmp)
            else:
                shutil.copytree(Path(folder) / layout.MODEL_DIR, tmp, dirs_exist_ok=True)
                _draw_grids(cfg, *layout.load_samples(Path(folder)), tmp)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return str(out), None if cfg.concept is not None else str(out / "samples.png")


def _draw_grids(cfg: UnlearnConfig, images: torch.Tensor, labels: torch.Tensor, folder: Path) -> None:
    from safemax_ray.engine.evaluate import save_grid

    classes = cfg.forget_classes()
    save_grid(images, labels, classes, str(folder / "samples.png"))
    forget = torch.isin(labels, torch.tensor(classes))
    save_grid(images[forget], labels[forget], classes, str(folder / FORGET_PNG))


def finish_run(
    cfg: UnlearnConfig,
    metrics: dict[str, Any],
    checkpoint,
    run_id: str,
    output_dir: str,
    device: str,
    **tune_fields: Any,
) -> tuple[dict[str, Any], str]:
    """Export the model, then write its row; returns (row, row path)."""
    check_not_diverged(checkpoint)
    model_path, grid_path = export_run(cfg, checkpoint, output_dir)
    row = build_row(cfg, metrics, run_id, model_path, grid_path, device, **tune_fields)
    return row, write_row(cfg.results_dir, row)
