"""Relearning attacks and the trajectory probe: the engine on its own, and `safemax-ray attack` on a run."""

import json
import pathlib

import pandas as pd
import pytest
import torch

from safemax_ray.config import UnlearnConfig
from safemax_ray.core.data import load_digits
from safemax_ray.core.models import load_model
from safemax_ray.core.noise import calibrate
from safemax_ray.engine import attack as engine
from safemax_ray.engine.evaluate import load_eval_classifier
from safemax_ray.errors import SafemaxError
from safemax_ray.results import layout

SETTINGS = engine.AttackSettings(n_samples=4, sample_steps=3, batch_size=4)


def test_attack_pool_is_k_forget_images_or_the_retained_data():
    data = load_digits()
    pool = engine.attack_pool(data, 3, 5, seed=0)
    assert len(pool) == 5 and (data.labels[pool] == 3).all()
    assert torch.equal(pool, engine.attack_pool(data, 3, 5, seed=0))  # the same images every time
    retained = engine.attack_pool(data, 3, 0, seed=0)
    assert (data.labels[retained] != 3).all() and len(retained) == int((data.labels != 3).sum())


def test_relearning_fine_tunes_and_reports_each_step_count(tiny_assets):
    data = load_digits()
    cfg = UnlearnConfig(forget_class=3, classifier=tiny_assets[1])
    judge = engine.Judge(load_eval_classifier(cfg, 10), calibrate(data.images), 3)
    model = load_model(tiny_assets[0])
    before = [p.detach().clone() for p in model.unet.parameters()]
    rows = engine.relearn(model, data, judge, 5, [0, 3], SETTINGS)
    assert [r["step"] for r in rows] == [0, 3]
    assert all(0 <= r["forget_acc"] <= 100 and r["forget_acc"] + r["ua"] == pytest.approx(100) for r in rows)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.unet.parameters(), strict=True))
    assert engine.steps_to_recover([{"step": 0, "forget_acc": 10.0}, {"step": 50, "forget_acc": 60.0}]) == 50
    assert engine.steps_to_recover([{"step": 0, "forget_acc": 10.0}]) is None
    probe = engine.trajectory_probe(model, data, judge, [0.25, 0.75], SETTINGS)
    assert [r["t0"] for r in probe] == [6, 19]  # of T = 25


def test_attack_command_stores_curves_for_the_run_and_its_base(finished_run, capsys):
    from safemax_ray.cli import main
    from safemax_ray.results.parquet import read_attacks
    from safemax_ray.results.report import make_report

    run = finished_run
    results = json.loads(run.row["config_json"])["results_dir"]  # the shared run's own results folder
    flags = ["--shots", "1", "--steps", "0", "2", "--n-samples", "4", "--sample-steps", "3"]
    assert main(["attack", run.run_id, "--results-dir", results, *flags]) == 0
    out = capsys.readouterr().out
    assert "steps to > 50%" in out and "trajectory probe" in out
    rows = read_attacks(results)
    relearn = rows[rows.kind == "relearn"]
    settings = set(zip(relearn.model, relearn.shots, strict=True))
    assert settings == {("unlearned", 1), ("unlearned", 0), ("base", 1), ("base", 0)}
    assert sorted(relearn.step.unique()) == [0, 2] and (relearn.run_id == run.run_id).all()
    assert len(rows[rows.kind == "trajectory"]) == 6  # three t0 for each model
    report = make_report(results)
    assert "recovery.png" in {p.name for p in report.files}
    the_folder_reads_as_the_run_rows(results, [run.run_id])
    assert set(pd.read_parquet(layout.attacks_dir(results)).run_id) == {run.run_id}  # the attack rows: beside
    with pytest.raises(SafemaxError, match="neither a model folder nor a run id"):
        from safemax_ray.drivers.attack import attack

        attack("no-such-run", results_dir=results)


def the_folder_reads_as_the_run_rows(results: str, run_ids: list[str], ray_data: bool = True) -> None:
    """pandas, DuckDB and Ray Data read the results folder, with its models, caches, Ray storage and
    report, as exactly its run rows; the attack rows are their own dataset beside it. (Ray Data finds
    files as pandas does, through Arrow, and costs seconds to start: `ray_data=False` skips it.)"""
    import duckdb
    import ray.data

    assert sorted(pd.read_parquet(results).run_id) == sorted(run_ids)
    globbed = duckdb.sql(f"select run_id from '{results}/**/*.parquet'").fetchall()
    assert sorted(r[0] for r in globbed) == sorted(run_ids)
    if ray_data:
        assert sorted(ray.data.read_parquet(results).to_pandas().run_id) == sorted(run_ids)
    attacks = layout.attacks_dir(results)
    assert not pathlib.Path(attacks).exists() or set(pd.read_parquet(attacks).run_id) <= set(run_ids)
