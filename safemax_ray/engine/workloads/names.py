"""Which workloads exist, by name: the built-ins and the `safemax_ray.workloads` entry-point group.

Light on purpose (nothing is imported): the config reads a YAML section named after a workload
with it. `__init__.py` turns a name into its class.
"""

from __future__ import annotations

from importlib.metadata import entry_points

ENTRY_POINT_GROUP = "safemax_ray.workloads"
DEFAULT_WORKLOAD = "classes"
BUILT_IN = {
    "classes": "safemax_ray.engine.workloads.classes:ClassWorkload",
    "concept": "safemax_ray.engine.workloads.concepts:ConceptWorkload",
    "dit": "safemax_ray.engine.workloads.dit:DiTWorkload",
}


def declared() -> dict[str, str]:
    """Every workload by name -> "module:Class": the built-ins, then the entry-point group's."""
    return {**BUILT_IN, **{ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}}


def available_workloads() -> list[str]:
    return sorted(declared())
