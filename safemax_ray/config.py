"""Typed run settings, loaded from YAML, flags or Python, and validated in one place.

Every setting has one home here. `from_dict` refuses unknown keys and wrong types with a message that
names the key, so a typo in a YAML file fails loudly instead of silently running the defaults.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from safemax_ray.errors import SafemaxError

T = TypeVar("T")

DATASETS = ("digits", "cifar10", "imagefolder")
MOVED_TO_OPTIONS = {"lam", "alpha", "target", "null_drop"}  # top-level keys before method options existed


@dataclass
class EvalConfig:
    """How a model is judged: guided DDPM sampling, then the classifier and FID.

    The defaults fit the embedded digits model on 2 CPU cores; the paper's CIFAR-10 protocol is
    `sample_steps: null` (full schedule), 500 forget samples and 5000 per retained class.
    """

    guidance: float = 2.0
    sample_steps: int | None = None  # None: the model's full training schedule
    n_forget_samples: int = 200
    n_retain_per_class: int = 30
    batch_size: int = 128  # images per chunk; chunk c is sampled from a generator seeded by (seed, c)
    workers: int | str = "auto"  # Ray tasks that sample chunks: a number, "auto" (every GPU, or every CPU,
    # of the cluster) or "train" (the run's own Train workers)
    seed: int = 1234  # the same noise for the base and the unlearned model
    fid_weights: str | None = None  # Inception weights file (FID for image datasets other than digits)
    base_min_acc: float = 80.0  # % the base model must reach on its own samples, else UA and H mean nothing

    def validate(self) -> None:
        if self.guidance < 0:
            raise SafemaxError(f"eval.guidance must be >= 0, got {self.guidance}")
        if self.sample_steps is not None and self.sample_steps < 1:
            raise SafemaxError(f"eval.sample_steps must be >= 1 or null (full schedule), got {self.sample_steps}")
        if self.n_forget_samples < 2 or self.n_retain_per_class < 2:
            raise SafemaxError("eval.n_forget_samples and eval.n_retain_per_class must be >= 2 (FID needs 2+)")
        if self.batch_size < 1:
            raise SafemaxError(f"eval.batch_size must be >= 1, got {self.batch_size}")
        if self.workers not in ("auto", "train") and not (isinstance(self.workers, int) and self.workers >= 1):
            raise SafemaxError(f"eval.workers must be 'auto', 'train' or a number >= 1, got {self.workers!r}")
        if not 0 <= self.base_min_acc <= 100:
            raise SafemaxError(f"eval.base_min_acc must be a percentage in [0, 100], got {self.base_min_acc}")


@dataclass
class RayConfig:
    """Where and how wide the Ray Train job runs."""

    num_workers: int = 1
    use_gpu: bool | None = None  # None: use GPUs when the cluster has them
    cpus_per_worker: float | None = None  # None: 1 CPU reserved, torch threads = node cores / workers
    address: str | None = None  # None: start a local Ray; "auto" or "ray://host:10001" joins a cluster
    num_cpus: int | None = None  # logical CPUs for a local Ray; None: enough for the workers
    checkpoint_every: int = 100
    max_failures: int = 1
    storage_path: str | None = None  # None: <results_dir>/ray

    def validate(self) -> None:
        if self.num_workers < 1:
            raise SafemaxError(f"ray.num_workers must be >= 1, got {self.num_workers}")
        if self.cpus_per_worker is not None and self.cpus_per_worker <= 0:
            raise SafemaxError(f"ray.cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        if self.checkpoint_every < 1:
            raise SafemaxError(f"ray.checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if self.max_failures < 0:
            raise SafemaxError(f"ray.max_failures must be >= 0, got {self.max_failures}")


@dataclass
class UnlearnConfig:
    """One unlearning run: which class, which method, its hyperparameters, and where results go."""

    forget_class: int | list[int] = 0  # a class, or a list of classes to forget together in one model
    method: str = "safemax"
    dataset: str = "digits"
    data_root: str | None = None  # CIFAR-10 root or ImageFolder tree
    image_size: int | None = None  # ImageFolder only: resize to this square size
    model: str | None = None  # diffusers folder; None: the shipped digits model
    classifier: str | None = None  # classifier folder; None: the shipped digits classifier
    method_options: dict[str, Any] = field(default_factory=dict)  # the method's own (safemax: lam, alpha, ...)
    lr: float | None = None  # Adam learning rate; None: the method's default (DEFAULT_LR)
    iterations: int = 200
    batch_size: int = 128  # global, per stream: this many forget and this many remain images a step
    seed: int = 0
    grad_clip: float = 1.0
    stats_every: int = 10  # steps between host syncs for loss statistics and the divergence check on a GPU
    compile: bool | None = None  # torch.compile the UNet; None: on CUDA when the run is long enough to pay
    results_dir: str = "safemax_results"
    output_dir: str | None = None  # None: <results_dir>/models/<run_id>
    study: str = ""
    eval: EvalConfig = field(default_factory=EvalConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def validate(self) -> None:
        if self.dataset not in DATASETS:
            raise SafemaxError(f"dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if self.dataset != "digits" and not self.data_root:
            raise SafemaxError(f"dataset {self.dataset!r} needs --data-root pointing at the local files")
        if self.lr is not None and self.lr <= 0:
            raise SafemaxError(f"lr must be > 0, got {self.lr}")
        if self.iterations < 1:
            raise SafemaxError(f"iterations must be >= 1, got {self.iterations}")
        if self.batch_size < 1:
            raise SafemaxError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.batch_size % self.ray.num_workers:
            raise SafemaxError(
                f"batch_size {self.batch_size} must be divisible by num_workers {self.ray.num_workers} "
                "so that every worker gets the same share of the global batch"
            )
        if self.grad_clip <= 0:
            raise SafemaxError(f"grad_clip must be > 0, got {self.grad_clip}")
        classes = self.forget_classes()
        if not classes or min(classes) < 0:
            raise SafemaxError(
                f"forget_class must be a class >= 0 or a non-empty list of them, got {self.forget_class}"
            )
        if self.stats_every < 1:
            raise SafemaxError(f"stats_every must be >= 1, got {self.stats_every}")
        self.options()
        self.eval.validate()
        self.ray.validate()

    def forget_classes(self) -> list[int]:
        """The forgotten classes, sorted: one, or several forgotten together."""
        return sorted(set(self.forget_class)) if isinstance(self.forget_class, list) else [self.forget_class]

    def forget_label(self) -> str:
        """'3', or '3+7' for several classes: how run ids and keys name them."""
        return "+".join(map(str, self.forget_classes()))

    def learning_rate(self) -> float:
        """`lr`, or the method's default when it is not set."""
        from safemax_ray.methods import get_method

        return self.lr if self.lr is not None else get_method(self.method).DEFAULT_LR

    def options(self) -> Any:
        """The method's typed options (defaults filled in), validated; unknown names refused."""
        from safemax_ray.methods import method_options

        return method_options(self.method, self.method_options)

    def hparams(self) -> dict[str, Any]:
        """Everything that changes what a run computes (not where it runs or writes): the model and
        classifier by content, the data by root and size, the method with all its options, the seeds."""
        from safemax_ray.core.classifier import classifier_fingerprint
        from safemax_ray.core.models import model_fingerprint

        return {
            "method": self.method,
            "options": to_dict(self.options()),
            "dataset": self.dataset,
            "data_root": self.data_root,
            "image_size": self.image_size,
            "model": model_fingerprint(self.model),
            "classifier": classifier_fingerprint(self.classifier),
            "lr": self.learning_rate(),
            "iterations": self.iterations,
            "batch_size": self.batch_size,
            "grad_clip": self.grad_clip,
            "seed": self.seed,
            "eval": to_dict(self.eval),
        }

    def config_hash(self) -> str:
        blob = json.dumps(self.hparams(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def run_key(self) -> str:
        """Deterministic identity of a run: the same key means the same computation."""
        return f"{self.method}-{self.dataset}-c{self.forget_label()}-{self.config_hash()}-s{self.seed}"


def _check_type(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, where)
            except SafemaxError as exc:
                errors.append(str(exc))
        raise SafemaxError(errors[0] if errors else f"{where}: unexpected value {value!r}")
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise SafemaxError(f"{where}: expected a mapping, got {value!r}")
        item = typing.get_args(hint)[1] if typing.get_args(hint) else Any
        return {k: _check_type(v, item, f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise SafemaxError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise SafemaxError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SafemaxError(f"{where}: expected a whole number, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SafemaxError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise SafemaxError(f"{where}: expected text, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: Any, where: str = "config") -> T:
    """Build dataclass `cls` from a mapping, refusing unknown keys and wrong types by name."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise SafemaxError(f"{where}: expected a mapping of settings, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise SafemaxError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys are {', '.join(sorted(names))}"
        )
    values = {k: _check_type(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**values)


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, turning parse errors into a message that names the file."""
    path = Path(path)
    if not path.is_file():
        raise SafemaxError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SafemaxError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SafemaxError(f"config file {path} must hold a mapping of settings at the top level")
    return data


def load_unlearn_config(path: str | Path | None = None, **overrides: Any) -> UnlearnConfig:
    """Defaults, then the YAML file, then explicit overrides (None means 'not given')."""
    data = read_yaml(path) if path else {}
    moved = sorted(set(data) & MOVED_TO_OPTIONS)
    if moved:
        raise SafemaxError(
            f"{path}: {', '.join(moved)} belong to the method now: put them under method_options "
            f"(e.g. method_options: {{{moved[0]}: {data[moved[0]]!r}}})"
        )
    config = from_dict(UnlearnConfig, data, where=str(path or "config"))
    return apply_overrides(config, overrides)


def apply_overrides(config: T, overrides: dict[str, Any]) -> T:
    """Set fields from flat overrides such as {'ray.num_workers': 2}; None means 'not given'."""
    for key, value in overrides.items():
        if value is None:
            continue
        target: Any = config
        *parents, name = key.split(".")
        for parent in parents:
            target = getattr(target, parent)
        if isinstance(target, dict):  # method_options.<name>: checked by the method's Options later
            target[name] = value
            continue
        hints = typing.get_type_hints(type(target))
        if name not in hints:
            raise SafemaxError(f"unknown setting {key!r}")
        setattr(target, name, _check_type(value, hints[name], key))
    return config


def dump_yaml(config: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
