"""The report's figures: per-class bar charts, the sample grids' montage, the paper's Figure 2 (each
method's forget-class samples) and the relearning attacks' recovery curves, as PNG files."""

from __future__ import annotations

import io
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from safemax_ray import storage
from safemax_ray.engine.checkpoint import FORGET_GRID
from safemax_ray.results import layout
from safemax_ray.results import parquet as results
from safemax_ray.results.loading import GROUP
from safemax_ray.results.writing import local_out_dir, write_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

MONTAGE_COLUMNS = 5  # forget-class panels per row of samples_grid.png
# Per-class bar charts: (stored column, file stem, y-axis label).
BAR_CHARTS: tuple[tuple[str, str, str], ...] = (
    ("ua", "ua", "UA % (higher = more forgotten)"),
    ("entropy", "entropy", "H (nats; ln 10 = 2.30 is uniform)"),
    ("fid", "fid", "FID on retained classes (lower = better)"),
)


def _new_figure(figsize: tuple[float, float]) -> Figure:
    # matplotlib is imported here, not at module top, so the CLI and table-only callers start fast.
    # Figure + Agg canvas directly (no pyplot): no global backend switch, no GUI, safe in any thread.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _save_figure(fig: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    return write_atomic(path, buffer.getvalue())


def _bar_chart(df: pd.DataFrame, column: str, ylabel: str, path: Path) -> Path:
    groups = sorted(df[GROUP].unique())
    classes = sorted(int(c) for c in df["forget_class"].unique())
    values = df.pivot(index="forget_class", columns=GROUP, values=column).reindex(index=classes, columns=groups)
    x = np.arange(len(classes))
    width = 0.8 / max(len(groups), 1)
    fig = _new_figure((max(4.0, 0.6 * len(classes) * max(len(groups), 1) + 1.5), 3.5))
    ax = fig.add_subplot()
    for i, group in enumerate(groups):
        ax.bar(x + (i - (len(groups) - 1) / 2) * width, values[group].to_numpy(dtype=float), width, label=group)
    ax.set_xticks(x, [str(c) for c in classes])
    ax.set_xlabel("forget class")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: never hides a bar
    return _save_figure(fig, path)


def _read_image(path: str, results_dir: str | None) -> np.ndarray | None:
    """The image at `path` as an array, or None when it is missing or unreadable (that run is skipped)."""
    from PIL import Image  # Pillow comes with matplotlib

    candidates = [path]
    if results_dir is not None and not storage.is_uri(path) and not Path(path).is_absolute():
        candidates.append(storage.join(results_dir, path))  # a relative path may be relative to the results
    elif results_dir is not None:
        candidates.append(layout.stored_path(results_dir, path))  # a row from before `_models/`
    for candidate in candidates:
        try:
            if not storage.exists(candidate):
                continue
            with Image.open(io.BytesIO(storage.read_bytes(candidate))) as image:
                return np.asarray(image.convert("RGB"))
        except Exception as exc:  # a corrupt PNG must not sink the whole report
            log.warning("skipping sample grid %s: %s", candidate, exc)
            return None
    return None


