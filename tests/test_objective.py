"""The search objectives: the scalar score and the Pareto front."""

import math

import pytest

from safemax_ray.core.objective import PARETO_OBJECTIVES, pareto_mask, score


def test_perfect_run_scores_two_and_damage_costs():
    perfect = {
        "ua": 100.0,
        "entropy": math.log(10),
        "fid": 5.0,
        "base_fid": 5.0,
        "retain_acc": 99.0,
        "base_retain_acc": 98.0,
    }
    assert score(perfect, 10) == pytest.approx(2.0)
    damaged = dict(perfect, fid=7.5, retain_acc=88.0)
    assert score(damaged, 10) == pytest.approx(2.0 - 0.5 - 0.10)


def test_no_forgetting_scores_low():
    kept = {"ua": 0.0, "entropy": 0.0, "fid": 5.0, "base_fid": 5.0, "retain_acc": 98.0, "base_retain_acc": 98.0}
    assert score(kept, 10) == 0.0


def test_without_base_figures_only_forgetting_counts():
    assert score({"ua": 50.0, "entropy": math.log(4), "fid": 100.0, "retain_acc": 0.0}, 4) == pytest.approx(1.5)


def test_pareto_mask():
    modes = [m for _, m in PARETO_OBJECTIVES]
    points = [
        (100, 1.0, 5.0),  # front
        (100, 1.5, 6.0),  # front: more entropy, worse FID
        (90, 0.9, 6.0),  # dominated by the first
        (100, 1.0, 5.0),  # ties with the first: neither dominates
    ]
    assert pareto_mask(points, modes) == [True, True, False, True]
