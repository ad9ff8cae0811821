"""The Parquet results: schema, atomic one-file-per-run writes, and reading back with three engines."""

import os
from datetime import datetime, timezone

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from safemax_ray.errors import SafemaxError
from safemax_ray.results import layout
from safemax_ray.results import parquet as results


def make_row(run_id="r1", forget_class=0, **extra):
    row = {
        "run_id": run_id,
        "run_key": f"safemax-digits-c{forget_class}-abc-s0",
        "timestamp": datetime.now(timezone.utc),
        "method": "safemax",
        "dataset": "digits",
        "forget_class": forget_class,
        "forget_classes": str(forget_class),
        "per_class_json": "{}",
        "lam": 1.0,
        "lr": 1e-3,
        "iterations": 10,
        "batch_size": 8,
        "alpha": 1.0,
        "seed": 0,
        "target": "independent",
        "guidance": 2.0,
        "sample_steps": 100,
        "n_forget_samples": 8,
        "n_retain_per_class": 4,
        "ua": 100.0,
        "entropy": 1.5,
        "fid": 3.2,
        "retain_acc": 97.0,
        "fid_features": "classifier",
        "rte_s": 12.0,
        "peak_mem_mb": 800.0,
        "device": "cpu",
        "num_workers": 1,
        "base_model": "shipped",
        "study": "",
        "noise_forget": 0.0,
        "noise_retain": 0.0,
        "method_options_json": "{}",
        "base_ok": True,
        "setup_s": 0.0,
        "config_json": "{}",
    }
    row.update(extra)
    return row


def test_schema_has_the_documented_columns():
    required = (
        "run_id timestamp method dataset forget_class lam lr iterations batch_size alpha seed guidance "
        "sample_steps n_forget_samples ua entropy fid retain_acc rte_s peak_mem_mb num_workers model_path "
        "trial_id study score pareto"
    ).split()
    assert set(required) <= set(results.SCHEMA.names)


def test_write_and_read_back(tmp_path):
    results.write_row(str(tmp_path), make_row("a", 0))
    results.write_row(str(tmp_path), make_row("b", 1, score=0.7, pareto=True, trial_id="t1"))
    table = results.read_results(str(tmp_path))
    assert table.schema == results.schema()
    df = table.to_pandas().sort_values("run_id")
    assert list(df.run_id) == ["a", "b"]
    assert df.score.iloc[1] == 0.7 and bool(df.pareto.iloc[1]) is True


def test_rows_missing_a_column_or_with_extras_are_refused(tmp_path):
    bad = make_row()
    del bad["rte_s"]
    with pytest.raises(SafemaxError, match="missing \\['rte_s'\\]"):
        results.write_row(str(tmp_path), bad)
    with pytest.raises(SafemaxError, match="unknown \\['typo'\\]"):
        results.write_row(str(tmp_path), make_row(typo=1))
    assert results.read_results(str(tmp_path)).num_rows == 0  # nothing half-written


def test_rows_written_before_the_workload_columns_read_with_nulls(tmp_path):
    table = results.validate_row(make_row("old"))
    table = table.drop_columns([*results.ADDED_LATER, *(f.name for f in results.workload_fields())])
    (tmp_path / "runs").mkdir()
    pq.write_table(table, tmp_path / "runs" / "old.parquet")
    df = results.read_dataframe(str(tmp_path))
    assert df.run_id.tolist() == ["old"] and df.concept.isna().all() and df.forget_mse.isna().all()
    assert df.workload.isna().all()
    # A file that lacks a column older than those is still refused.
    pq.write_table(table.drop_columns(["rte_s"]), tmp_path / "runs" / "older.parquet")
    with pytest.raises(SafemaxError, match="older safemax_ray \\(no column rte_s\\)"):
        results.read_results(str(tmp_path))


def test_an_existing_run_is_never_overwritten(tmp_path):
    results.write_row(str(tmp_path), make_row("same", ua=10.0))
    with pytest.raises(SafemaxError, match="already exists"):
        results.write_row(str(tmp_path), make_row("same", ua=99.0))
    assert results.read_dataframe(str(tmp_path)).ua.tolist() == [10.0]


def test_a_second_run_of_a_config_gets_its_own_id_and_never_touches_the_first_ones_folder(tmp_path):
    from safemax_ray.config import UnlearnConfig
    from safemax_ray.drivers.unlearn import new_run_id
    from safemax_ray.storage import write_folder_atomic

    cfg = UnlearnConfig(forget_class=2)
    assert new_run_id(cfg) != new_run_id(cfg)  # the same second, the same config: two ids
    write_folder_atomic(tmp_path / "model", lambda tmp: (tmp / "weights").write_text("first"))
    with pytest.raises(SafemaxError, match="already exists"):
        write_folder_atomic(tmp_path / "model", lambda tmp: (tmp / "weights").write_text("second"))
    assert (tmp_path / "model" / "weights").read_text() == "first"


