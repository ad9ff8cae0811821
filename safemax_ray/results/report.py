"""Paper-style tables and figures from the Parquet results dataset.

The paper reports two tables per method over the forget classes 0..K-1, each closed by a mean row:
quality (entropy H, unlearning accuracy UA, FID) and cost (run time RTE, peak GPU memory). This module
builds the same two tables from the rows that `safemax_ray.results.parquet` stores, with one column group per
method (or per study, when rows carry a study label), adds a standard-deviation row so the spread over
classes is visible, and writes them as Markdown and CSV together with a few bar charts and a montage of
each run's sample grid.

It is pure pandas/matplotlib on purpose: a report must be possible on a laptop that has the results
folder but no Ray cluster and no GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from safemax_ray import storage
from safemax_ray.errors import SafemaxError
from safemax_ray.results import layout
from safemax_ray.results.html import page
from safemax_ray.results.loading import load_runs
from safemax_ray.results.tables import SUMMARY_ROWS, tables
from safemax_ray.results.writing import export, format_number, local_out_dir, write_atomic


@dataclass
class ReportResult:
    """What `make_report` built: the tables, the files it wrote and where."""

    tables: dict[str, pd.DataFrame]
    files: list[Path]
    out_dir: Path
    warnings: list[str] = field(default_factory=list)
    runs: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)


def _console_tables(tables: dict[str, pd.DataFrame]) -> list[tuple[str, pd.DataFrame]]:
    """The tables as printed: a per-class table splits into one table per metric (classes by groups),
    the paper's layout, and the ratios table turns to put the methods across, because the wide forms
    do not fit a terminal beside three methods; the files keep the wide forms."""
    printed = []
    for name, table in tables.items():
        if isinstance(table.columns, pd.MultiIndex):
            for metric in table.columns.get_level_values("metric").unique():
                printed.append((f"{name}: {metric}", table.xs(metric, axis=1, level="metric")))
        elif name == "ratios":
            printed.append((name, table.T))
        else:
            printed.append((name, table))
    return printed


def print_tables(tables: dict[str, pd.DataFrame], console: Any) -> None:
    """Print each table with rich; the mean and std rows are bold and set off by a rule."""
    from rich.table import Table

    for title, table in _console_tables(tables):
        rich_table = Table(title=title, title_justify="left")
        rich_table.add_column(str(table.index.name or ""), justify="right")
        for column in table.columns:
            rich_table.add_column(str(column), justify="right")
        labels = list(table.index)
        for i, (label, row) in enumerate(table.iterrows()):
            is_summary = label in SUMMARY_ROWS
            next_is_summary = i + 1 < len(labels) and labels[i + 1] in SUMMARY_ROWS and not is_summary
            rich_table.add_row(
                str(label),
                *[format_number(v) for v in row.tolist()],
                style="bold" if is_summary else None,
                end_section=next_is_summary,
            )
        console.print(rich_table)


def make_report(
    results_dir: str,
    out_dir: str | os.PathLike[str] | None = None,
    method: str | None = None,
    dataset: str | None = None,
    study: str | None = None,
    console: Any = None,
    run_keys: list[str] | None = None,
) -> ReportResult:
    """Load, tabulate, write tables and figures to `out_dir` (default `<results_dir>/_report`) with
    `report.html`, the whole report as one page, and print the tables to `console` when one is given."""
    if out_dir is None:
        if storage.is_uri(results_dir):
            raise SafemaxError(f"results folder {results_dir} is a URI; pass a local out_dir for the report")
        out_dir = Path(layout.report_dir(results_dir.removeprefix("file://")))
    runs = load_runs(results_dir, method=method, dataset=dataset, study=study, run_keys=run_keys)
    built = tables(runs)
    folder = local_out_dir(out_dir)
    files = export(built, folder) + figures(runs, folder, results_dir)
    warnings = base_warnings(runs)
    if warnings:
        files.append(write_atomic(folder / "warnings.md", ("".join(f"- {w}\n" for w in warnings)).encode()))
    images = [f for f in files if f.suffix == ".png"]
    files.append(write_atomic(folder / "report.html", page(_title(runs), built, images, warnings).encode()))
    if console is not None:
        print_tables(built, console)
        for warning in warnings:
            console.print(f"[bold yellow]warning:[/] {warning}")
    return ReportResult(tables=built, files=files, out_dir=folder, runs=runs, warnings=warnings)


def figures(runs: pd.DataFrame, folder: Path, results_dir: str) -> list[Path]:
    """Each workload's figures of its own runs."""
    from safemax_ray.engine.workloads import workload_class

    groups = runs.groupby("workload")
    return [f for name, mine in groups for f in workload_class(str(name)).report_figures(mine, folder, results_dir)]


def base_warnings(runs: pd.DataFrame) -> list[str]:
    """One line per run whose base model failed its own check: its UA and H mean nothing."""
    failed = runs[runs["base_ok"].eq(False)]
    return [
        f"{row.group} class {row.forget_class}: the base model fails its own check (forget-class accuracy "
        f"{100 - row.base_ua:.1f}%, retained accuracy {row.base_retain_acc:.1f}%), so UA and H mean nothing"
        for row in failed.itertuples()
    ]


def _title(runs: pd.DataFrame) -> str:
    groups = ", ".join(sorted(runs["group"].unique()))
    return f"safemax_ray report: {groups} on {', '.join(sorted(runs['dataset'].unique()))} ({len(runs)} runs)"
