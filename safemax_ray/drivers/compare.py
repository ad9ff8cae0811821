"""The paper's comparison on your own model: several methods over the same classes, then the report.

Every (method, class) run goes through the resumable batch machinery (a rerun repeats only what is
missing), with the same common settings; Selective Amnesia gets 20 times the iterations, as in the
paper. The report then has one column group per method (Table 1: H and UA; Table 2: FID, RTE and
memory), the cost ratios to SAFEMax, and Figure 2 (each method's forget-class samples, class by class).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from rich.console import Console

from safemax_ray.config import UnlearnConfig
from safemax_ray.drivers.batch import BatchResult, run_all
from safemax_ray.errors import SafemaxError
from safemax_ray.methods import available_methods, get_method
from safemax_ray.schema import checked


@dataclass
class CompareResult:
    batch: BatchResult
    report: Any  # results.report.ReportResult


def plan_comparison(
    base: UnlearnConfig,
    classes: list[int],
    methods: tuple[str, ...] | list[str] | None = None,
    options: dict[str, dict[str, Any]] | None = None,
) -> list[UnlearnConfig]:
    """One config per (method, class): `base`'s common settings, each method's own options and lr;
    `methods` None means every registered method."""
    methods = available_methods() if methods is None else methods
    options = options or {}
    unknown = sorted(set(options) - set(methods))
    if unknown:
        raise SafemaxError(f"options given for {', '.join(unknown)}, which are not among the compared methods")
    if not classes or not methods:
        raise SafemaxError("compare needs at least one class and one method")
    configs = []
    for method in methods:
        iterations = max(1, round(base.iterations * get_method(method).ITERATIONS_VS_SAFEMAX))
        for c in classes:
            configs.append(
                replace(
                    base,
                    method=method,
                    method_options=dict(options.get(method, {})),
                    forget_class=c,
                    iterations=iterations,
                    output_dir=None,
                    study="",
                    eval=replace(base.eval),
                    ray=replace(base.ray),
                )
            )
    return configs


@checked
def compare(
    base: UnlearnConfig,
    classes: list[int],
    methods: tuple[str, ...] | list[str] | None = None,
    options: dict[str, dict[str, Any]] | None = None,
    max_concurrent: int | None = None,
    console: Console | None = None,
) -> CompareResult:
    """Run every method (default: every registered one) on every class (what is stored already is
    kept), then write the report."""
    from safemax_ray.results.report import make_report

    batch = run_all(plan_comparison(base, classes, methods, options), max_concurrent, console)
    report = make_report(batch.results_dir, dataset=base.dataset, console=console, run_keys=batch.run_keys)
    return CompareResult(batch, report)
