"""SAFEMax machine unlearning for class-conditional diffusion models, on Ray.

    import safemax_ray
    result = safemax_ray.unlearn(safemax_ray.UnlearnConfig(forget_class=0))
    print(result.metrics["ua"], result.metrics["entropy"], result.metrics["fid"])

`tune(...)` searches hyperparameters with Ray Tune + Optuna, `batch_unlearn(...)` runs many classes,
and `register_method` adds unlearning methods (or use the `safemax_ray.methods` entry-point group).
Heavy imports (Ray, diffusers) happen when a function is called, not when the package is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from safemax_ray.errors import SafemaxError

if TYPE_CHECKING:
    from safemax_ray.config import EvalConfig, RayConfig, UnlearnConfig, load_unlearn_config
    from safemax_ray.drivers.attack import AttackResult
    from safemax_ray.drivers.batch import BatchResult
    from safemax_ray.drivers.compare import CompareResult
    from safemax_ray.drivers.tune import TuneConfig, TuneResult
    from safemax_ray.drivers.unlearn import UnlearnResult

__version__ = "0.1.0"
__all__ = [
    "attack",
    "EvalConfig",
    "RayConfig",
    "SafemaxError",
    "UnlearnConfig",
    "batch_unlearn",
    "compare",
    "load_unlearn_config",
    "register_method",
    "tune",
    "unlearn",
]


_CONFIG = ("EvalConfig", "RayConfig", "UnlearnConfig", "load_unlearn_config")


def __getattr__(name: str) -> Any:
    # The configuration imports the methods, hence torch and diffusers: not for a process that imports a
    # light module of the package (a Ray Train controller unpickling `ray.tune_reports`, the CLI's --help).
    if name in _CONFIG:
        from safemax_ray import config

        return getattr(config, name)
    raise AttributeError(f"module 'safemax_ray' has no attribute {name!r}")


def unlearn(config: UnlearnConfig | dict | str, **kwargs: Any) -> UnlearnResult:
    """One SAFEMax run on Ray Train; see `safemax_ray.drivers.unlearn.unlearn`."""
    from safemax_ray.drivers.unlearn import unlearn as run

    return run(config, **kwargs)


def tune(config: TuneConfig | dict | str, **kwargs: Any) -> TuneResult:
    """A Ray Tune + Optuna search; see `safemax_ray.tune.tune`."""
    from safemax_ray.drivers.tune import tune as search

    return search(config, **kwargs)


def batch_unlearn(base: UnlearnConfig, classes: list[int], **kwargs: Any) -> BatchResult:
    """One run per class, resumable; see `safemax_ray.drivers.batch.batch_unlearn`."""
    from safemax_ray.drivers.batch import batch_unlearn as run_batch

    return run_batch(base, classes, **kwargs)


def compare(base: UnlearnConfig, classes: list[int], **kwargs: Any) -> CompareResult:
    """Several methods on the same classes, then the report; see `safemax_ray.drivers.compare.compare`."""
    from safemax_ray.drivers.compare import compare as run_compare

    return run_compare(base, classes, **kwargs)


def attack(run_or_folder: str, **kwargs: Any) -> AttackResult:
    """Relearning attacks and the trajectory probe; see `safemax_ray.drivers.attack.attack`."""
    from safemax_ray.drivers.attack import attack as run_attack

    return run_attack(run_or_folder, **kwargs)


def register_method(name: str):
    """Decorator that registers an `UnlearningMethod` subclass under `name`."""
    from safemax_ray.methods import register_method as register

    return register(name)
