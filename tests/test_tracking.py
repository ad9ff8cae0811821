"""MLflow tracking: a run's parameters, loss by step, figures and artifacts in a real (SQLite) store, read
back with mlflow.search_runs; a store that is down costs one warning and nothing else."""

import json
import logging
import os

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from safemax_ray.tracking import ENV, Tracker, tracking_uri


def _runs(uri: str, experiment: str) -> pd.DataFrame:
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[experiment])


def test_a_tracker_logs_params_steps_figures_and_files(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    parent = Tracker.start(uri, "study", "the-study", {"objective": "score"})
    child = Tracker.start(uri, "study", "trial-1", {"lr": 1e-3, "method.lam": 1.0}, parent=parent)
    for step in (10, 20):
        child.log_step(step, {"loss": 1.0 / step, "loss_forget": 0.5})
    grid = tmp_path / "samples.png"
    grid.write_bytes(b"\x89PNG not really")
    child.finish({"ua": 96.0, "fid": 1.1, "base_ok": True, "device": "cpu"}, (str(grid), str(tmp_path / "gone.png")))
    parent.end_children("KILLED")  # the child already ended: left as it is
    parent.finish({"score": 0.5})
    runs = _runs(uri, "study").set_index("tags.mlflow.runName")
    assert set(runs.index) == {"the-study", "trial-1"}
    trial = runs.loc["trial-1"]
    assert trial.status == "FINISHED" and trial["tags.mlflow.parentRunId"] == parent.run_id
    assert trial["params.lr"] == "0.001" and trial["params.method.lam"] == "1.0"
    assert trial["metrics.ua"] == 96.0 and "metrics.base_ok" not in runs.columns  # numbers only
    history = MlflowClient(uri).get_metric_history(child.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(10, 0.1), (20, 0.05)]
    assert [a.path for a in MlflowClient(uri).list_artifacts(child.run_id)] == ["samples.png"]
    # Artifacts beside the store's file, not in ./mlruns of whichever process logged them.
    assert MlflowClient(uri).get_experiment_by_name("study").artifact_location == (tmp_path / "mlruns").as_uri()


def test_children_left_running_are_ended(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    parent = Tracker.start(uri, "study", "the-study", {})
    stopped = Tracker.start(uri, "study", "stopped-early", {}, parent=parent)
    parent.end_children("KILLED")
    assert MlflowClient(uri).get_run(stopped.run_id).info.status == "KILLED"


def test_a_dead_store_costs_one_warning_and_nothing_else(caplog):
    dead = "http://127.0.0.1:9/dead-store-test"
    with caplog.at_level(logging.WARNING, logger="safemax_ray.tracking"):
        tracker = Tracker.start(dead, "study", "run", {"lr": 1})
        tracker.log_step(1, {"loss": 1.0})
        tracker.finish({"ua": 1.0})
        with pytest.raises(ValueError), tracker.failing_on_error():
            raise ValueError("the run's own error goes on up")
        again = Tracker.start(dead, "study", "run-2", {})
    assert not tracker and not again
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and warnings[0].startswith(f"MLflow tracking at {dead} failed, the run goes on")


def test_the_uri_comes_from_the_setting_else_the_environment(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert tracking_uri(None) is None and not Tracker.start(None, "s", "r", {})
    monkeypatch.setenv(ENV, "sqlite:///from-env.db")
    assert tracking_uri(None) == f"sqlite:///{os.path.abspath('from-env.db')}"
    assert tracking_uri("http://set:5000") == "http://set:5000"
    # A SQLite file named relative to here is made absolute (Ray workers run in other folders).
    assert tracking_uri("sqlite:///runs/mlflow.db") == f"sqlite:///{os.path.abspath('runs/mlflow.db')}"
    assert tracking_uri("sqlite:////abs/mlflow.db") == "sqlite:////abs/mlflow.db"


def test_an_unlearn_run_is_one_mlflow_run_with_its_curve_figures_and_files(finished_run):
    """The shared tiny run (conftest.finished_run) was tracked: its parameters say what it computed, rank
    0 logged the loss every stats interval, the row's figures and its grids and row file are there."""
    uri = f"sqlite:///{json.loads(finished_run.row['config_json'])['results_dir']}-mlflow.db"
    runs = _runs(uri, "safemax_ray")
    assert len(runs) == 1
    row = runs.iloc[0]
    assert row["tags.mlflow.runName"] == finished_run.run_id and row.status == "FINISHED"
    assert row["params.run_key"] == finished_run.run_key and row["params.method"] == "safemax"
    assert row["params.iterations"] == "8" and row["params.method.lam"] == "1.0"
    assert row["metrics.ua"] == pytest.approx(finished_run.metrics["ua"])
    assert row["metrics.fid"] == pytest.approx(finished_run.row["fid"])
    history = MlflowClient(uri).get_metric_history(row.run_id, "loss")
    assert [m.step for m in history] == list(range(1, 9))  # on a CPU the loss is read every step
    files = {a.path for a in MlflowClient(uri).list_artifacts(row.run_id)}
    assert files == {"samples.png", "forget.png", f"{finished_run.run_id}.parquet"}


def test_an_untracked_run_does_not_import_mlflow():
    """Every Train worker logs its steps through a tracker: untracked, that must not cost it MLflow's
    import (0.6 s of each worker's start, measured)."""
    import subprocess
    import sys

    script = (
        "import sys; from safemax_ray.tracking import Tracker; "
        "t = Tracker.start(None, 'e', 'run', {'lr': 1}); t.log_step(1, {'loss': 0.5}); "
        "t.finish({'ua': 90.0}); t.failed('x'); t.end_children('KILLED'); print('mlflow' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False"]
