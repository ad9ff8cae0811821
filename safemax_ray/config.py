"""Typed run settings, loaded from YAML, flags or Python, and validated in one place.

Every setting has one home here, with its meaning and its limits. The settings describe a run and
nothing more: what a run's identity is (hashes of model files) lives in `identity.py`, and the generic
typed loading in `schema.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from safemax_ray.core.sampling import SAMPLERS
from safemax_ray.engine.workloads.names import DEFAULT_WORKLOAD, available_workloads
from safemax_ray.errors import SafemaxError
from safemax_ray.methods import get_method, method_options
from safemax_ray.schema import Settings, apply_overrides, check_fields, from_dict, read_yaml, setting
from safemax_ray.tracking import tracking_uri

DATASETS = ("digits", "cifar10", "imagefolder")
MOVED_TO_OPTIONS = {"lam", "alpha", "target", "null_drop"}  # top-level keys before method options existed


@dataclass
class EvalConfig(Settings):
    """How a model is judged: guided DDPM sampling, then the classifier and FID.

    The defaults fit the embedded digits model on 2 CPU cores; the paper's CIFAR-10 protocol is
    `sample_steps: null` (full schedule), 500 forget samples and 5000 per retained class.
    """

    guidance: float = setting(2.0, "classifier-free guidance weight w")
    sample_steps: int | None = setting(None, "sampling steps (default: the model's full schedule)")
    sampler: str = setting("ddpm", "ddpm: ancestral steps; ddim: generalized DDIM steps, as the reference samples")
    eta: float = setting(1.0, "DDIM's eta (the reference: 1.0); ddim only")
    n_forget_samples: int = setting(200, "samples of each forgotten class (UA, H)")
    n_retain_per_class: int = setting(30, "samples of every retained class (FID, accuracy)")
    batch_size: int = setting(
        128, "images per sampling chunk; chunk c is drawn from a generator seeded by (seed, c)", "--eval-batch-size"
    )
    workers: int | str = setting(
        "auto",
        "Ray tasks that sample the evaluation: N, auto (every GPU or CPU of the cluster; the Train workers "
        "below 10000 image-steps) or train",
        "--eval-workers",
    )
    seed: int = setting(1234, "the evaluation noise, the same for the base and the unlearned model", "--eval-seed")
    fid_weights: str | None = setting(None, "Inception weights file (FID for image datasets other than digits)")
    base_min_acc: float = setting(80.0, "%% the base model must reach on its own samples, else UA and H mean nothing")

    def validate(self) -> None:
        if self.guidance < 0:
            raise SafemaxError(f"eval.guidance must be >= 0, got {self.guidance}")
        if self.sampler not in SAMPLERS:
            raise SafemaxError(f"eval.sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if not 0 <= self.eta <= 1:
            raise SafemaxError(f"eval.eta must be in [0, 1], got {self.eta}")
        if self.sample_steps is not None and self.sample_steps < 1:
            raise SafemaxError(f"eval.sample_steps must be >= 1 or null (full schedule), got {self.sample_steps}")
        if self.n_forget_samples < 2 or self.n_retain_per_class < 2:
            raise SafemaxError("eval.n_forget_samples and eval.n_retain_per_class must be >= 2 (FID needs 2+)")
        if self.batch_size < 1:
            raise SafemaxError(f"eval.batch_size must be >= 1, got {self.batch_size}")
        if self.seed < 0:
            raise SafemaxError(f"eval.seed must be >= 0, got {self.seed}")
        if self.workers not in ("auto", "train") and not (isinstance(self.workers, int) and self.workers >= 1):
            raise SafemaxError(f"eval.workers must be 'auto', 'train' or a number >= 1, got {self.workers!r}")
        if not 0 <= self.base_min_acc <= 100:
            raise SafemaxError(f"eval.base_min_acc must be a percentage in [0, 100], got {self.base_min_acc}")


@dataclass
class RayConfig(Settings):
    """Where and how wide the Ray Train job runs."""

    num_workers: int = setting(1, "Ray Train workers (DDP)")
    use_gpu: bool | None = setting(
        None, "train on GPUs (--cpu: on CPUs even if GPUs exist; default: GPUs if any)", "--gpu", "--cpu"
    )
    cpus_per_worker: float | None = setting(None, "CPUs per worker (default: 1 reserved, threads = cores / workers)")
    gpus_per_worker: float = setting(
        1.0, "GPUs per worker on --gpu; below 1 (e.g. 0.5) workers share a GPU and DDP runs over gloo, not NCCL"
    )
    address: str | None = setting(None, "join a Ray cluster: 'auto' or ray://host:10001 (default: a local Ray)")
    num_cpus: int | None = setting(None, "logical CPUs of a local Ray (default: enough for the workers)")
    checkpoint_every: int = setting(100, "steps between checkpoints")
    max_failures: int = setting(
        1, "times a run restarts from its last checkpoint after its workers (or a batch run's task) died"
    )
    storage_path: str | None = setting(None, "Ray Train's storage (default <results-dir>/_ray)")

    def validate(self) -> None:
        if self.num_workers < 1:
            raise SafemaxError(f"ray.num_workers must be >= 1, got {self.num_workers}")
        if self.cpus_per_worker is not None and self.cpus_per_worker <= 0:
            raise SafemaxError(f"ray.cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        if not 0 < self.gpus_per_worker <= 1:
            raise SafemaxError(
                f"ray.gpus_per_worker must be in (0, 1] (a share of one GPU), got {self.gpus_per_worker}"
            )
        if self.checkpoint_every < 1:
            raise SafemaxError(f"ray.checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if self.max_failures < 0:
            raise SafemaxError(f"ray.max_failures must be >= 0, got {self.max_failures}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise SafemaxError(f"ray.num_cpus must be >= 1 or null (enough for the workers), got {self.num_cpus}")


@dataclass
class UnlearnConfig(Settings):
    """One unlearning run: which class, which method, its hyperparameters, and where results go."""

    forget_class: int | list[int] = 0  # a class, or a list of classes to forget together in one model
    method: str = setting("safemax", "unlearning method")
    workload: str = setting(
        DEFAULT_WORKLOAD, "what the run unlearns (default: classes of a class-conditional pixel model)"
    )
    workload_settings: dict[str, Any] = field(default_factory=dict)  # the workload's own (YAML: its section)
    dataset: str = setting("digits", "the images the model was trained on", choices=DATASETS)
    data_root: str | None = setting(None, "CIFAR-10 root or ImageFolder tree")
    image_size: int | None = setting(None, "ImageFolder: resize to this square size")
    model: str | None = setting(None, "diffusers model folder (default: the shipped digits model)")
    classifier: str | None = setting(None, "evaluation classifier folder (default: the shipped digits one)")
    method_options: dict[str, Any] = field(default_factory=dict)  # the method's own (safemax: lam, alpha, ...)
    lr: float | None = setting(None, "Adam learning rate (default: the method's)")
    iterations: int = setting(200, "optimiser steps")
    batch_size: int = setting(128, "global images per stream per step (forget and remain each)")
    seed: int = setting(0, "training randomness (batches, noise, timesteps)")
    grad_clip: float = setting(1.0, "gradient-norm clip")
    stats_every: int = setting(10, "steps between host syncs for loss statistics on a GPU")
    compile: bool | None = setting(None, "torch.compile the UNet (default: on CUDA for runs long enough to pay)")
    results_dir: str = setting("safemax_results", "Parquet results folder or s3:// URI")
    output_dir: str | None = None  # None: <results_dir>/_models/<run_id>
    study: str = setting("", "label stored with the results; the MLflow experiment")
    tracking_uri: str | None = setting(
        None, "MLflow tracking URI, e.g. sqlite:///mlflow.db or http://host:5000 (default: $MLFLOW_TRACKING_URI)"
    )
    eval: EvalConfig = field(default_factory=EvalConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def validate(self) -> None:
        check_fields(self, "config")  # a field set after the config was built (the workload's own: preflight)
        self.eval.validate()
        self.ray.validate()
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
        given = self.forget_class if isinstance(self.forget_class, list) else [self.forget_class]
        if not given or min(given) < 0:
            raise SafemaxError(
                f"forget_class must be a class >= 0 or a non-empty list of them, got {self.forget_class}"
            )
        if len(set(given)) < len(given):
            raise SafemaxError(f"forget_class lists a class twice: {self.forget_class}; name each class once")
        if self.image_size is not None and self.image_size < 1:
            raise SafemaxError(f"image_size must be >= 1 or null (the images' own size), got {self.image_size}")
        if self.seed < 0:
            raise SafemaxError(f"seed must be >= 0, got {self.seed}")
        if not self.results_dir:
            raise SafemaxError("results_dir is empty: name a folder or an s3:// / gs:// URI")
        if self.stats_every < 1:
            raise SafemaxError(f"stats_every must be >= 1, got {self.stats_every}")
        self.options()

    def with_absolute_paths(self, fix: Callable[[str | None], str | None]) -> UnlearnConfig:
        """A copy with every local path passed through `fix` (Ray workers run in other folders)."""
        return replace(
            self,
            workload_settings=dict(self.workload_settings),  # the workload makes its own paths absolute
            model=fix(self.model),
            classifier=fix(self.classifier),
            data_root=fix(self.data_root),
            results_dir=fix(self.results_dir) or self.results_dir,
            output_dir=fix(self.output_dir),
            tracking_uri=tracking_uri(self.tracking_uri),
            method_options=dict(self.method_options),
            eval=replace(self.eval, fid_weights=fix(self.eval.fid_weights)),
            ray=replace(self.ray, storage_path=fix(self.ray.storage_path)),
        )

    def classes_given(self) -> list[int]:
        """`forget_class` as a sorted list; what the run forgets is its workload's answer (`forget_classes`)."""
        return sorted(set(self.forget_class)) if isinstance(self.forget_class, list) else [self.forget_class]

    def learning_rate(self) -> float:
        """`lr`, or the method's default when it is not set."""
        return self.lr if self.lr is not None else get_method(self.method).DEFAULT_LR

    def options(self) -> Any:
        """The method's typed options (defaults filled in), validated; unknown names refused."""
        return method_options(self.method, self.method_options)

    @classmethod
    def from_mapping(cls, data: dict[str, Any], where: str = "config") -> UnlearnConfig:
        """From YAML or a stored row's config: a section named after a workload (`concept: {...}`) is
        that workload's settings; a `null` one, as older rows store, is no workload's."""
        data = dict(data)
        for name in set(data) & set(available_workloads()):
            section = data.pop(name)
            if section is not None:
                data["workload"], data["workload_settings"] = name, section
        return from_dict(cls, data, where=where)


def load_unlearn_config(path: str | Path | None = None, **overrides: Any) -> UnlearnConfig:
    """Defaults, then the YAML file, then explicit overrides (None means 'not given')."""
    data = read_yaml(path) if path else {}
    moved = sorted(set(data) & MOVED_TO_OPTIONS)
    if moved:
        raise SafemaxError(
            f"{path}: {', '.join(moved)} belong to the method now: put them under method_options "
            f"(e.g. method_options: {{{moved[0]}: {data[moved[0]]!r}}})"
        )
    config = UnlearnConfig.from_mapping(data, where=str(path or "config"))
    return apply_overrides(config, overrides)
