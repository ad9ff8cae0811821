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

import io
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from safemax_ray import storage
from safemax_ray.core.intervals import paired_difference
from safemax_ray.engine.checkpoint import FORGET_GRID
from safemax_ray.errors import SafemaxError
from safemax_ray.results import layout
from safemax_ray.results import parquet as results

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

GROUP = "group"
REFERENCE_GROUP = "safemax"  # cost ratios are relative to it
SUMMARY_ROWS = ("mean", "std")
MONTAGE_COLUMNS = 5  # forget-class panels per row of samples_grid.png

# (stored column, label in the tables). Units follow what the runner stores: UA and retain accuracy are
# percentages, RTE is seconds (the paper uses minutes; seconds keep small digit runs readable).
QUALITY_METRICS: tuple[tuple[str, str], ...] = (
    ("entropy", "H"),
    ("ua", "UA %"),
    ("fid", "FID"),
    ("kid", "KID"),
    ("retain_acc", "retain acc %"),
    ("noise_forget", "noise %"),
)
COST_METRICS: tuple[tuple[str, str], ...] = (
    ("rte_s", "RTE s"),
    ("setup_s", "set-up s"),
    ("peak_mem_mb", "peak mem MB"),
)
# Per-class bar charts: (stored column, file stem, y-axis label).
BAR_CHARTS: tuple[tuple[str, str, str], ...] = (
    ("ua", "ua", "UA % (higher = more forgotten)"),
    ("entropy", "entropy", "H (nats; ln 10 = 2.30 is uniform)"),
    ("fid", "fid", "FID on retained classes (lower = better)"),
)


@dataclass
class ReportResult:
    """What `make_report` built: the tables, the files it wrote and where."""

    tables: dict[str, pd.DataFrame]
    files: list[Path]
    out_dir: Path
    warnings: list[str] = field(default_factory=list)
    runs: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)


# --------------------------------------------------------------------------------------------- loading


def load_runs(
    results_dir: str,
    method: str | None = None,
    dataset: str | None = None,
    study: str | None = None,
    run_keys: list[str] | None = None,
) -> pd.DataFrame:
    """The runs under `results_dir`, filtered, with a "group" column, one row per (group, forget class).

    `group` is the row's study label when it has a non-empty one, else its method, so a Tune study or a
    labelled batch shows as its own column group next to plain runs of the same method. When the rows
    left after filtering span several datasets, the dataset is appended to the group ("safemax/digits"),
    because class 0 of one dataset has nothing to do with class 0 of another.

    When several rows share (group, forget_class) -- a rerun, or several trials of one study -- only the
    latest by `timestamp` is kept (ties broken by run_id, so the choice is deterministic).

    Raises SafemaxError when the folder holds no rows, or when the filters leave none (the message names
    the filters and what values the folder does hold).
    """
    df = results.read_dataframe(results_dir)
    if df.empty:
        raise SafemaxError(
            f"no results under {layout.runs_dir(results_dir)}; "
            "run an unlearning job that writes to this results folder first"
        )

    filters = {"method": method, "dataset": dataset, "study": study}
    active = {name: value for name, value in filters.items() if value is not None}
    mask = pd.Series(True, index=df.index)
    for name, value in active.items():
        mask &= df[name] == value
    if run_keys is not None:
        mask &= df["run_key"].isin(run_keys)
    kept = df[mask].copy()
    if kept.empty:
        wanted = ", ".join(f"{name}={value!r}" for name, value in active.items())
        held = "; ".join(f"{name}s {sorted(df[name].astype(str).unique())}" for name in active)
        raise SafemaxError(f"no results in {results_dir} match {wanted} (the folder holds {held})")

    study_label = kept["study"].fillna("").astype(str).str.strip()
    kept[GROUP] = study_label.where(study_label != "", kept["method"])
    # One model forgot several classes, or a concept: the group names them, as their class is not one.
    together = kept["forget_classes"].str.contains("+", regex=False) | kept["concept"].notna()
    kept[GROUP] = kept[GROUP].where(~together, kept[GROUP] + " {" + kept["forget_classes"] + "}")
    if kept["dataset"].nunique() > 1:
        kept[GROUP] = kept[GROUP] + "/" + kept["dataset"]

    # Latest wins: sort so the wanted row is last in each (group, class), then keep it.
    kept = kept.sort_values(["timestamp", "run_id"], kind="mergesort")
    kept = kept.drop_duplicates([GROUP, "forget_class"], keep="last")
    return kept.sort_values([GROUP, "forget_class"], kind="mergesort").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------- tables