def _samples_montage(df: pd.DataFrame, path: Path, results_dir: str | None) -> Path | None:
    """One panel per run with a readable grid: a row per group, a column per forget class."""
    panels = _panels(df, results_dir, lambda grid: grid)
    if not panels:
        return None
    groups = sorted({g for g, _, _ in panels})
    classes = sorted({c for _, c, _ in panels})
    # Wrap long class lists: ten panels in one row are too small to read.
    ncols = min(len(classes), MONTAGE_COLUMNS)
    rows_per_group = math.ceil(len(classes) / ncols)
    fig = _new_figure((2.6 * ncols, 2.8 * rows_per_group * len(groups)))
    axes = fig.subplots(rows_per_group * len(groups), ncols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for group, forget_class, image in panels:
        row, col = divmod(classes.index(forget_class), ncols)
        ax = axes[groups.index(group) * rows_per_group + row, col]
        ax.imshow(image)
        ax.set_title(f"{group}: forget class {forget_class}", fontsize="small")
    return _save_figure(fig, path)


def figures(df: pd.DataFrame, out_dir: str | os.PathLike[str], results_dir: str | None = None) -> list[Path]:
    """Bar charts ua.png, entropy.png, fid.png (per class, bars by group) and samples_grid.png.

    samples_grid.png tiles each run's sample grid (`grid_path`); runs whose file is missing are skipped,
    and the file is not written when no run has one. `results_dir`, if given, is also tried as the base
    of relative grid paths.
    """
    folder = local_out_dir(out_dir)
    written = [_bar_chart(df, column, ylabel, folder / f"{stem}.png") for column, stem, ylabel in BAR_CHARTS]
    for drawn in (
        _samples_montage(df, folder / "samples_grid.png", results_dir),
        _forget_rows(df, folder / "forget_samples.png", results_dir),
        _recovery_curves(df, results_dir, folder / "recovery.png"),
    ):
        if drawn is not None:
            written.append(drawn)
    return written


def _recovery_curves(df: pd.DataFrame, results_dir: str | None, path: Path) -> Path | None:
    """Relearning attacks on the reported runs: forget-class accuracy against fine-tuning steps, one panel
    per attacked run, a line per shot count (solid: the unlearned model; dashed: the base model)."""
    if not results_dir:
        return None
    attacks = results.read_attacks(results_dir)
    attacks = attacks[(attacks.kind == "relearn") & attacks.run_id.isin(df.run_id)]
    if attacks.empty:
        return None
    runs = sorted(attacks.run_id.unique())
    fig = _new_figure((4.2 * len(runs), 3.4))
    axes = fig.subplots(1, len(runs), squeeze=False)[0]
    for ax, run_id in zip(axes, runs, strict=True):
        mine = attacks[attacks.run_id == run_id]
        for (model, shots), curve in mine.groupby(["model", "shots"]):
            curve = curve.sort_values("step")
            label = f"{model}, {'retained only' if shots == 0 else f'{int(shots)} shots'}"
            ax.plot(curve.step, curve.forget_acc, "--" if model == "base" else "-", marker="o", label=label)
        first = mine.iloc[0]
        ax.set_title(f"{first.method}, class {first.forget_class}", fontsize="small")
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlabel("fine-tuning steps")
        ax.set_ylabel("forget-class accuracy %")
        ax.axhline(50, color="grey", linewidth=0.5)
        ax.legend(fontsize="xx-small")
    return _save_figure(fig, path)


def _panels(df: pd.DataFrame, results_dir: str | None, image_path) -> list[tuple[str, int, Any]]:
    """(group, forget class, image) for each run whose image (`image_path(grid_path)`) can be read."""
    panels = []
    for row in df.itertuples(index=False):
        if isinstance(row.grid_path, str) and row.grid_path:
            image = _read_image(image_path(row.grid_path), results_dir)
            if image is not None:
                panels.append((row.group, int(row.forget_class), image))
    return panels


def _forget_rows(df: pd.DataFrame, path: Path, results_dir: str | None) -> Path | None:
    """The paper's Figure 2: for each forget class a line, and in it each group's forget-class samples
    (the run's forget.png, beside its samples.png)."""
    panels = _panels(df, results_dir, lambda grid: str(Path(grid).with_name(FORGET_GRID)))
    if not panels:
        return None
    groups = sorted({g for g, _, _ in panels})
    classes = sorted({c for _, c, _ in panels})
    fig = _new_figure((3.2 * len(groups), 0.7 * len(classes) + 0.6))
    axes = fig.subplots(len(classes), len(groups), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for group, forget_class, image in panels:
        ax = axes[classes.index(forget_class), groups.index(group)]
        ax.imshow(image)
        ax.set_title(f"{group}, class {forget_class}", fontsize="x-small")
    return _save_figure(fig, path)
