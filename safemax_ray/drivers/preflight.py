"""Refusing bad input in the driver, before any Ray worker starts, with one line that says why.

Ray workers run in other folders (and on other nodes), so every user path is made absolute here first.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from safemax_ray import storage
from safemax_ray.config import UnlearnConfig
from safemax_ray.core.classifier import load_classifier
from safemax_ray.core.data import load_dataset
from safemax_ray.core.models import SHIPPED_CLASSIFIER, load_model
from safemax_ray.errors import SafemaxError


def absolute(path: str) -> str:
    return path if storage.is_uri(path) else str(Path(path).expanduser().resolve())


def resolve_paths(cfg: UnlearnConfig) -> UnlearnConfig:
    """A copy of `cfg` with every local path absolute, as the Ray workers must see it."""

    def fix(path: str | None) -> str | None:
        return absolute(path) if path else path

    concept = cfg.concept and replace(
        cfg.concept,
        pipeline=absolute(cfg.concept.pipeline) if cfg.concept.pipeline else "",
        prompts_file=fix(cfg.concept.prompts_file),
        remain_prompts_file=fix(cfg.concept.remain_prompts_file),
        forget_images=fix(cfg.concept.forget_images),
    )
    return replace(
        cfg,
        concept=concept,
        model=fix(cfg.model),
        classifier=fix(cfg.classifier),
        data_root=fix(cfg.data_root),
        results_dir=absolute(cfg.results_dir),
        output_dir=fix(cfg.output_dir),
        method_options=dict(cfg.method_options),
        eval=replace(cfg.eval, fid_weights=fix(cfg.eval.fid_weights)),
        ray=replace(cfg.ray, storage_path=fix(cfg.ray.storage_path)),
    )


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


def _load_weights(what: str, path: str, load) -> None:
    try:
        load()
    except SafemaxError:
        raise
    except Exception as exc:  # noqa: BLE001  (truncated or corrupt files raise OSError, SafetensorError, ...)
        raise SafemaxError(
            f"cannot read the {what} weights in {path} ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            "the files may be truncated: copy or export them again"
        ) from None


def preflight(cfg: UnlearnConfig) -> UnlearnConfig:
    """Validate `cfg`, load what the workers will load, and return it with absolute paths."""
    cfg = resolve_paths(cfg)
    cfg.validate()
    if cfg.concept is not None:
        _check_pipeline(cfg)
    else:
        _check_model_and_data(cfg)
    check_writable_folder(cfg.results_dir, "results folder")
    if cfg.ray.storage_path:
        check_writable_folder(cfg.ray.storage_path, "Ray storage path")
    if cfg.output_dir:
        check_writable_folder(cfg.output_dir, "output folder")
        out = Path(cfg.output_dir)
        if not storage.is_uri(cfg.output_dir) and out.is_dir() and any(out.iterdir()):
            raise SafemaxError(f"output folder {cfg.output_dir} already exists and is not empty; choose another")
    return cfg


def _check_model_and_data(cfg: UnlearnConfig) -> None:
    if cfg.dataset != "digits" and not (cfg.model and cfg.classifier):
        raise SafemaxError(f"dataset {cfg.dataset!r} needs --model and --classifier (made by `safemax-ray pretrain`)")
    data = load_dataset(cfg.dataset, cfg.data_root, cfg.image_size)
    for c in cfg.forget_classes():
        data.check_class(c)
    _load_weights(
        "model",
        cfg.model or "the shipped model",
        lambda: load_model(cfg.model, data.num_classes, data.channels, data.image_size),
    )
    classifier = cfg.classifier or str(SHIPPED_CLASSIFIER)
    _load_weights("classifier", classifier, lambda: load_classifier(classifier, data.num_classes))


def _check_pipeline(cfg: UnlearnConfig) -> None:
    from safemax_ray.core.text import check_pipeline_folder, load_pipeline

    check_pipeline_folder(cfg.concept.pipeline)
    _load_weights("pipeline", cfg.concept.pipeline, lambda: load_pipeline(cfg.concept.pipeline))
    if cfg.concept.forget_images and not Path(cfg.concept.forget_images).is_dir():
        raise SafemaxError(f"forget images folder {cfg.concept.forget_images} does not exist")
