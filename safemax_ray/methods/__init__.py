"""Unlearning methods behind a small registry; importing this package registers the built-ins."""

from safemax_ray.methods import erasediff as _erasediff  # noqa: F401  (registers "erasediff")
from safemax_ray.methods import safemax as _safemax  # noqa: F401  (registers "safemax")
from safemax_ray.methods import salun as _salun  # noqa: F401  (registers "salun")
from safemax_ray.methods import selective_amnesia as _sa  # noqa: F401  (registers "sa")
from safemax_ray.methods import sfron as _sfron  # noqa: F401  (registers "sfron")
from safemax_ray.methods.base import LossOutput, MethodOptions, SetupContext, UnlearnBatch, UnlearningMethod
from safemax_ray.methods.registry import (
    ENTRY_POINT_GROUP,
    available_methods,
    get_method,
    method_options,
    register_method,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "LossOutput",
    "MethodOptions",
    "SetupContext",
    "UnlearnBatch",
    "UnlearningMethod",
    "available_methods",
    "get_method",
    "method_options",
    "register_method",
]