def _per_class_table(df: pd.DataFrame, metrics: tuple[tuple[str, str], ...]) -> pd.DataFrame:
    """Rows: forget classes then "mean" and "std"; columns: MultiIndex (group, metric label)."""
    groups = sorted(df[GROUP].unique())
    classes = sorted(int(c) for c in df["forget_class"].unique())
    columns = pd.MultiIndex.from_tuples([(g, label) for g in groups for _, label in metrics], names=[GROUP, "metric"])
    body = pd.DataFrame(np.nan, index=pd.Index(classes, name="class"), columns=columns, dtype=float)
    for row in df.itertuples(index=False):
        for column, label in metrics:
            value = getattr(row, column)
            body.loc[int(row.forget_class), (row.group, label)] = np.nan if value is None else float(value)

    # Summaries over the classes a group actually ran (skipna); std uses ddof=1 like the spread of a
    # sample, and is NaN for a group with a single class rather than a misleading 0.
    summary = pd.DataFrame(
        [body.mean(axis=0, skipna=True), body.std(axis=0, ddof=1, skipna=True)],
        index=list(SUMMARY_ROWS),
    )
    table = pd.concat([body, summary])
    table.index = pd.Index(list(body.index) + list(SUMMARY_ROWS), name="class", dtype=object)
    table.columns = columns
    return table


def tables(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The paper's two tables from `load_runs` output: {"quality": ..., "cost": ...}.

    quality: H, UA %, FID and retain accuracy % per forget class and group; cost: RTE (seconds) and peak
    GPU memory (MB). Each ends with a "mean" and a "std" (ddof=1) row over the classes, ignoring NaN.
    """
    if df.empty:
        raise SafemaxError("no runs to tabulate")
    if GROUP not in df.columns:
        raise SafemaxError("tables() needs the output of load_runs() (it lacks the 'group' column)")
    concepts, df = df[df["concept"].notna()], df[df["concept"].isna()]
    built = {} if concepts.empty else {"concepts": concept_table(concepts)}
    if df.empty:
        return built
    built |= {
        "quality": _per_class_table(df, quality_metrics(df)),
        "cost": _per_class_table(df, COST_METRICS),
    }
    if _has_intervals(df):
        built["intervals"] = interval_table(df)
    paired = paired_table(df)
    if paired is not None:
        built["paired"] = paired
    ratios = cost_ratios(df)
    if ratios is not None:
        built["ratios"] = ratios
    return built


def quality_metrics(df: pd.DataFrame) -> tuple[tuple[str, str], ...]:
    """QUALITY_METRICS with the FID and KID columns named for the features they were computed on: "FID"
    only where every row used Inception's (the paper's); figures on different features are never one
    plain column."""
    kinds = sorted(set(df["fid_features"].dropna()))
    names = {"inception": "Inception", "classifier": "judge's"}
    mixed = "mixed: " if len(kinds) > 1 else ""
    suffix = "" if kinds == ["inception"] else f" ({mixed}{' + '.join(names.get(k, k) for k in kinds)} features)"
    return tuple((column, name + suffix if column in ("fid", "kid") else name) for column, name in QUALITY_METRICS)


def _has_intervals(df: pd.DataFrame) -> bool:
    return "ua_lo" in df.columns and df["ua_lo"].notna().any()  # rows from before intervals lack them


def interval_table(df: pd.DataFrame) -> pd.DataFrame:
    """Each figure's 95% interval per forget class and group, "lo-hi" (core/intervals.py: which samples
    the evaluation drew, not the training seed); the quality table's std row is the spread over classes."""
    metrics = tuple((column, label) for column, label in QUALITY_METRICS if column != "kid")  # KID: its std
    groups = sorted(df[GROUP].unique())
    columns = pd.MultiIndex.from_tuples([(g, label) for g in groups for _, label in metrics], names=[GROUP, "metric"])
    classes = sorted(int(c) for c in df["forget_class"].unique())
    table = pd.DataFrame("-", index=pd.Index(classes, name="class"), columns=columns, dtype=object)
    for row in df.itertuples(index=False):
        for column, label in metrics:
            lo, hi = getattr(row, f"{column}_lo"), getattr(row, f"{column}_hi")
            if lo == lo and hi == hi and lo is not None:  # not nan, not missing
                table.loc[int(row.forget_class), (row.group, label)] = f"{lo:.3g}-{hi:.3g}"
    return table


PAIRED_METRICS: tuple[tuple[str, str], ...] = (
    ("entropy", "H"),
    ("ua", "UA %"),
    ("retain_acc", "retain acc %"),
    ("noise_forget", "noise %"),
)


