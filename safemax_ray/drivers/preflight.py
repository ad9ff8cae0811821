"""Refusing bad input in the driver, before any Ray worker starts, with one line that says why.

Ray workers run in other folders (and on other nodes), so every user path is made absolute here first.
"""

from __future__ import annotations

import os
from pathlib import Path

from safemax_ray import storage
from safemax_ray.config import UnlearnConfig
from safemax_ray.engine.workloads import workload_for
from safemax_ray.errors import SafemaxError
from safemax_ray.results import layout


def absolute(path: str) -> str:
    return path if storage.is_uri(path) else str(Path(path).expanduser().resolve())


def resolve_paths(cfg: UnlearnConfig) -> UnlearnConfig:
    """A copy of `cfg` with every local path absolute (its workload's own too), as the Ray workers must see it."""
    fix = lambda path: absolute(path) if path else path  # noqa: E731
    return workload_for(cfg.with_absolute_paths(fix)).with_absolute_paths(fix)


def check_writable_folder(path: str, what: str) -> None:
    """`path` is, or can become, a folder we can write to (object-store URIs are checked on write)."""
    if storage.is_uri(path):
        return
    p = Path(path)
    existing = next((q for q in [p, *p.parents] if q.exists()), None)
    if existing is not None and not existing.is_dir():
        raise SafemaxError(f"{what} {path} is not usable: {existing} is a file, not a folder; choose another")
    if existing is not None and not os.access(existing, os.W_OK):
        raise SafemaxError(f"{what} {path} is not writable (no write permission on {existing}); choose another")


def preflight(cfg: UnlearnConfig) -> UnlearnConfig:
    """Validate `cfg`, load what the workers will load, and return it with absolute paths."""
    cfg = resolve_paths(cfg)
    cfg.validate()
    workload_for(cfg).check()
    check_writable_folder(cfg.results_dir, "results folder")
    layout.move_earlier_layout(cfg.results_dir)
    if cfg.ray.storage_path:
        check_writable_folder(cfg.ray.storage_path, "Ray storage path")
    if cfg.output_dir:
        check_writable_folder(cfg.output_dir, "output folder")
        out = Path(cfg.output_dir)
        if not storage.is_uri(cfg.output_dir) and out.is_dir() and any(out.iterdir()):
            raise SafemaxError(f"output folder {cfg.output_dir} already exists and is not empty; choose another")
    return cfg
