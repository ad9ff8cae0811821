"""Workloads: what a run unlearns, found by name. `base.py` is the interface; each workload is one module.

A run's config names its workload (`workload: classes`, the default; `concept`; `dit`; or an installed
one) and carries the workload's own settings (its YAML section, its flags). `workload_for` is the one
place that turns the name into the object; every other layer asks that object and never names a
workload.

Another package adds a workload without touching ours by declaring, in its pyproject.toml,

    [project.entry-points."safemax_ray.workloads"]
    my_workload = "my_package.module:MyWorkload"
"""

from __future__ import annotations

import functools
import importlib
from typing import TYPE_CHECKING

from safemax_ray.engine.workloads.names import DEFAULT_WORKLOAD, ENTRY_POINT_GROUP, available_workloads, declared
from safemax_ray.errors import SafemaxError

if TYPE_CHECKING:
    from safemax_ray.config import UnlearnConfig
    from safemax_ray.engine.workloads.base import Workload


@functools.cache
def workload_class(name: str) -> type[Workload]:
    """The Workload subclass registered as `name`, imported on first use."""
    from safemax_ray.engine.workloads.base import Workload

    found = declared()
    if name not in found:
        raise SafemaxError(f"unknown workload {name!r}; available: {', '.join(sorted(found))}")
    module, _, attribute = found[name].partition(":")
    cls = getattr(importlib.import_module(module), attribute)
    if not (isinstance(cls, type) and issubclass(cls, Workload)):
        raise SafemaxError(f"entry point {found[name]!r} for workload {name!r} is not a Workload subclass")
    return cls


def installed_workloads() -> dict[str, type[Workload]]:
    """Every workload whose class loads, by name: what the rows' schema, the report and the flags
    know. A broken plug-in is left out of them, and using it by name says why."""
    found = {}
    for name in available_workloads():
        try:
            found[name] = workload_class(name)
        except Exception:  # noqa: BLE001  (ImportError, SafemaxError, anything a plug-in's import raises)
            continue
    return found


def workload_for(cfg: UnlearnConfig) -> Workload:
    """The object that answers every question about `cfg`'s workload."""
    return workload_class(cfg.workload)(cfg)


__all__ = [
    "DEFAULT_WORKLOAD",
    "ENTRY_POINT_GROUP",
    "available_workloads",
    "installed_workloads",
    "workload_class",
    "workload_for",
]
