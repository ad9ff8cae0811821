"""Which stored runs a report shows: the rows of a results folder, filtered, grouped by study or method,
the latest of each (group, forget class)."""

from __future__ import annotations

import pandas as pd

from safemax_ray.errors import SafemaxError
from safemax_ray.results import layout
from safemax_ray.results import parquet as results

GROUP = "group"


def workload_of(df: pd.DataFrame) -> pd.Series:
    """Each row's workload; a row written before the column by the column its workload alone fills."""
    from safemax_ray.engine.workloads import DEFAULT_WORKLOAD, installed_workloads

    named = df["workload"].copy()
    for name, workload in installed_workloads().items():
        mark = workload.marks_rows
        if mark in df.columns:
            named = named.where(named.notna() | df[mark].isna(), name)
    return named.fillna(DEFAULT_WORKLOAD)


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

    df["workload"] = workload_of(df)
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
    together = ~kept["forget_classes"].str.fullmatch(r"\d+")
    kept[GROUP] = kept[GROUP].where(~together, kept[GROUP] + " {" + kept["forget_classes"] + "}")
    if kept["dataset"].nunique() > 1:
        kept[GROUP] = kept[GROUP] + "/" + kept["dataset"]

    # Latest wins: sort so the wanted row is last in each (group, class), then keep it.
    kept = kept.sort_values(["timestamp", "run_id"], kind="mergesort")
    kept = kept.drop_duplicates([GROUP, "forget_class"], keep="last")
    return kept.sort_values([GROUP, "forget_class"], kind="mergesort").reset_index(drop=True)