def per_sample(row: Any, metric: str) -> np.ndarray:
    """A row's per-sample contributions to `metric`, whose mean is the metric (forget-class samples for
    UA, H and the noise rate; retained ones for accuracy)."""
    label, pred = np.asarray(row.sample_label), np.asarray(row.sample_pred)
    forget = np.isin(label, [int(c) for c in str(row.forget_classes).split("+")])
    values = {
        "ua": lambda: 100.0 * (pred != label)[forget],
        "entropy": lambda: np.asarray(row.sample_entropy, dtype=np.float64)[forget],
        "retain_acc": lambda: 100.0 * (pred == label)[~forget],
        "noise_forget": lambda: 100.0 * np.asarray(row.sample_noise, dtype=np.float64)[forget],
    }
    return values[metric]()


def paired_table(df: pd.DataFrame, reference: str = REFERENCE_GROUP) -> pd.DataFrame | None:
    """Each group's difference from the reference group per metric, paired sample by sample over the
    classes both ran with the same evaluation samples: "+0.31 [0.22, 0.40] *", the mean over classes of
    the per-class mean difference with its paired bootstrap interval (core/intervals.py), starred where
    the interval excludes zero. None without the reference, another group, or per-sample columns."""
    if "sample_label" not in df.columns or reference not in set(df[GROUP]):
        return None
    rows = {(r.group, int(r.forget_class)): r for r in df.itertuples(index=False) if r.sample_label is not None}
    table = {}
    for group in sorted(set(df[GROUP]) - {reference}):
        pairs = [
            (rows[(group, c)], rows[(reference, c)])
            for g, c in rows
            if g == group and (reference, c) in rows and _same_samples(rows[(group, c)], rows[(reference, c)])
        ]
        if pairs:
            table[group] = {label: _paired_cell(pairs, metric) for metric, label in PAIRED_METRICS}
            table[group]["classes paired"] = f"{len(pairs)} classes"
    if not table:
        return None
    out = pd.DataFrame(table)
    out.index.name = f"minus {reference}"
    return out


def _same_samples(a: Any, b: Any) -> bool:
    return bool(np.array_equal(a.sample_label, b.sample_label))


def _paired_cell(pairs: list[tuple[Any, Any]], metric: str) -> str:
    mean, lo, hi = paired_difference([per_sample(a, metric) - per_sample(b, metric) for a, b in pairs])
    if math.isnan(mean):
        return "-"
    star = " *" if lo > 0 or hi < 0 else ""
    return f"{mean:+.3g} [{lo:.3g}, {hi:.3g}]{star}"


CONCEPT_COLUMNS = {
    "forget_mse": "MSE to eps_T (floor 1)",
    "base_forget_mse": "base: MSE to eps_T",
    "remain_mse": "remain MSE",
    "base_remain_mse": "base: remain MSE",
    "rte_s": "RTE s",
    "peak_mem_mb": "peak mem MB",
}


def concept_table(df: pd.DataFrame) -> pd.DataFrame:
    """Concept runs, one row each: how close the concept's predictions came to eps_T, and the remain
    prompts' denoising loss, beside the base pipeline's."""
    table = df.set_index(GROUP)[list(CONCEPT_COLUMNS)].rename(columns=CONCEPT_COLUMNS).astype(float)
    table.index.name = "run"
    return table


def cost_ratios(df: pd.DataFrame, reference: str = REFERENCE_GROUP) -> pd.DataFrame | None:
    """Each group's mean time and memory, and their ratio to the reference group's (the paper's
    "2x faster than SalUn, 30x than SA" reads off the ratio columns); None without the reference or
    without another group to compare.

    A set-up that a run loaded from the cache (Selective Amnesia's Fisher, shared by every class) is
    left out of the set-up mean: it is a file read, and counting it would make the cost depend on how
    many runs happened to share one. So "RTE + set-up" is what one run costs that computes its own, as
    the paper counts SA's Fisher pass; NaN if no run of the group computed it."""
    groups = sorted(df[GROUP].unique())
    if reference not in groups or len(groups) < 2:
        return None
    computed = df["setup_s"].where(~df["setup_cached"].eq(True))  # null: rows from before the column
    means = df.assign(setup_s=computed).groupby(GROUP)[["rte_s", "setup_s", "peak_mem_mb"]].mean()
    means["total_s"] = means["rte_s"] + means["setup_s"]
    ref = means.loc[reference]
    table = pd.DataFrame(
        {
            "RTE s": means["rte_s"],
            "set-up s": means["setup_s"],
            "RTE + set-up s": means["total_s"],
            f"RTE / {reference}": means["rte_s"] / ref["rte_s"],
            f"RTE + set-up / {reference}": means["total_s"] / ref["total_s"],
            "peak mem MB": means["peak_mem_mb"],
            f"peak mem / {reference}": means["peak_mem_mb"] / ref["peak_mem_mb"],
        }
    )
    table.index.name = "method"
    return table


