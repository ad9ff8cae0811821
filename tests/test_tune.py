"""The Tune driver on a tiny model and budget: Optuna trials, Parquet rows, the best config."""

import signal

import pytest
import yaml

from safemax_ray.config import load_unlearn_config
from safemax_ray.drivers.tune import load_tune_config, max_concurrent, searcher, tune
from safemax_ray.errors import SafemaxError
from safemax_ray.results.parquet import read_dataframe


def tiny_tune(tiny_assets, tmp_path, **top):
    model, classifier = tiny_assets
    data = {
        "study": "tiny",
        "forget_class": 4,
        "results_dir": str(tmp_path),
        "search": {
            "method.lam": {"low": 0.0, "high": 2.0},
            "lr": {"low": 1e-4, "high": 1e-2, "log": True},
            "iterations": {"low": 2, "high": 4, "step": 2},
        },
        "points_to_evaluate": [{"method.lam": 1.0, "lr": 1e-3, "iterations": 2}],
        "budget": {"num_samples": 2, "workers_per_trial": 1, "cpus_per_worker": 1.0},
        "run": {
            "model": model,
            "classifier": classifier,
            "batch_size": 8,
            "eval": {"n_forget_samples": 8, "n_retain_per_class": 2},
            "ray": {"checkpoint_every": 2},
        },
    }
    data.update(top)
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_pareto_search_tries_the_given_point_first_and_keeps_three_objectives(tiny_assets, tmp_path):
    """The searcher a study runs, driven here by hand as Tune drives it (suggest, then the result)."""
    search = searcher(load_tune_config(tiny_tune(tiny_assets, tmp_path, objective="pareto")))
    first = search.suggest("t1")
    assert first == {"method.lam": 1.0, "lr": 1e-3, "iterations": 2}  # the paper-default point
    search.on_trial_complete("t1", {**first, "ua": 50.0, "entropy": 0.5, "fid": 2.0})
    second = search.suggest("t2")
    assert 0 <= second["method.lam"] <= 2 and 1e-4 <= second["lr"] <= 1e-2 and second["iterations"] in (2, 4)
    search.on_trial_complete("t2", {**second, "ua": 60.0, "entropy": 0.4, "fid": 1.0})
    study = search._ot_study  # Ray's OptunaSearch has no public handle on its Optuna study
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE", "MINIMIZE"]
    assert len(study.best_trials) == 2  # neither dominates the other: both are on the front
    scored = searcher(load_tune_config(tiny_tune(tiny_assets, tmp_path, objective="score")))
    scored.suggest("t1")
    assert [d.name for d in scored._ot_study.directions] == ["MAXIMIZE"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"objective": "fastest"}, "objective must be"),
        ({"budgett": {}}, "unknown key.*'budgett'"),
        ({"search": {"lr": {"low": 0.0, "high": 1.0, "log": True}}}, "log-scale range needs low > 0"),
        ({"points_to_evaluate": [{"method.lam": 1.0}]}, "must set exactly"),
        ({"run": {"lr": 2.0}}, "run.lr is set by the search"),
        ({"search": {"lam": {"low": 0.0, "high": 1.0}}}, "search.lam cannot be searched; searchable: lr, .*method.lam"),
        ({"search": {"method.null_drop": {"low": 0.0, "high": 0.5}}}, "search.method.null_drop cannot be searched"),
        ({"search": {"method.target": {"choices": []}}}, "non-empty choices"),
        ({"asha": {"enabled": True}, "objective": "pareto"}, "ASHA"),
        ({"screen": {"rejudge": 1}}, "screen.rejudge must be between 2"),
        ({"screen": {"rejudge": 3}}, r"budget.num_samples \(2\)"),
        ({"screen": {"sample_steps": 0, "rejudge": 2}}, "eval.sample_steps must be >= 1"),
        ({"screen": {"rejudge": 2}, "objective": "pareto"}, "screen: needs objective: score"),
    ],
)
def test_bad_tune_config_is_refused_by_name(tiny_assets, tmp_path, change, message):
    with pytest.raises(SafemaxError, match=message):
        load_tune_config(tiny_tune(tiny_assets, tmp_path, **change))


