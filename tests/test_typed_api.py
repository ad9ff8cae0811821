"""The typed door of the Python API: every settings dataclass checks its fields when it is built, and every
public function its arguments, with the one-line SafemaxError the YAML and dict paths give; nothing wrong
reaches Ray or ends in a traceback from deep inside."""

import dataclasses
import inspect
import typing

import pytest

import safemax_ray
from safemax_ray.errors import SafemaxError
from safemax_ray.schema import Settings, _argument_hints


def _settings_classes() -> list[type]:
    import safemax_ray.config  # noqa: F401  (each import registers its Settings subclasses)
    import safemax_ray.drivers.tune  # noqa: F401
    import safemax_ray.engine.attack  # noqa: F401
    import safemax_ray.engine.pretrain  # noqa: F401
    from safemax_ray.methods import available_methods, get_method

    for name in available_methods():
        get_method(name)
    found, todo = [], list(Settings.__subclasses__())
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return sorted(found, key=lambda c: c.__qualname__)


CLASSES = _settings_classes()
WRONG = object()  # no setting's type admits it, except Any's


def _typed_fields(cls: type) -> list[str]:
    hints = typing.get_type_hints(cls)
    return [f.name for f in dataclasses.fields(cls) if hints[f.name] is not typing.Any]


FIELD_CASES = [(cls, name) for cls in CLASSES for name in _typed_fields(cls)]


def test_the_sweep_sees_every_settings_class():
    names = {c.__name__ for c in CLASSES}
    assert {"UnlearnConfig", "EvalConfig", "RayConfig", "TuneConfig", "Budget"} <= names
    assert {"SafeMaxOptions", "SalUnOptions", "EraseDiffOptions", "SFRonOptions", "AttackSettings"} <= names
    assert len(FIELD_CASES) > 80


@pytest.mark.parametrize("cls, name", FIELD_CASES, ids=[f"{c.__name__}.{n}" for c, n in FIELD_CASES])
def test_a_wrong_type_in_any_field_is_refused_by_name(cls, name):
    with pytest.raises(SafemaxError) as refused:
        cls(**{name: WRONG})
    message = str(refused.value)
    assert message.startswith(f"{cls.__name__}.{name}") and "\n" not in message, message


def test_nested_settings_given_as_mappings_are_converted_and_checked():
    from safemax_ray.config import EvalConfig, RayConfig, UnlearnConfig
    from safemax_ray.drivers.tune import SearchRange, TuneConfig

    cfg = UnlearnConfig(eval={"guidance": 1, "sample_steps": 5}, ray={"num_workers": 2})
    assert cfg.eval == EvalConfig(guidance=1.0, sample_steps=5) and isinstance(cfg.eval.guidance, float)
    assert cfg.ray == RayConfig(num_workers=2)
    study = TuneConfig(search={"lr": {"low": 1e-4, "high": 1e-2, "log": True}}, budget={"num_samples": 3})
    assert study.search["lr"] == SearchRange(1e-4, 1e-2, log=True) and study.budget.num_samples == 3
    with pytest.raises(SafemaxError, match=r"^UnlearnConfig.eval: unknown key\(s\) 'bogus'; valid keys are "):
        UnlearnConfig(eval={"bogus": 1})
    with pytest.raises(SafemaxError, match=r"^TuneConfig.search.lr.low: expected a number, got 'low'$"):
        TuneConfig(search={"lr": {"low": "low", "high": 1.0}})


def test_a_field_set_wrong_after_the_config_was_built_is_refused_by_the_driver(tmp_path, monkeypatch):
    from safemax_ray.config import UnlearnConfig

    monkeypatch.setattr("safemax_ray.ray.cluster.ensure_ray", _refuse_ray)
    cfg = UnlearnConfig(results_dir=str(tmp_path))
    cfg.eval.guidance = "strong"
    with pytest.raises(SafemaxError, match=r"^unlearn\(\): config.eval.guidance: expected a number, got 'strong'$"):
        safemax_ray.unlearn(cfg)


def _refuse_ray(*args, **kwargs):
    raise AssertionError("Ray was started before the input was checked")


def _public_functions():
    from safemax_ray.drivers import attack, batch, compare, tune, unlearn

    return [unlearn.unlearn, tune.tune, batch.batch_unlearn, compare.compare, attack.attack]


ARGUMENT_CASES = [(fn, name) for fn in _public_functions() for name in inspect.signature(inspect.unwrap(fn)).parameters]


def _good_arguments(fn, tmp_path) -> dict:
    from safemax_ray.config import UnlearnConfig

    return {
        "unlearn": {"config": UnlearnConfig(results_dir=str(tmp_path))},
        "tune": {"config": {"results_dir": str(tmp_path)}},
        "batch_unlearn": {"base": UnlearnConfig(results_dir=str(tmp_path)), "classes": [0]},
        "compare": {"base": UnlearnConfig(results_dir=str(tmp_path)), "classes": [0]},
        "attack": {"run_or_folder": "some-run", "results_dir": str(tmp_path)},
    }[fn.__name__]


@pytest.mark.parametrize("fn, name", ARGUMENT_CASES, ids=[f"{f.__name__}({n})" for f, n in ARGUMENT_CASES])
def test_a_wrong_argument_to_a_public_function_is_refused_by_name_before_ray(fn, name, tmp_path, monkeypatch):
    monkeypatch.setattr("safemax_ray.ray.cluster.ensure_ray", _refuse_ray)
    assert name in _argument_hints(inspect.unwrap(fn)), f"{fn.__name__}({name}) has no hint that resolves"
    arguments = {**_good_arguments(fn, tmp_path), name: WRONG}
    with pytest.raises(SafemaxError) as refused:
        fn(**arguments)
    message = str(refused.value)
    assert message.startswith(f"{fn.__name__}(): {name}") and "\n" not in message, message


def test_the_package_level_functions_check_too(tmp_path):
    with pytest.raises(SafemaxError, match=r"^batch_unlearn\(\): classes: expected a list, got '0-9'$"):
        safemax_ray.batch_unlearn(safemax_ray.UnlearnConfig(results_dir=str(tmp_path)), "0-9")
    with pytest.raises(SafemaxError, match=r"^compare\(\): got an unexpected keyword argument 'method'$"):
        safemax_ray.compare(safemax_ray.UnlearnConfig(), [0], method="salun")
