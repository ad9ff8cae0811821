"""Settings: YAML loading, overrides, and refusal of bad values by name."""

import pytest

from safemax_ray.config import UnlearnConfig, load_unlearn_config
from safemax_ray.errors import SafemaxError


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lam: 2.5\niterations: 50\neval:\n  guidance: 1.0\nray:\n  num_workers: 2\n")
    cfg = load_unlearn_config(path, lr=3e-4, **{"ray.num_workers": None, "eval.sample_steps": 20})
    assert (cfg.lam, cfg.iterations, cfg.lr) == (2.5, 50, 3e-4)
    assert cfg.eval.guidance == 1.0 and cfg.eval.sample_steps == 20
    assert cfg.ray.num_workers == 2  # None means "not given": the YAML value stays


@pytest.mark.parametrize(
    "text, message",
    [
        ("lamda: 1.0\n", "unknown key.*'lamda'"),
        ("eval:\n  guidanse: 2\n", r"eval: unknown key.*'guidanse'"),
        ("iterations: ten\n", r"iterations: expected a whole number"),
        ("lam: [1, 2\n", "not valid YAML"),
        ("- 1\n- 2\n", "mapping"),
    ],
)
def test_bad_yaml_is_refused_by_name(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SafemaxError, match=message):
        load_unlearn_config(path)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"lam": -1.0}, "lam"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"iterations": 0}, "iterations must be >= 1"),
        ({"dataset": "mnist"}, "dataset must be one of"),
        ({"dataset": "cifar10"}, "--data-root"),
        ({"target": "x_T"}, "target must be one of"),
        ({"batch_size": 5, "ray.num_workers": 2}, "divisible"),
    ],
)
def test_validation_names_the_problem(changes, message):
    cfg = load_unlearn_config(None, **changes)
    with pytest.raises(SafemaxError, match=message):
        cfg.validate()


def test_run_key_is_deterministic_and_tracks_hyperparameters():
    a, b = UnlearnConfig(), UnlearnConfig()
    assert a.run_key() == b.run_key()
    b.lam = 2.0
    assert a.run_key() != b.run_key()
    c = UnlearnConfig(results_dir="elsewhere")  # where results go does not change the computation
    assert a.run_key() == c.run_key()
    assert a.run_key().startswith("safemax-digits-c0-")