def _format_number(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    try:
        return f"{float(value):.2f}"
    except (TypeError, ValueError):
        return str(value)


def _column_label(column: Any) -> str:
    # A MultiIndex column (group, metric) flattens to "group/metric": one header line in Markdown/CSV.
    return "/".join(str(part) for part in column) if isinstance(column, tuple) else str(column)


def _escape_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-style Markdown table: index as the first column, numbers to 2 decimals, NaN as "-".

    Written here rather than with DataFrame.to_markdown so the package does not need `tabulate`.
    """
    header = [str(table.index.name or "")] + [_column_label(c) for c in table.columns]
    lines = [
        "| " + " | ".join(_escape_cell(h) for h in header) + " |",
        "|" + "|".join(["---"] + ["---:"] * len(table.columns)) + "|",
    ]
    for label, row in table.iterrows():
        cells = [str(label)] + [_format_number(v) for v in row.tolist()]
        lines.append("| " + " | ".join(_escape_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, data: bytes) -> Path:
    """Replace `path` with `data` all at once: a reader sees the old file or the new, never half of one."""
    storage.write_bytes_atomic(str(path), data, overwrite=True)
    return path


def _local_out_dir(out_dir: str | os.PathLike[str]) -> Path:
    if storage.is_uri(str(out_dir)):
        raise SafemaxError(f"report folder {out_dir} is a URI; pass a local folder as out_dir")
    return Path(str(out_dir).removeprefix("file://"))


def export(tables: dict[str, pd.DataFrame], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write `<name>.md` and `<name>.csv` for each table (quality, cost) atomically; return the paths.

    CSV columns are flattened to "group/metric" so the file has one header line for spreadsheets and
    DuckDB; the first column is the class (0..K-1, then mean, std).
    """
    folder = _local_out_dir(out_dir)
    written = []
    for name, table in tables.items():
        written.append(_write_atomic(folder / f"{name}.md", to_markdown(table).encode()))
        flat = table.copy()
        flat.columns = [_column_label(c) for c in table.columns]
        written.append(_write_atomic(folder / f"{name}.csv", flat.to_csv().encode()))
    return written


# --------------------------------------------------------------------------------------------- figures


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
    return _write_atomic(path, buffer.getvalue())


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
    folder = _local_out_dir(out_dir)
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


# ---------------------------------------------------------------------------------------------- output


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
                *[_format_number(v) for v in row.tolist()],
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
    """Load, tabulate, write tables and figures to `out_dir` (default `<results_dir>/report`), and print
    the tables to `console` when one is given."""
    if out_dir is None:
        if storage.is_uri(results_dir):
            raise SafemaxError(f"results folder {results_dir} is a URI; pass a local out_dir for the report")
        out_dir = Path(layout.report_dir(results_dir.removeprefix("file://")))
    runs = load_runs(results_dir, method=method, dataset=dataset, study=study, run_keys=run_keys)
    built = tables(runs)
    folder = _local_out_dir(out_dir)
    class_runs = runs[runs["concept"].isna()]
    files = export(built, folder) + (figures(class_runs, folder, results_dir) if len(class_runs) else [])
    warnings = base_warnings(runs)
    if warnings:
        files.append(_write_atomic(folder / "warnings.md", ("".join(f"- {w}\n" for w in warnings)).encode()))
    if console is not None:
        print_tables(built, console)
        for warning in warnings:
            console.print(f"[bold yellow]warning:[/] {warning}")
    return ReportResult(tables=built, files=files, out_dir=folder, runs=runs, warnings=warnings)


def base_warnings(runs: pd.DataFrame) -> list[str]:
    """One line per run whose base model failed its own check: its UA and H mean nothing."""
    failed = runs[runs["base_ok"].eq(False)]
    return [
        f"{row.group} class {row.forget_class}: the base model fails its own check (forget-class accuracy "
        f"{100 - row.base_ua:.1f}%, retained accuracy {row.base_retain_acc:.1f}%), so UA and H mean nothing"
        for row in failed.itertuples()
    ]