def test_concurrency_follows_resources(tiny_assets, tmp_path):
    cfg = load_tune_config(tiny_tune(tiny_assets, tmp_path))
    cfg.budget.workers_per_trial, cfg.budget.num_samples = 2, 8
    assert max_concurrent(cfg, {"CPU": 4}, use_gpu=False) == 1  # 1 + 2 workers = 3 CPUs a trial
    assert max_concurrent(cfg, {"CPU": 12}, use_gpu=False) == 4
    assert max_concurrent(cfg, {"CPU": 64, "GPU": 4}, use_gpu=True) == 2  # 2 GPUs a trial
    cfg.budget.max_concurrent = 3
    assert max_concurrent(cfg, {"CPU": 4}, use_gpu=False) == 3


def test_shipped_tune_configs_load():
    from pathlib import Path

    root = Path(__file__).parent.parent / "tune_configs"
    digits = load_tune_config(root / "digits.yaml")
    assert digits.budget.num_samples >= 8 and digits.budget.workers_per_trial == 2
    cifar = load_tune_config(root / "cifar10.yaml")
    assert cifar.trial_config(cifar.points_to_evaluate[0]).eval.n_forget_samples == 500
    assert cifar.points_to_evaluate[0] == {"method.lam": 1.0, "lr": 1e-4, "iterations": 1000}


def test_asha_stops_the_weaker_trial_and_the_screen_is_checked_in_full(ray_session, tmp_path):
    """The whole study on Ray: Optuna proposes, each trial runs on its Ray Train worker, ASHA decides,
    the finished trials (judged by the 4-step screen) are judged again with the full 10-step evaluation,
    become rows, and the best a usable config. On the shipped digits model, 4 steps at lr 3e-3 already
    move class 3 towards noise (probe score 0.65) while lr 1e-9 leaves the model as it was (4e-5): ASHA
    keeps the first trial, stops the second at step 4 and keeps the third (lr 2e-3, above the median)."""
    path = tmp_path / "tune.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "study": "asha",
                "forget_class": 3,
                "results_dir": str(tmp_path),
                "search": {"lr": {"choices": [3e-3, 1e-9, 2e-3]}, "method.lam": {"low": 0.0, "high": 2.0}},
                "points_to_evaluate": [
                    {"lr": 3e-3, "method.lam": 0.5},
                    {"lr": 1e-9, "method.lam": 1.0},
                    {"lr": 2e-3, "method.lam": 1.5},
                ],
                "budget": {"num_samples": 3, "max_concurrent": 1, "workers_per_trial": 1},
                "asha": {"enabled": True, "grace_period": 4, "reduction_factor": 2.0, "probe_samples": 8},
                "screen": {"sample_steps": 4, "n_forget_samples": 4, "rejudge": 2},
                "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
                "run": {
                    "iterations": 8,
                    "batch_size": 16,
                    "eval": {"n_forget_samples": 8, "n_retain_per_class": 2, "sample_steps": 10},
                    "ray": {"checkpoint_every": 4, "storage_path": str(tmp_path / "ray-storage")},
                },
            }
        )
    )
    ctrl_c = signal.getsignal(signal.SIGINT)
    result = tune(load_tune_config(path))
    assert signal.getsignal(signal.SIGINT) is ctrl_c  # Tune's own handler is gone with its study
    assert list((tmp_path / "ray-storage").glob("asha-*/checkpoint_*")) and not (tmp_path / "_ray").exists()
    df = read_dataframe(str(tmp_path)).sort_values("lr")
    assert df.lr.tolist() == [2e-3, 3e-3] and df.lam.tolist() == [1.5, 0.5] and (df.iterations == 8).all()
    assert df.study.eq("asha").all() and df.trial_id.notna().all()
    assert list(result.stopped.values()) == ["stopped early at step 4"]
    # Both finished trials were judged again in full: their rows say so, the best is chosen on that.
    assert (df.sample_steps == 10).all() and (df.n_forget_samples == 8).all()
    assert abs(result.rank_agreement) == pytest.approx(1.0)  # two trials: ranked right (1) or wrong (-1)
    assert result.best_metrics["score"] == pytest.approx(df.score.max())  # objective: score
    best_row = df[df.score == df.score.max()].iloc[0]
    assert result.best_params == {"lr": best_row.lr, "method.lam": best_row.lam}
    best = load_unlearn_config(result.best_config_path)
    assert best.forget_class == 3 and best.lr == best_row.lr and best.eval.sample_steps == 10
    _the_study_is_tracked_as_a_parent_with_a_child_per_trial(f"sqlite:///{tmp_path}/mlflow.db", df, result)


