"""--plan: the runs of a comparison, batch or search and their projected GPU time, before anything runs."""

import pytest

from safemax_ray.cli import main
from safemax_ray.config import load_unlearn_config
from safemax_ray.drivers.compare import plan_comparison
from safemax_ray.drivers.plan import FORWARD_PASS_MS, TRAIN_PASS_MS, plan_runs

PAPER = "tune_configs/paper-cifar10.yaml"


def test_the_paper_protocol_plan_counts_every_row(monkeypatch):
    monkeypatch.chdir(__import__("pathlib").Path(__file__).parent.parent)
    configs = plan_comparison(load_unlearn_config(PAPER), list(range(10)), ["safemax", "salun", "sa"])
    plan = plan_runs(configs, gpus=8)
    assert len(plan.runs) == 30
    safemax, salun, sa = plan.runs[0], plan.runs[10], plan.runs[20]
    assert safemax.train_passes == (2 * 128 * 1000, 0) and salun.train_passes == (2 * 128 * 1000, 128 * 1000)
    assert sa.train_passes == (2 * 128 * 20000, 0)
    assert safemax.eval_passes == (500 + 9 * 5000) * 1000 * 2  # guided: two passes per image and step
    assert salun.setup_passes == (2 * 5000, 0)  # the saliency over the class's 5000 images
    assert sa.setup_passes == (5000 * 1000, 5000 * 1000 * 2) and sa.setup_key  # Fisher: 500 a class, all t
    # SA's set-up is charged once for the ten classes; the base model's samples of a class once for each
    # sample count it is judged at (500 forgotten, 5000 retained): 55,000 images, not 10 x 45,500.
    shared = plan.shared()
    assert len(shared) == 1 + 20
    base = sum({key: rows for r in plan.runs for key, rows in r.base.items()}.values())
    assert base == 10 * (500 + 5000) * 1000 * 2
    assert plan.gpu_hours() <= 46
    expected_ms = sum(r.run_ms for r in plan.runs) + sum(shared.values()) + 10 * 2 * 5000 * TRAIN_PASS_MS
    assert plan.gpu_hours() == pytest.approx(expected_ms / 3.6e6)
    assert plan.gpu_hours() / 8 <= plan.wall_hours() <= plan.gpu_hours()
    assert safemax.run_ms == pytest.approx(256_000 * TRAIN_PASS_MS + safemax.eval_passes * FORWARD_PASS_MS)


def test_compare_batch_and_tune_print_the_plan_and_stop(monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("--plan started Ray")

    monkeypatch.setattr("safemax_ray.ray.cluster.ensure_ray", refuse)
    monkeypatch.chdir(__import__("pathlib").Path(__file__).parent.parent)
    assert main(["compare", "--config", PAPER, "--classes", "0-9", "--plan", "--gpus", "8"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "GPU-hours" in out and "on 8 GPU(s)" in out and "goal: <= 4 h on 8 GPUs" in out
    assert "data /data/cifar10 is not on this machine" in out
    assert main(["batch", "--classes", "0-2", "--plan"]) == 0
    assert "safemax 3" in " ".join(capsys.readouterr().out.split())
    assert main(["tune", "--config", "tune_configs/digits.yaml", "--plan", "--gpus", "2"]) == 0
    assert "on 2 GPU(s)" in " ".join(capsys.readouterr().out.split())
    assert main(["compare", "--classes", "0", "--plan", "--gpus", "0"]) == 2


def test_a_screened_study_plans_its_screen_and_its_rejudged_trials(monkeypatch, capsys):
    monkeypatch.chdir(__import__("pathlib").Path(__file__).parent.parent)
    from safemax_ray.drivers.tune import load_tune_config

    cfg = load_tune_config("tune_configs/cifar10.yaml")
    screened = plan_runs(cfg.planned_trials(), 8, cfg.planned_rejudges())
    full = plan_runs(cfg.planned_trials(screened=False), 8)
    (trial, *_), rejudges = screened.runs, [r for r in screened.runs if r.method == "re-judge"]
    assert trial.eval_passes == (200 + 9 * 500) * 100 * 2 and len(rejudges) == cfg.screen.rejudge == 4
    assert rejudges[0].eval_passes == full.runs[0].eval_passes and rejudges[0].train_passes == (0, 0)
    assert screened.gpu_hours() < full.gpu_hours() / 3
    assert main(["tune", "--config", "tune_configs/cifar10.yaml", "--plan", "--gpus", "8"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "re-judge 4" in out and f"without the screen: {full.gpu_hours():.2f} GPU-hours" in out
