"""One unlearning run end to end: validate, train on Ray, evaluate, save the model, append a row.

`unlearn(config)` is the Python API behind `safemax-ray unlearn`; the CLI only parses flags and prints.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console

from safemax_ray import storage
from safemax_ray.config import UnlearnConfig, from_dict, load_unlearn_config, to_dict
from safemax_ray.data import load_dataset
from safemax_ray.errors import SafemaxError
from safemax_ray.methods import get_method
from safemax_ray.models import SHIPPED_MODEL, load_model
from safemax_ray.results import write_row

METRICS = ("ua", "entropy", "fid", "retain_acc")


@dataclass
class UnlearnResult:
    run_id: str
    run_key: str
    metrics: dict[str, Any]  # ua, entropy, fid, retain_acc, base_*, rte_s, peak_mem_mb, ...
    model_path: str
    grid_path: str
    results_path: str
    row: dict[str, Any] = field(repr=False, default_factory=dict)


def coerce_config(config: UnlearnConfig | dict | str | Path) -> UnlearnConfig:
    if isinstance(config, (str, Path)):
        return load_unlearn_config(config)
    if isinstance(config, dict):
        return from_dict(UnlearnConfig, config)
    return config


def preflight(cfg: UnlearnConfig) -> None:
    """Catch bad input in the driver, before any Ray worker starts, with a message that says why."""
    cfg.validate()
    get_method(cfg.method)
    if cfg.dataset != "digits" and not (cfg.model and cfg.classifier):
        raise SafemaxError(f"dataset {cfg.dataset!r} needs --model and --classifier (made by `safemax-ray pretrain`)")
    data = load_dataset(cfg.dataset, cfg.data_root, cfg.image_size)
    data.check_class(cfg.forget_class)
    load_model(cfg.model, data.num_classes, data.channels, data.image_size)
    if cfg.output_dir and Path(cfg.output_dir).exists() and any(Path(cfg.output_dir).iterdir()):
        raise SafemaxError(f"output folder {cfg.output_dir} already exists and is not empty; choose another")


def new_run_id(cfg: UnlearnConfig) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{cfg.method}-c{cfg.forget_class}-{stamp}-{uuid.uuid4().hex[:6]}"


def absolute(path: str) -> str:
    return path if storage.is_uri(path) else str(Path(path).resolve())


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
    """A Parquet row (results.SCHEMA) from a run's config and the metrics its workers reported."""
    return {
        "run_id": run_id,
        "run_key": cfg.run_key(),
        "timestamp": datetime.now(timezone.utc),
        "method": cfg.method,
        "dataset": cfg.dataset,
        "forget_class": cfg.forget_class,
        "lam": cfg.lam,
        "lr": cfg.lr,
        "iterations": cfg.iterations,
        "batch_size": cfg.batch_size,
        "alpha": cfg.alpha,
        "seed": cfg.seed,
        "target": cfg.target,
        "guidance": cfg.eval.guidance,
        "sample_steps": int(metrics["sample_steps"]),
        "n_forget_samples": cfg.eval.n_forget_samples,
        "n_retain_per_class": cfg.eval.n_retain_per_class,
        **{k: float(metrics[k]) for k in METRICS},
        "fid_features": metrics["fid_features"],
        **{f"base_{k}": metrics.get(f"base_{k}") for k in METRICS},
        "rte_s": float(metrics["rte_s"]),
        "peak_mem_mb": float(metrics["peak_mem_mb"]),
        "device": device,
        "num_workers": int(metrics.get("num_workers", cfg.ray.num_workers)),
        "model_path": model_path,
        "base_model": cfg.model or str(SHIPPED_MODEL),
        "grid_path": grid_path,
        "study": cfg.study,
        "trial_id": trial_id,
        "score": score,
        "pareto": pareto,
        "config_json": json.dumps(to_dict(cfg), sort_keys=True),
    }


def export_run(cfg: UnlearnConfig, checkpoint, output_dir: str) -> tuple[str, str]:
    """Copy the final checkpoint's model folder to `output_dir` atomically and draw the sample grid."""
    from safetensors.torch import load_file

    from safemax_ray.evaluate import save_grid
    from safemax_ray.train import MODEL_DIR, SAMPLES

    if storage.is_uri(output_dir):  # build it locally, then one upload
        with tempfile.TemporaryDirectory() as local:
            export_run(cfg, checkpoint, str(Path(local) / "model"))
            try:
                storage.upload_dir(Path(local) / "model", output_dir)
            except FileExistsError:
                raise SafemaxError(f"{output_dir} already exists; not overwriting it") from None
        return output_dir, storage.join(output_dir, "samples.png")
    out = Path(output_dir)
    if out.exists() and any(out.iterdir()):
        raise SafemaxError(f"output folder {out} already exists and is not empty; not overwriting it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)
    try:
        with checkpoint.as_directory() as folder:
            shutil.copytree(Path(folder) / MODEL_DIR, tmp, dirs_exist_ok=True)
            samples = load_file(str(Path(folder) / SAMPLES))
        save_grid(samples["images"], samples["labels"], cfg.forget_class, str(tmp / "samples.png"))
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return str(out), str(out / "samples.png")


def unlearn(
    config: UnlearnConfig | dict | str | Path,
    console: Console | None = None,
    show_progress: bool = False,
    crash_at_step: int | None = None,
) -> UnlearnResult:
    """Make the model forget `config.forget_class`; returns the metrics and where everything went.

    `crash_at_step` kills the last worker once at that step (a fault-tolerance drill for tests).
    """
    from safemax_ray.progress import ProgressActor, run_with_progress
    from safemax_ray.ray_cluster import cluster_has_gpus, ensure_ray
    from safemax_ray.train import build_trainer

    cfg = coerce_config(config)
    preflight(cfg)
    console = console or Console(quiet=not show_progress)
    run_id = new_run_id(cfg)
    results_dir = absolute(cfg.results_dir)
    output_dir = absolute(cfg.output_dir or storage.join(cfg.results_dir, "models", run_id))
    started = ensure_ray(cfg.ray.address, cfg.ray.num_cpus)
    try:
        import ray

        use_gpu = cluster_has_gpus() if cfg.ray.use_gpu is None else cfg.ray.use_gpu
        actor = ProgressActor.remote() if show_progress else None
        trainer = build_trainer(
            cfg,
            name=run_id,
            storage_path=absolute(cfg.ray.storage_path or storage.join(cfg.results_dir, "ray")),
            use_gpu=use_gpu,
            cache_dir=storage.join(results_dir, "cache"),
            progress=actor,
            crash_at_step=crash_at_step,
            crash_marker=str(Path(tempfile.gettempdir()) / f"safemax-crash-{run_id}") if crash_at_step else None,
        )
        began = time.perf_counter()
        result = run_with_progress(trainer.fit, actor, console) if actor is not None else trainer.fit()
        console.log(f"Ray Train run finished in {time.perf_counter() - began:.0f}s")
        if actor is not None:
            ray.kill(actor)
    finally:
        if started:
            import ray

            ray.shutdown()
    if result.error is not None:
        raise result.error
    metrics = dict(result.metrics)
    model_path, grid_path = export_run(cfg, result.checkpoint, output_dir)
    row = build_row(cfg, metrics, run_id, model_path, grid_path, "cuda" if use_gpu else "cpu")
    path = write_row(results_dir, row)
    return UnlearnResult(run_id, cfg.run_key(), metrics, model_path, grid_path, path, row)
