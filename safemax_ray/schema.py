"""Typed settings from plain mappings: dataclasses filled from YAML, flags or Python, checked by name.

`from_dict` refuses unknown keys and wrong types with a message that names the key, so a typo in a YAML
file fails loudly instead of silently running the defaults. The same check guards the two other doors:
a `Settings` dataclass built in Python checks its fields when it is made (a mapping where nested
settings belong is converted and checked), and `checked` checks a public function's arguments against
its type hints. Nothing here knows what the settings mean; `config.py` and each method's Options say that.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import numbers
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from safemax_ray.errors import SafemaxError

T = TypeVar("T")


def setting(
    default: Any, help: str, flag: str | None = None, off_flag: str | None = None, choices: tuple | None = None
) -> Any:
    """A field of a settings dataclass with what its command-line flag needs: the help text, and where
    the flag is not `--<name>` its name (and, for a switch, the flag that turns it off)."""
    return dataclasses.field(
        default=default, metadata={"help": help, "flag": flag, "off_flag": off_flag, "choices": choices}
    )


def _check_type(value: Any, hint: Any, where: str) -> Any:
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, where)
            except SafemaxError as exc:
                errors.append(str(exc))
        raise SafemaxError(errors[0] if errors else f"{where}: unexpected value {value!r}")
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            check_fields(value, where)  # fields may have been set after it was built
            return value
        return from_dict(hint, value, where)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise SafemaxError(f"{where}: expected a mapping, got {value!r}")
        item = typing.get_args(hint)[1] if typing.get_args(hint) else Any
        return {k: _check_type(v, item, f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise SafemaxError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            raise SafemaxError(f"{where}: expected a sequence, got {value!r}")
        item = typing.get_args(hint)[0]
        return tuple(_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise SafemaxError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:  # numbers.Integral: numpy's integers too (a class read back from Parquet)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise SafemaxError(f"{where}: expected a whole number, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise SafemaxError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise SafemaxError(f"{where}: expected text, got {value!r}")
        return value
    if isinstance(hint, type) and hint is not object and not isinstance(value, hint):
        raise SafemaxError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def check_fields(obj: Any, where: str) -> None:
    """Check every field of dataclass `obj` against its type hint, in place, naming the field: an int
    where a float belongs becomes a float, a mapping where nested settings belong becomes them."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        setattr(obj, f.name, _check_type(getattr(obj, f.name), hints[f.name], f"{where}.{f.name}"))


class Settings:
    """Base of the settings dataclasses: built in Python, they are checked as a YAML file is.

    `UnlearnConfig(lr="fast")` fails here, naming `lr`, instead of in a comparison deep in a driver.
    """

    def __post_init__(self) -> None:
        check_fields(self, type(self).__name__)


def checked(fn: Callable) -> Callable:
    """Check a public function's arguments against its type hints before it runs: a wrong type is a
    one-line SafemaxError naming the argument, never a traceback from deep inside. Values pass as given
    (the function still converts mappings and paths its own way)."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise SafemaxError(f"{fn.__name__}(): {exc}") from None
        hints = _argument_hints(fn)
        for name, value in bound.arguments.items():
            if name in hints:
                _check_type(value, hints[name], f"{fn.__name__}(): {name}")
        return fn(*args, **kwargs)

    return wrapper


def _argument_hints(fn: Callable) -> dict[str, Any]:
    """The hints that resolve at run time (a name imported only for type checkers is left unchecked)."""
    hints = {}
    for name, annotation in fn.__annotations__.items():
        try:
            hints[name] = eval(annotation, fn.__globals__) if isinstance(annotation, str) else annotation  # noqa: S307
        except NameError:
            continue
    hints.pop("return", None)
    return hints


def from_dict(cls: type[T], data: Any, where: str = "config") -> T:
    """Build dataclass `cls` from a mapping, refusing unknown keys and wrong types by name."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise SafemaxError(f"{where}: expected a mapping of settings, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise SafemaxError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys are {', '.join(sorted(names))}"
        )
    values = {k: _check_type(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**values)


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, turning parse errors into a message that names the file."""
    path = Path(path)
    if not path.is_file():
        raise SafemaxError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SafemaxError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SafemaxError(f"config file {path} must hold a mapping of settings at the top level")
    return data


def apply_overrides(config: T, overrides: dict[str, Any]) -> T:
    """Set fields from flat overrides such as {'ray.num_workers': 2}; None means 'not given'."""
    for key, value in overrides.items():
        if value is None:
            continue
        owner: Any = config
        *parents, name = key.split(".")
        for parent in parents:
            owner = getattr(owner, parent)
        if isinstance(owner, dict):  # method_options.<name>: checked by the method's Options later
            owner[name] = value
            continue
        hints = typing.get_type_hints(type(owner))
        if name not in hints:
            raise SafemaxError(f"unknown setting {key!r}")
        setattr(owner, name, _check_type(value, hints[name], key))
    return config
