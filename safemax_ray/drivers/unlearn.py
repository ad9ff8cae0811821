"""One unlearning run end to end: validate, train on Ray, evaluate, save the model, append a row.

`unlearn(config)` is the Python API behind `safemax-ray unlearn`; the CLI only parses flags and prints.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console

from safemax_ray import storage
from safemax_ray.config import UnlearnConfig, load_unlearn_config
from safemax_ray.drivers.finish import finish_run, start_tracking
from safemax_ray.drivers.preflight import preflight
from safemax_ray.engine.outcome import Outcome
from safemax_ray.engine.workloads import workload_for
from safemax_ray.results import layout
from safemax_ray.schema import checked


@dataclass
class UnlearnResult:
    run_id: str
    run_key: str
    metrics: dict[str, Any]  # ua, entropy, fid, retain_acc, base_*, rte_s, peak_mem_mb, ...
    model_path: str
    grid_path: str  # the sample grid: a row per class (or prompt), the forgotten ones first
    results_path: str
    row: dict[str, Any] = field(repr=False, default_factory=dict)


def coerce_config(config: UnlearnConfig | dict | str | Path) -> UnlearnConfig:
    if isinstance(config, (str, Path)):
        return load_unlearn_config(config)
    if isinstance(config, dict):
        return UnlearnConfig.from_mapping(config)
    return config


def new_run_id(cfg: UnlearnConfig) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{cfg.method}-c{workload_for(cfg).forget_label()}-{stamp}-{uuid.uuid4().hex[:6]}"


@checked
def unlearn(
    config: UnlearnConfig | dict | str | Path, console: Console | None = None, show_progress: bool = False
) -> UnlearnResult:
    """Make the model forget `config.forget_class` (or its concept); returns the metrics and where
    everything went."""
    import ray

    from safemax_ray.ray.cluster import cluster_has_gpus, connected
    from safemax_ray.ray.progress import ProgressActor, run_with_progress
    from safemax_ray.ray.run import train_and_evaluate

    cfg = preflight(coerce_config(config))
    console = console or Console(quiet=not show_progress)
    run_id = new_run_id(cfg)
    output_dir = cfg.output_dir or storage.join(layout.models_dir(cfg.results_dir), run_id)
    tracker = start_tracking(cfg, run_id)
    with connected(cfg.ray.address, cfg.ray.num_cpus):
        use_gpu = cluster_has_gpus() if cfg.ray.use_gpu is None else cfg.ray.use_gpu
        actor = ProgressActor.remote() if show_progress else None

        def run() -> Outcome:
            return train_and_evaluate(
                cfg,
                name=run_id,
                storage_path=layout.ray_storage(cfg.results_dir, cfg.ray.storage_path),
                use_gpu=use_gpu,
                cache_dir=layout.cache_dir(cfg.results_dir),
                progress=actor,
                on_progress=(lambda phase, i, n: actor.update.remote(phase, i, n, None)) if actor else None,
                tracker=tracker,
            )

        began = time.perf_counter()
        with tracker.failing_on_error():
            outcome = run_with_progress(run, actor, console) if actor else run()
        console.log(f"Ray run finished in {time.perf_counter() - began:.0f}s")
        if actor is not None:
            ray.kill(actor)
    row, path = finish_run(cfg, outcome, run_id, output_dir, "cuda" if use_gpu else "cpu", tracker)
    return UnlearnResult(run_id, row["run_key"], outcome.metrics, row["model_path"], row["grid_path"], path, row)
