"""A run's identity: the content of everything that changes what it computes, hashed into its key.

Two runs with the same key compute the same thing, so `batch` skips a key that has a row and the
Eval-Unlearn technique finds its trained pipeline again. Models, classifiers and pipelines count by the
content of their files, not their paths.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from safemax_ray.config import UnlearnConfig
from safemax_ray.core.classifier import classifier_fingerprint
from safemax_ray.core.models import model_fingerprint
from safemax_ray.engine.workloads import workload_for
from safemax_ray.schema import to_dict


def computation(cfg: UnlearnConfig) -> dict[str, Any]:
    """Everything that changes what a run computes (not where it runs or writes): the model and
    classifier by content, the data by root and size, the method with all its options, the seeds,
    and what the workload adds (a concept run: its pipeline, prompts and images)."""
    return {
        "method": cfg.method,
        "options": to_dict(cfg.options()),
        "dataset": cfg.dataset,
        "data_root": cfg.data_root,
        "image_size": cfg.image_size,
        "model": model_fingerprint(cfg.model),
        "classifier": classifier_fingerprint(cfg.classifier),
        "lr": cfg.learning_rate(),
        "iterations": cfg.iterations,
        "batch_size": cfg.batch_size,
        "grad_clip": cfg.grad_clip,
        "seed": cfg.seed,
        "eval": to_dict(cfg.eval),
        **workload_for(cfg).identity(),
    }


def config_hash(cfg: UnlearnConfig) -> str:
    blob = json.dumps(computation(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def run_key(cfg: UnlearnConfig) -> str:
    """Deterministic identity of a run: the same key means the same computation."""
    workload = workload_for(cfg)
    return f"{cfg.method}-{workload.data_name()}-c{workload.forget_label()}-{config_hash(cfg)}-s{cfg.seed}"


def model_id(cfg: UnlearnConfig) -> str:
    """The model being unlearned, by content."""
    return workload_for(cfg).model_id()