def _the_study_is_tracked_as_a_parent_with_a_child_per_trial(uri, df, result):
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["asha"])
    parent = runs[runs["tags.mlflow.parentRunId"].isna()]
    children = runs[runs["tags.mlflow.parentRunId"].notna()].set_index("tags.mlflow.runName")
    assert len(parent) == 1 and (children["tags.mlflow.parentRunId"] == parent.run_id.iloc[0]).all()
    assert parent["metrics.score"].iloc[0] == pytest.approx(result.best_metrics["score"])
    assert sorted(children.status) == ["FINISHED", "FINISHED", "KILLED"]  # ASHA stopped one
    finished = children.loc[df.run_id]  # each row's trial, closed with its full judgement
    assert list(finished["metrics.score"]) == pytest.approx(list(df.score))
    assert list(finished["params.lr"].astype(float)) == list(df.lr)
    for run_id in children.run_id:  # every trial's loss curve, the stopped one's too
        assert len(MlflowClient(uri).get_metric_history(run_id, "loss")) >= 4
    for run_id in finished.run_id:  # and the finished trials' sample grids and rows
        files = {a.path for a in MlflowClient(uri).list_artifacts(run_id)}
        assert {"samples.png", "forget.png"} <= files and len(files) == 3


def test_without_a_screen_trials_are_judged_with_the_run_settings(tiny_assets, tmp_path):
    plain = load_tune_config(tiny_tune(tiny_assets, tmp_path))
    point = plain.first_point()
    assert plain.trial_config(point, screened=True) == plain.trial_config(point) and not plain.planned_rejudges()
    screened = load_tune_config(tiny_tune(tiny_assets, tmp_path, screen={"sample_steps": 3, "rejudge": 2}))
    trial = screened.trial_config(point, screened=True)
    assert trial.eval.sample_steps == 3 and trial.eval.n_forget_samples == 8  # only what the screen sets
    assert screened.trial_config(point).eval.sample_steps is None and len(screened.planned_rejudges()) == 2


@pytest.mark.parametrize("method", ["safemax", "salun", "sa", "erasediff", "sfron"])
def test_every_method_has_a_default_search_that_starts_at_its_own_defaults(tiny_assets, tmp_path, method):
    from safemax_ray.methods import get_method

    path = tiny_tune(tiny_assets, tmp_path, search=None, points_to_evaluate=None)
    cfg = load_tune_config(path, **{"run.method": method})
    cls = get_method(method)
    assert set(cfg.search) == {"lr", "iterations", *(f"method.{k}" for k in cls.SEARCH_SPACE)}
    (point,) = cfg.points_to_evaluate
    assert point["lr"] == cls.DEFAULT_LR and point["iterations"] == 200
    for name, value in point.items():  # the defaults lie inside the ranges searched
        spec = cfg.search[name]
        assert spec.low <= value <= spec.high, (name, value)
    assert cfg.trial_config(point).method == method


def test_a_trials_checkpoint_keeps_its_object_store_scheme():
    """Ray's Checkpoint.path drops the scheme ('bucket/...'); the driver must find an s3:// or gs://
    trial checkpoint again (scripts/s3_check.py runs a study on an S3 server)."""
    from types import SimpleNamespace

    from safemax_ray.drivers.tune import _uri

    def checkpoint(kind: str, path: str):
        return SimpleNamespace(filesystem=SimpleNamespace(type_name=kind), path=path)

    assert _uri(checkpoint("s3", "bucket/study/checkpoint_1")) == "s3://bucket/study/checkpoint_1"
    assert _uri(checkpoint("gcs", "bucket/study/checkpoint_1")) == "gs://bucket/study/checkpoint_1"
    assert _uri(checkpoint("local", "/tmp/study/checkpoint_1")) == "/tmp/study/checkpoint_1"
