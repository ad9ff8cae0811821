"""The report's tables from `loading.load_runs` output: the paper's quality and cost tables (one column
group per method or study, closed by mean and std rows), the figures' intervals, the paired differences
from SAFEMax, the cost ratios; and every other workload's section, which that workload declares."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from safemax_ray.core.intervals import paired_difference
from safemax_ray.errors import SafemaxError
from safemax_ray.results.loading import GROUP

REFERENCE_GROUP = "safemax"  # cost ratios and paired differences are relative to it
SUMMARY_ROWS = ("mean", "std")

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
    """The report's tables from `load_runs` output: each workload's section of its own runs (the class
    workloads': the paper's quality and cost tables, `class_tables`)."""
    from safemax_ray.engine.workloads import workload_class

    if df.empty:
        raise SafemaxError("no runs to tabulate")
    if GROUP not in df.columns:
        raise SafemaxError("tables() needs the output of load_runs() (it lacks the 'group' column)")
    built: dict[str, pd.DataFrame] = {}
    for name, runs in df.groupby("workload", sort=True):
        built |= workload_class(str(name)).report_tables(runs)
    return built


def class_tables(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The paper's two tables: {"quality": ..., "cost": ...}, and where the rows allow them the
    intervals, the paired differences and the cost ratios.

    quality: H, UA %, FID and retain accuracy % per forget class and group; cost: RTE (seconds) and peak
    GPU memory (MB). Each ends with a "mean" and a "std" (ddof=1) row over the classes, ignoring NaN.
    """
    built = {
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
