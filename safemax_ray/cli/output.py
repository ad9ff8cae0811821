"""What the commands print: the console, number formats, the metrics table, a batch's last lines and
`--plan`'s projection."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table

from safemax_ray.errors import SafemaxError

console = Console(stderr=False)

# What a FID was computed on, as the tables name it: only Inception's is the paper's FID.
FID_FEATURES = {"inception": "Inception", "classifier": "judge's features"}

BASE_WARNING = (
    "[bold yellow]warning: the base model fails its own check (its samples are not recognised as their "
    "classes), so UA and H say nothing about unlearning; train the base model or classifier longer[/]"
)


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def fmt_param(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def with_interval(metrics: dict[str, Any], key: str) -> str:
    """The figure, and its 95% interval where the run has one: 98.00 [95.1, 99.4]; KID with its
    standard deviation over subsets: 0.0123 ± 0.0045."""
    if metrics.get(f"{key}_std") is not None:
        return f"{metrics[key]:.3g} ± {metrics[f'{key}_std']:.2g}"
    lo, hi = metrics.get(f"{key}_lo"), metrics.get(f"{key}_hi")
    if lo is None or hi is None or lo != lo:  # none, or nan (no samples)
        return fmt(metrics.get(key))
    return f"{fmt(metrics.get(key))} [{lo:.3g}, {hi:.3g}]"


def metrics_table(metrics: dict[str, Any], title: str, rows: tuple[tuple[str, str], ...]) -> Table:
    """One run's figures beside the base model's, with the run's cost."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("base model", justify="right")
    table.add_column("unlearned", justify="right")
    for key, label in rows:
        if key in ("fid", "kid") and metrics.get("fid_features"):
            label = f"{label}; {FID_FEATURES.get(metrics['fid_features'], metrics['fid_features'])}"
        table.add_row(label, with_interval(metrics, f"base_{key}"), with_interval(metrics, key))
    table.add_row("RTE (s, unlearning only)", "", fmt(metrics.get("rte_s")))
    cached = " (cached)" if metrics.get("setup_cached") else ""
    table.add_row("set-up (s)", "", fmt(metrics.get("setup_s")) + cached)
    table.add_row("peak memory (MB)", "", fmt(metrics.get("peak_mem_mb")))
    if metrics.get("base_ok") is False:
        table.caption = BASE_WARNING
    return table


def print_outcome(command: str, result: Any, where: str = "") -> int:
    """The last lines of `batch` and `compare`; exit status 1 when a run failed."""
    console.print(
        f"{command}: {len(result.done)} run(s) done, {len(result.skipped)} already stored, "
        f"{len(result.failed)} failed, in {result.seconds:.0f}s{where}"
    )
    for name, error in sorted(result.failed.items()):
        console.print(f"[red]{name}[/]: {error}")
    return 1 if result.failed else 0


def add_plan_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plan", action="store_true", help="print the runs and their projected GPU time, then stop")
    p.add_argument("--gpus", type=int, default=1, help="GPUs for --plan's projected wall time")


def print_plan(configs: list, gpus: int, evaluations: list = ()) -> int:
    """--plan: what the runs (and evaluations of trained runs) will cost, then stop before anything
    starts."""
    from safemax_ray.drivers.plan import describe, plan_runs
    from safemax_ray.engine.workloads import workload_for

    if gpus < 1:
        raise SafemaxError(f"--gpus must be >= 1, got {gpus}")
    for cfg in configs:
        workload_for(cfg).require_class_by_class("--plan")
        cfg.validate()
    for line in describe(plan_runs(configs, gpus, evaluations)):
        console.print(line, highlight=False)
    return 0
