"""Where things live in a results folder, so that the folder is one dataset of run rows.

`pd.read_parquet(results_dir)`, `ray.data.read_parquet(results_dir)` and DuckDB's
`'results_dir/**/*.parquet'` read every Parquet file they find; Arrow's dataset discovery (pandas,
Ray Data) skips names that start with `_` or `.`. So the run rows sit in `runs/`, everything else that
is not Parquet (models, caches, Ray's storage, studies' files, the report) in `_`-named folders, and the
attack rows, which are Parquet of another schema and would be found by a recursive glob, in a dataset of
their own beside the folder: `<results_dir>-attacks`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from safemax_ray import storage

RUNS = "runs"  # one Parquet file per run: the dataset
MODELS = "_models"  # the unlearned models, <run_id>/
CACHE = "_cache"  # content-keyed set-ups and base judgements
RAY = "_ray"  # Ray Train and Tune storage (checkpoints), unless ray.storage_path says otherwise
STUDIES = "_studies"  # a Tune study's best config
REPORT = "_report"  # `report`'s default output
# What earlier versions named them, where Arrow's discovery looks.
EARLIER = {"models": MODELS, "cache": CACHE, "ray": RAY, "studies": STUDIES, "report": REPORT}

log = logging.getLogger(__name__)


def runs_dir(results_dir: str) -> str:
    return storage.join(results_dir, RUNS)


def models_dir(results_dir: str) -> str:
    return storage.join(results_dir, MODELS)


def cache_dir(results_dir: str) -> str:
    return storage.join(results_dir, CACHE)


def ray_storage(results_dir: str, storage_path: str | None = None) -> str:
    """Ray's storage: `ray.storage_path` where given, else inside the results folder."""
    return storage_path or storage.join(results_dir, RAY)


def studies_dir(results_dir: str) -> str:
    return storage.join(results_dir, STUDIES)


def report_dir(results_dir: str) -> str:
    return storage.join(results_dir, REPORT)


def attacks_dir(results_dir: str) -> str:
    """The attack rows' own dataset, beside the results folder (`s3://b/results` -> `s3://b/results-attacks`)."""
    return results_dir.rstrip("/") + "-attacks"


def stored_path(results_dir: str, path: str) -> str:
    """A row's model folder or sample grid; rows written before `models/` became `_models/` name the old
    place."""
    earlier = storage.join(results_dir, "models") + "/"
    if path.startswith(earlier) and not storage.exists(path):
        return storage.join(models_dir(results_dir), path.removeprefix(earlier))
    return path


def move_earlier_layout(results_dir: str) -> list[str]:
    """Move the folders an earlier version wrote where dataset readers look (`models/`, `cache/`, ...)
    to their `_` names, each with one rename (atomic on a local disk); returns what moved. Object
    stores have no folder rename: there the folders stay, and a line says how to read the rows."""
    found = [name for name in [*EARLIER, "attacks"] if storage.exists(storage.join(results_dir, name))]
    if not found:
        return []
    if storage.is_uri(results_dir):
        log.warning(
            "%s holds %s from an earlier safemax_ray; read its rows with pd.read_parquet('%s')",
            results_dir,
            ", ".join(found),
            runs_dir(results_dir),
        )
        return []
    moved = []
    for name in found:
        target = attacks_dir(results_dir) if name == "attacks" else storage.join(results_dir, EARLIER[name])
        if not storage.exists(target):
            os.rename(storage.join(results_dir, name), target)
            moved.append(f"{name}/ -> {Path(target).name}/")
    if moved:
        log.warning("results folder %s moved to this version's layout: %s", results_dir, ", ".join(moved))
    return moved
