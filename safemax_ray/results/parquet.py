"""The Parquet results dataset: one explicit schema, one file per run, atomic writes.

Layout: `<results_dir>/runs/<run_id>.parquet`, one row each. A file per run means concurrent writers
(Tune trials, batch runs on many nodes) never touch the same file, and a crash mid-write leaves only a
hidden temporary file that readers skip. The folder reads as one table in pandas, pyarrow and DuckDB
(`SELECT * FROM 'safemax_results/runs/*.parquet'`).
"""

from __future__ import annotations

import io
import json
import typing
from dataclasses import fields
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from safemax_ray import storage
from safemax_ray.core.intervals import INTERVAL_METRICS
from safemax_ray.errors import SafemaxError
from safemax_ray.results import layout

# SAFEMax's options under their bare names, as rows have always had them (a method's ROW_COLUMNS says
# which are its); every option of every method also has a typed column of its own, `<method>_<option>`
# (`option_fields`), so a query for SalUn's alpha (`salun_alpha`) never sees SAFEMax's.
COMMON_OPTIONS = ("lam", "alpha", "target")
ENDS = ("lo", "hi")  # an interval's columns: <metric>_lo, <metric>_hi
SAMPLE_COLUMNS = ("sample_label", "sample_pred", "sample_entropy", "sample_noise")
INTERVAL_COLUMNS = [f"{base}{m}_{end}" for base in ("", "base_") for m in INTERVAL_METRICS for end in ENDS]

SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("run_key", pa.string(), nullable=False),  # method-dataset-class-confighash-seed
        pa.field("timestamp", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("method", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("workload", pa.string()),  # what the run unlearned (null: rows from before the column)
        pa.field("forget_class", pa.int32(), nullable=False),  # the first of the forgotten classes
        pa.field("forget_classes", pa.string(), nullable=False),  # all of them: "3", or "3+7" forgotten together
        pa.field("lam", pa.float64()),  # the method's option of that name, where it has one
        pa.field("alpha", pa.float64()),
        pa.field("target", pa.string()),
        pa.field("method_options_json", pa.string(), nullable=False),  # all the method's options
        pa.field("lr", pa.float64(), nullable=False),
        pa.field("iterations", pa.int32(), nullable=False),
        pa.field("batch_size", pa.int32(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("guidance", pa.float64(), nullable=False),
        pa.field("sample_steps", pa.int32(), nullable=False),
        pa.field("n_forget_samples", pa.int32(), nullable=False),
        pa.field("n_retain_per_class", pa.int32(), nullable=False),
        # Classifier metrics: null for workloads judged without a classifier (their own columns follow).
        pa.field("ua", pa.float64()),
        pa.field("entropy", pa.float64()),
        pa.field("fid", pa.float64()),
        pa.field("retain_acc", pa.float64()),
        pa.field("fid_features", pa.string()),  # FID's and KID's
        pa.field("kid", pa.float64()),  # KID on the same features: mean over chunks
        pa.field("kid_std", pa.float64()),  # its standard deviation over chunks
        pa.field("noise_forget", pa.float64()),  # % of forget-class samples that are noise
        pa.field("noise_retain", pa.float64()),  # % of retained-class samples that are noise
        pa.field("per_class_json", pa.string(), nullable=False),  # per forgotten class: UA, H, noise rate
        pa.field("base_ua", pa.float64()),
        pa.field("base_entropy", pa.float64()),
        pa.field("base_fid", pa.float64()),
        pa.field("base_retain_acc", pa.float64()),
        pa.field("base_kid", pa.float64()),
        pa.field("base_kid_std", pa.float64()),
        pa.field("base_noise_forget", pa.float64()),
        pa.field("base_noise_retain", pa.float64()),
        pa.field("base_ok", pa.bool_()),  # the base model recognised its own samples (null: no classifier)
        # 95% intervals (core/intervals.py) of the classifier metrics above, the base model's too
        *[pa.field(name, pa.float64()) for name in INTERVAL_COLUMNS],
        # Every evaluation sample in order (label, predicted class, entropy, noise flag): same settings,
        # same noise, so two rows of one class pair sample by sample (report's paired differences).
        pa.field("sample_label", pa.list_(pa.int16())),
        pa.field("sample_pred", pa.list_(pa.int16())),
        pa.field("sample_entropy", pa.list_(pa.float32())),
        pa.field("sample_noise", pa.list_(pa.bool_())),
        pa.field("rte_s", pa.float64(), nullable=False),  # training steps only
        pa.field("setup_s", pa.float64(), nullable=False),  # the method's set-up phase
        pa.field("setup_cached", pa.bool_()),  # set-up loaded from the cache: setup_s is not its cost
        pa.field("peak_mem_mb", pa.float64(), nullable=False),
        pa.field("device", pa.string(), nullable=False),
        pa.field("num_workers", pa.int32(), nullable=False),
        pa.field("eval_nodes", pa.int32()),  # Ray nodes that sampled the evaluation (null: the Train workers did)
        pa.field("resumed_from_step", pa.int32()),  # > 0: restored from a checkpoint after a failure
        pa.field("model_path", pa.string()),  # the unlearned diffusers folder
        pa.field("base_model", pa.string(), nullable=False),
        pa.field("grid_path", pa.string()),
        pa.field("study", pa.string(), nullable=False),
        pa.field("trial_id", pa.string()),
        pa.field("score", pa.float64()),
        pa.field("pareto", pa.bool_()),
        pa.field("config_json", pa.string(), nullable=False),
    ]
)

# Columns that rows written before them lack; they read as null.
ADDED_LATER = (
    "workload",
    "setup_cached",
    "resumed_from_step",
    "kid",
    "kid_std",
    "base_kid",
    "base_kid_std",
    *INTERVAL_COLUMNS,
    *SAMPLE_COLUMNS,
)


_ARROW_TYPES = {float: pa.float64(), int: pa.int64(), bool: pa.bool_(), str: pa.string()}


def option_fields() -> list[pa.Field]:
    """A typed column for each option of each registered method, `<method>_<option>` (null in the rows
    of other methods); an option of another type than a number, flag or string is stored as JSON."""
    from safemax_ray.methods import available_methods, get_method

    out = []
    for method in available_methods():
        options = get_method(method).Options
        hints = typing.get_type_hints(options)
        out += [pa.field(f"{method}_{f.name}", _ARROW_TYPES.get(hints[f.name], pa.string())) for f in fields(options)]
    return out


def option_columns(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """A run's own option columns: `<method>_<option>` for each of its options."""
    plain = (float, int, bool, str, type(None))
    return {f"{method}_{k}": v if isinstance(v, plain) else json.dumps(v) for k, v in options.items()}


def workload_fields() -> list[pa.Field]:
    """The columns each registered workload adds (`Workload.row_columns`), null in other workloads' rows."""
    from safemax_ray.engine.workloads import installed_workloads

    columns = {name: kind for w in installed_workloads().values() for name, kind in w.row_columns.items()}
    return [pa.field(name, _ARROW_TYPES[kind]) for name, kind in columns.items()]


def schema() -> pa.Schema:
    """The rows' schema: SCHEMA, the option columns of the methods and the columns of the workloads
    registered now."""
    return pa.schema([*SCHEMA, *option_fields(), *workload_fields()])


def validate_row(row: dict[str, Any]) -> pa.Table:
    """The row as a one-line table in `schema()`, or an error naming the missing or extra columns."""
    target = schema()
    missing = [f.name for f in target if not f.nullable and row.get(f.name) is None]
    extra = sorted(set(row) - set(target.names))
    if missing or extra:
        raise SafemaxError(f"result row does not fit the schema: missing {missing}, unknown {extra}")
    return pa.Table.from_pylist([{name: row.get(name) for name in target.names}], schema=target)


def write_row(results_dir: str, row: dict[str, Any]) -> str:
    """Write one run's row atomically; refuses to overwrite an existing run."""
    path = storage.join(layout.runs_dir(results_dir), f"{row['run_id']}.parquet")
    return _write_new(path, validate_row(row), f"a result for run {row['run_id']}")


def read_row(results_dir: str, run_id: str) -> dict[str, Any] | None:
    """The row of run `run_id`, or None when it has none (yet)."""
    path = storage.join(layout.runs_dir(results_dir), f"{run_id}.parquet")
    if not storage.exists(path):
        return None
    return pq.read_table(io.BytesIO(storage.read_bytes(path))).to_pylist()[0]


def _write_new(path: str, table: pa.Table, what: str) -> str:
    """The table as one Parquet file, written at once; an existing file is never replaced."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    try:
        storage.write_bytes_atomic(path, buffer.getvalue())
    except FileExistsError:
        raise SafemaxError(f"{what} already exists at {path}; not overwriting it") from None
    return path


def read_results(results_dir: str) -> pa.Table:
    """All rows under `results_dir` as one table in `schema()` (empty if there are none); the option
    columns of a method no longer installed are left out."""
    target = schema()
    files = storage.list_files(layout.runs_dir(results_dir), ".parquet")
    if not files:
        return target.empty_table()
    later = [*ADDED_LATER, *(f.name for f in option_fields() + workload_fields())]
    tables = []
    for path in files:
        table = pq.read_table(io.BytesIO(storage.read_bytes(path)))
        for name in later:
            if name not in table.column_names:
                table = table.append_column(target.field(name), pa.nulls(len(table), target.field(name).type))
        missing = sorted(set(target.names) - set(table.column_names))
        if missing:
            raise SafemaxError(
                f"{path} was written by an older safemax_ray (no column {', '.join(missing)}); "
                "move it out of the results folder or use another --results-dir"
            )
        tables.append(table.select(target.names).cast(target))
    return pa.concat_tables(tables)


def read_dataframe(results_dir: str):
    return read_results(results_dir).to_pandas()


ATTACK_SCHEMA = pa.schema(
    [
        pa.field("attack_id", pa.string(), nullable=False),
        pa.field("timestamp", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("run_id", pa.string()),  # the attacked run (null when a model folder was given)
        pa.field("method", pa.string()),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("forget_class", pa.int32(), nullable=False),
        pa.field("model", pa.string(), nullable=False),  # "unlearned" or "base" (the ceiling)
        pa.field("model_path", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # "relearn" or "trajectory"
        pa.field("shots", pa.int32()),  # relearn: real forget images trained on (0: retained data only)
        pa.field("step", pa.int32()),  # relearn: fine-tuning steps so far
        pa.field("t0", pa.int32()),  # trajectory: the timestep real images were noised to
        pa.field("forget_acc", pa.float64(), nullable=False),  # % of forget-class samples labelled c_f
        pa.field("ua", pa.float64()),
        pa.field("entropy", pa.float64()),
        pa.field("noise", pa.float64(), nullable=False),  # % of forget-class samples that are noise
        pa.field("steps_to_recover", pa.int32()),  # relearn: first step with forget_acc > 50% (null: never)
        pa.field("settings_json", pa.string(), nullable=False),
    ]
)


def write_attack(results_dir: str, attack_id: str, rows: list[dict[str, Any]]) -> str:
    """All rows of one attack, in one file written at once; never overwrites."""
    table = pa.Table.from_pylist(
        [{name: row.get(name) for name in ATTACK_SCHEMA.names} for row in rows], schema=ATTACK_SCHEMA
    )
    path = storage.join(layout.attacks_dir(results_dir), f"{attack_id}.parquet")
    return _write_new(path, table, f"attack {attack_id}")


def read_attacks(results_dir: str):
    """Every stored attack row as a DataFrame (empty if none)."""
    files = storage.list_files(layout.attacks_dir(results_dir), ".parquet")
    tables = [pq.read_table(io.BytesIO(storage.read_bytes(f))).cast(ATTACK_SCHEMA) for f in files]
    return (pa.concat_tables(tables) if tables else ATTACK_SCHEMA.empty_table()).to_pandas()
