"""`safemax-ray unlearn`: one run, a class or a text-to-image concept, on Ray Train."""

from __future__ import annotations

import argparse
import time

from safemax_ray.cli import flags
from safemax_ray.cli.output import console, metrics_table
from safemax_ray.cli.settings import add_run_flags, forget_classes, run_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "unlearn", help="forget a class, or a concept of a text-to-image pipeline (SAFEMax by default), on Ray Train"
    )
    p.add_argument(
        "--forget-class", type=forget_classes, help="class to forget (default 0), or several to forget together: 3,7"
    )
    p.add_argument("--output-dir", help="where the unlearned model goes (default <results-dir>/_models/<run_id>)")
    p.add_argument("--no-progress", action="store_true", help="no live progress bars")
    add_run_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from safemax_ray.drivers.unlearn import unlearn
    from safemax_ray.engine.workloads import workload_for

    given = flags.overrides(args)
    cfg = run_config(args, {**given, "forget_class": args.forget_class, "output_dir": args.output_dir})
    began = time.perf_counter()
    result = unlearn(cfg, console=console, show_progress=not args.no_progress)
    workload = workload_for(cfg)
    console.print(metrics_table(result.metrics, f"{cfg.method}: forget {workload.describe()}", workload.table_metrics))
    for note in workload.notes():
        console.print(f"[yellow]note: {note}[/]")
    console.print(f"model:   {result.model_path}")
    console.print(f"samples: {result.grid_path}")
    console.print(f"results: {result.results_path}")
    console.print(f"wall time {time.perf_counter() - began:.0f}s")
    return 0
