"""The method registry: a dict, a decorator, and the `safemax_ray.methods` entry-point group.

Built-in methods register themselves with `@register_method`. Another package adds one without touching
ours by declaring, in its pyproject.toml,

    [project.entry-points."safemax_ray.methods"]
    my_method = "my_package.module:MyMethod"

and `get_method("my_method")` imports it on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from safemax_ray.errors import SafemaxError
from safemax_ray.methods.base import MethodOptions, UnlearningMethod
from safemax_ray.schema import from_dict

ENTRY_POINT_GROUP = "safemax_ray.methods"
METHODS: dict[str, type[UnlearningMethod]] = {}


def register_method(name: str) -> Callable[[type[UnlearningMethod]], type[UnlearningMethod]]:
    def decorator(cls: type[UnlearningMethod]) -> type[UnlearningMethod]:
        if name in METHODS and METHODS[name] is not cls:
            raise SafemaxError(f"unlearning method {name!r} is already registered by {METHODS[name].__module__}")
        METHODS[name] = cls
        return cls

    return decorator


def _load_entry_point(name: str) -> None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name != name:
            continue
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, UnlearningMethod)):
            raise SafemaxError(f"entry point {ep.value!r} for method {name!r} is not an UnlearningMethod subclass")
        METHODS.setdefault(name, cls)
        return


def available_methods() -> list[str]:
    return sorted(set(METHODS) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def get_method(name: str) -> type[UnlearningMethod]:
    if name not in METHODS:
        _load_entry_point(name)
    if name not in METHODS:
        raise SafemaxError(f"unknown unlearning method {name!r}; available: {', '.join(available_methods())}")
    return METHODS[name]


def method_options(name: str, values: dict[str, Any]) -> MethodOptions:
    """The method's typed, validated options from a mapping; unknown names are refused by name."""
    options = from_dict(get_method(name).Options, dict(values), where=f"method_options ({name})")
    options.validate()
    return options
