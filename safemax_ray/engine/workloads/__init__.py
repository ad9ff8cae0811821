"""Workloads: what a run unlearns (`base.py` is the interface). `workload_for` is the one place that
decides which one a config describes; everything else asks the object it returns.

To add a third kind (say, latent class-conditional models): a module here with a `Workload` subclass,
its settings in `config.py` (as `concept:` holds a concept run's), and one line in `workload_for`.
"""

from __future__ import annotations

from safemax_ray.config import UnlearnConfig
from safemax_ray.engine.workloads.base import Evaluation, Workload
from safemax_ray.engine.workloads.classes import ClassWorkload


def workload_for(cfg: UnlearnConfig) -> Workload:
    if cfg.concept is not None:
        from safemax_ray.engine.workloads.concepts import ConceptWorkload  # imports the text stack

        return ConceptWorkload(cfg)
    return ClassWorkload(cfg)


__all__ = ["ClassWorkload", "Evaluation", "Workload", "workload_for"]