def test_a_crash_mid_write_leaves_no_row(tmp_path, monkeypatch):
    def exploding_fsync(fd):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "fsync", exploding_fsync)
    with pytest.raises(OSError):
        results.write_row(str(tmp_path), make_row("crash"))
    monkeypatch.undo()
    runs = tmp_path / layout.RUNS
    assert list(runs.iterdir()) == []  # the temporary file is gone too
    assert results.read_results(str(tmp_path)).num_rows == 0


def test_leftover_temporary_files_are_ignored_by_readers(tmp_path):
    results.write_row(str(tmp_path), make_row("ok"))
    (tmp_path / layout.RUNS / ".ok2.parquet.tmp123").write_bytes(b"PAR1 half a file")
    assert results.read_dataframe(str(tmp_path)).run_id.tolist() == ["ok"]


def test_pandas_pyarrow_and_duckdb_read_the_files(tmp_path):
    import duckdb  # the dev extra installs it

    for i in range(3):
        results.write_row(str(tmp_path), make_row(f"run{i}", i, fid=float(i)))
    pattern = str(tmp_path / layout.RUNS / "*.parquet")
    assert pq.read_table(str(tmp_path / layout.RUNS)).num_rows == 3
    assert len(pd.read_parquet(str(tmp_path / layout.RUNS))) == 3
    mean_fid = duckdb.sql(f"SELECT avg(fid) AS m, count(*) AS n FROM '{pattern}'").fetchall()[0]
    assert mean_fid == (1.0, 3)


def test_a_methods_option_lands_in_its_own_column_only():
    """SalUn's alpha is not SAFEMax's: each method's options have typed columns of their own (the bare
    lam/alpha/target are SAFEMax's), and every option is in the JSON too."""
    import json

    from safemax_ray.config import UnlearnConfig
    from safemax_ray.drivers.finish import build_row

    metrics = {"sample_steps": 10, "rte_s": 1.0, "peak_mem_mb": 1.0}
    salun = build_row(UnlearnConfig(method="salun", method_options={"alpha": 0.5}), metrics, "r1", None, None, "cpu")
    safemax = build_row(UnlearnConfig(method_options={"alpha": 2.0}), metrics, "r2", None, None, "cpu")
    assert salun["alpha"] is None and json.loads(salun["method_options_json"])["alpha"] == 0.5
    assert safemax["alpha"] == 2.0 and safemax["lam"] == 1.0
    assert salun["salun_alpha"] == 0.5 and "safemax_alpha" not in salun and safemax["safemax_alpha"] == 2.0
    assert "salun_alpha" not in safemax and salun["salun_mask_ratio"] == 0.5
    types = {f.name: f.type for f in results.option_fields()}
    assert types["salun_alpha"] == pa.float64() and types["safemax_target"] == pa.string()
    assert types["erasediff_dynamic"] == pa.bool_() and types["sa_fisher_samples_per_class"] == pa.int64()


def test_a_folder_in_the_earlier_layout_is_moved_once_and_its_models_still_found(tmp_path, caplog):
    """Before this layout, models/, cache/, ray/, studies/, report/ and attacks/ sat where dataset readers
    look: the first driver on the folder renames them, rows keep naming models/ and are still served."""
    row = make_row("old")
    model = tmp_path / "models" / "old"
    row["model_path"] = str(model)
    results.write_row(str(tmp_path), row)
    (model / "unet").mkdir(parents=True)
    (model / "unet" / "config.json").write_text("{}")
    for name in ("cache", "ray", "studies", "report"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "something.json").write_text("{}")
    (tmp_path / "attacks").mkdir()
    pq.write_table(pa.table({"attack_id": ["a"]}), tmp_path / "attacks" / "a.parquet")
    with pytest.raises(pa.ArrowInvalid):  # e.g. the cache's JSON is not Parquet
        pd.read_parquet(tmp_path)
    with caplog.at_level("WARNING"):
        moved = layout.move_earlier_layout(str(tmp_path))
    assert len(moved) == 6 and "moved to this version's layout" in caplog.text
    assert list(pd.read_parquet(tmp_path).run_id) == ["old"]
    assert list(pd.read_parquet(layout.attacks_dir(str(tmp_path))).attack_id) == ["a"]
    assert layout.stored_path(str(tmp_path), str(model)) == str(tmp_path / "_models" / "old")
    grid = str(model / "samples.png")  # a row's grid, beside its model
    assert layout.stored_path(str(tmp_path), grid) == str(tmp_path / "_models" / "old" / "samples.png")
    assert layout.move_earlier_layout(str(tmp_path)) == []  # once
