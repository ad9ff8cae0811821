"""Settings: YAML loading, overrides, method options, refusal of bad values by name, and run keys."""

import shutil

import pytest

from safemax_ray.config import UnlearnConfig, load_unlearn_config
from safemax_ray.errors import SafemaxError
from safemax_ray.identity import run_key


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("method_options: {lam: 2.5}\niterations: 50\neval:\n  guidance: 1.0\nray:\n  num_workers: 2\n")
    cfg = load_unlearn_config(
        path, lr=3e-4, **{"ray.num_workers": None, "eval.sample_steps": 20, "method_options.alpha": 0.5}
    )
    assert (cfg.options().lam, cfg.options().alpha, cfg.iterations, cfg.lr) == (2.5, 0.5, 50, 3e-4)
    assert cfg.options().target == "independent"  # the method's default fills what is not given
    assert cfg.eval.guidance == 1.0 and cfg.eval.sample_steps == 20
    assert cfg.ray.num_workers == 2  # None means "not given": the YAML value stays


@pytest.mark.parametrize(
    "text, message",
    [
        ("lr_rate: 1.0\n", "unknown key.*'lr_rate'"),
        ("lam: 1.0\n", "lam belong to the method now: put them under method_options"),
        ("eval:\n  guidanse: 2\n", r"eval: unknown key.*'guidanse'"),
        ("iterations: ten\n", r"iterations: expected a whole number"),
        ("lr: [1, 2\n", "not valid YAML"),
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
        ({"method_options.lam": -1.0}, "lam"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"iterations": 0}, "iterations must be >= 1"),
        ({"dataset": "mnist"}, "dataset must be one of"),
        ({"dataset": "cifar10"}, "--data-root"),
        ({"method_options.target": "x_T"}, "target must be one of"),
        ({"method_options.gamma": 1.0}, "unknown key.*'gamma'"),
        ({"method": "forgetful"}, "unknown unlearning method 'forgetful'"),
        ({"batch_size": 5, "ray.num_workers": 2}, "divisible"),
        ({"eval.base_min_acc": 120.0}, "base_min_acc"),
    ],
)
def test_validation_names_the_problem(changes, message):
    cfg = load_unlearn_config(None, **changes)
    with pytest.raises(SafemaxError, match=message):
        cfg.validate()


def test_run_key_tracks_everything_that_changes_a_result(tiny_assets, tmp_path):
    model, classifier = tiny_assets
    a = UnlearnConfig(model=model, classifier=classifier)
    assert run_key(a) == run_key(UnlearnConfig(model=model, classifier=classifier))
    assert run_key(a).startswith("safemax-digits-c0-")
    changed = [
        UnlearnConfig(model=model, classifier=classifier, method_options={"lam": 2.0}),
        UnlearnConfig(model=model, classifier=None),  # the shipped classifier: other content
        UnlearnConfig(model=model, classifier=classifier, data_root="/data/other"),
        UnlearnConfig(model=model, classifier=classifier, image_size=16),
        UnlearnConfig(model=model, classifier=classifier, seed=1),
        UnlearnConfig(model=model, classifier=classifier, iterations=3),
    ]
    assert len({run_key(c) for c in changed} | {run_key(a)}) == len(changed) + 1
    # Stated defaults are the same computation as omitted ones; where results go is not part of it.
    assert run_key(UnlearnConfig(model=model, classifier=classifier, method_options={"lam": 1.0})) == run_key(a)
    assert run_key(UnlearnConfig(model=model, classifier=classifier, results_dir="elsewhere")) == run_key(a)
    # Models and classifiers are keyed by content, not by path: a copy keeps the key.
    shutil.copytree(model, tmp_path / "copy")
    assert run_key(UnlearnConfig(model=str(tmp_path / "copy"), classifier=classifier)) == run_key(a)


def test_method_flags_name_their_method_and_never_collide(tmp_path):
    """--salun.alpha is SalUn's alpha, --safemax.alpha SAFEMax's; a run refuses another method's flag,
    and compare refuses the flat form, which would not say whose option it is."""
    from safemax_ray import cli
    from safemax_ray.cli import compare as compare_command
    from safemax_ray.cli import flags, settings

    parser = cli.build_parser()
    args = parser.parse_args(["unlearn", "--method", "salun", "--salun.alpha", "0.01"])
    cfg = settings.run_config(args, flags.overrides(args))
    assert cfg.method == "salun" and cfg.method_options == {"alpha": 0.01}
    args = parser.parse_args(["unlearn", "--salun.alpha", "0.01"])
    with pytest.raises(SafemaxError, match=r"--salun.alpha sets an option of salun, but the run's method is safemax"):
        settings.run_config(args, flags.overrides(args))
    args = parser.parse_args(["compare", "--classes", "0", "--safemax.alpha", "2", "--salun.alpha", "0.5"])
    rest, per_method = flags.method_flag_options(flags.overrides(args))
    assert per_method == {"safemax": {"alpha": 2.0}, "salun": {"alpha": 0.5}}
    assert not any(k.startswith("methods.") for k in rest)
    args = parser.parse_args(["compare", "--classes", "0", "--alpha", "2", "--plan"])
    with pytest.raises(SafemaxError, match="compare runs several methods: give --METHOD.alpha"):
        compare_command.run(args)
