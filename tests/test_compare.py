"""compare: the paper's methods on the same classes through the batch machinery, then the report with
cost ratios to SAFEMax and the forget-samples figure."""

import pytest

from safemax_ray.cli import parse_options
from safemax_ray.config import EvalConfig, UnlearnConfig
from safemax_ray.drivers.compare import compare, plan_comparison
from safemax_ray.errors import SafemaxError


def test_plan_gives_sa_twenty_times_the_iterations_and_each_method_its_options():
    configs = plan_comparison(UnlearnConfig(iterations=10), [0, 3], ["safemax", "sa"], {"sa": {"gamma": 0.5}})
    assert [(c.method, c.forget_class, c.iterations) for c in configs] == [
        ("safemax", 0, 10),
        ("safemax", 3, 10),
        ("sa", 0, 200),
        ("sa", 3, 200),
    ]
    assert configs[2].options().gamma == 0.5 and configs[0].method_options == {}
    with pytest.raises(SafemaxError, match="options given for salun"):
        plan_comparison(UnlearnConfig(), [0], ["safemax"], {"salun": {"alpha": 1.0}})
    with pytest.raises(SafemaxError, match="unknown unlearning method 'esd'"):
        plan_comparison(UnlearnConfig(), [0], ["safemax", "esd"])


def test_options_flag_parses_method_dot_option_pairs():
    assert parse_options(["sa.fisher_samples_per_class=50", "salun.mask_ratio=0.3"]) == {
        "sa": {"fisher_samples_per_class": 50},
        "salun": {"mask_ratio": 0.3},
    }
    with pytest.raises(SafemaxError, match="METHOD.OPTION=VALUE"):
        parse_options(["gamma=1"])


def test_compare_runs_every_method_and_reports_ratios_and_figure(tiny_assets, ray_session, tmp_path):
    model, classifier = tiny_assets
    base = UnlearnConfig(
        model=model,
        classifier=classifier,
        iterations=2,
        batch_size=8,
        results_dir=str(tmp_path),
        eval=EvalConfig(n_forget_samples=4, n_retain_per_class=2, sample_steps=3),
    )
    options = {"sa": {"fisher_samples_per_class": 2, "fisher_timesteps": 3}}
    result = compare(base, [1], ["safemax", "salun", "sa"], options)
    assert len(result.batch.done) == 3 and not result.batch.failed
    rows = {row["method"]: row for row in result.batch.done}
    assert rows["sa"]["iterations"] == 40 and rows["salun"]["setup_s"] > 0 and rows["sa"]["setup_s"] > 0
    ratios = result.report.tables["ratios"]
    assert ratios.loc["safemax", "RTE / safemax"] == pytest.approx(1.0)
    assert set(ratios.index) == {"safemax", "salun", "sa"}
    names = {p.name for p in result.report.files}
    assert {"ratios.md", "forget_samples.png", "quality.md", "cost.md"} <= names
    again = compare(base, [1], ["safemax", "salun", "sa"], options)  # everything is stored: nothing reruns
    assert not again.batch.done and len(again.batch.skipped) == 3
