"""The workload interface: what a run unlearns, asked once and answered by one object.

A workload is the kind of model and data a run works on: classes of a class-conditional pixel model
(`classes.py`), a concept of a text-to-image pipeline (`concepts.py`), classes of a latent DiT
(`dit.py`), or one installed through the entry-point group. It declares everything the other layers
ask about: its settings (`Settings`), the Parquet columns its rows add, its report section, how `--plan`
counts it, and how `attack` and the ASHA probe judge it. The engine, the Ray layer, the drivers and the
results call these and never ask which workload they hold; `workload_for` (in `__init__.py`) is the one
place that chooses.

Everything else of a run is shared: a workload hands the engine a `DiffusionModel` (a UNet called with
class labels, the null label last) and `ImageData` (images or latents with labels), so every method,
the sampler, Ray Train, checkpoints and rows work on it unchanged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from safemax_ray.config import UnlearnConfig
from safemax_ray.core.data import ImageData
from safemax_ray.core.models import DiffusionModel
from safemax_ray.engine.workloads.settings import WorkloadSettings
from safemax_ray.errors import SafemaxError
from safemax_ray.schema import from_dict, to_dict

if TYPE_CHECKING:
    import pandas as pd

    from safemax_ray.engine.attack import Judge
    from safemax_ray.engine.evaluate import Sampler


@dataclass
class Evaluation:
    """A workload's verdict on an unlearned model, and the samples its grid shows (in pixels)."""

    metrics: dict[str, Any]
    images: torch.Tensor
    labels: torch.Tensor


@dataclass
class AttackSubject:
    """What `attack` works on: the attacked model, the data it is fine-tuned on, and the judge of its
    forget-class samples."""

    model: DiffusionModel
    data: ImageData
    judge: Judge


class Workload(ABC):
    """One run's model, data, evaluation and export, built from its validated config."""

    #: its own settings: the YAML section named after it, and its flags
    Settings: ClassVar[type[WorkloadSettings]] = WorkloadSettings

    #: the Parquet columns its rows add, {name: float | int | bool | str}; null in other workloads' rows
    row_columns: ClassVar[dict[str, type]] = {}

    #: a column only its rows fill: how rows written before the `workload` column are recognised
    marks_rows: ClassVar[str | None] = None

    #: False: a run forgets what its settings name, once; batch, compare, tune, --plan and attack refuse it
    runs_class_by_class: ClassVar[bool] = True
    one_run_hint: ClassVar[str] = "run it with `safemax-ray unlearn`"

    def __init__(self, cfg: UnlearnConfig):
        self.cfg = cfg
        where = f"{cfg.workload} (the workload's settings)"
        self.settings = from_dict(self.Settings, dict(cfg.workload_settings), where=where)
        self.settings.validate()

    def forget_classes(self) -> list[int]:
        """The model's labels the run forgets, sorted (a concept run: its prompts')."""
        return self.settings.forget_classes(self.cfg.classes_given())

    def forget_label(self) -> str:
        """'3', or '3+7' for several classes, or a concept's slug: how run ids and keys name them."""
        return self.settings.forget_label(self.forget_classes())

    def data_name(self) -> str:
        """The row's `dataset`: the images' name, or what the workload trains on."""
        return self.settings.data_name(self.cfg.dataset)

    def with_absolute_paths(self, fix: Callable[[str | None], str | None]) -> UnlearnConfig:
        """The run's config with its own settings' local paths passed through `fix`."""
        return replace(self.cfg, workload_settings=to_dict(self.settings.with_absolute_paths(fix)))

    @classmethod
    def require_class_by_class(cls, command: str) -> None:
        if not cls.runs_class_by_class:
            raise SafemaxError(f"{command} run one class at a time; this workload forgets once: {cls.one_run_hint}")

    # -- identity: what the run key and the row say about the model ---------------------------------
    @abstractmethod
    def model_id(self) -> str:
        """The base model by content, for run keys and caches."""

    def identity(self) -> dict[str, Any]:
        """What this workload adds to the run's identity beyond the common settings."""
        return {}

    @abstractmethod
    def base_model(self) -> str:
        """The base model's folder (the row's `base_model`; `attack`'s ceiling)."""

    def row_fields(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Its own columns (`row_columns`) of the row for `metrics`."""
        return {name: metrics.get(name) for name in self.row_columns}

    #: (metric, label) pairs that a summary table shows, base model beside unlearned
    table_metrics: tuple[tuple[str, str], ...] = ()

    @abstractmethod
    def describe(self) -> str:
        """What the run forgets, in a few words: "class 3 (digits)", "concept 'a dog'"."""

    def notes(self) -> list[str]:
        """One-line caveats on its figures that a reader of the summary table needs (none by default)."""
        return []

    # -- before Ray starts -----------------------------------------------------------------------------
    @abstractmethod
    def check(self) -> None:
        """Load what the workers will load and refuse what cannot run, in one line (SafemaxError)."""

    # -- on each rank ------------------------------------------------------------------------------------
    @abstractmethod
    def open(self, device: torch.device, cache_dir: str | None) -> tuple[DiffusionModel, ImageData]:
        """The model to unlearn, on `device`, and the data it trains on."""

    @abstractmethod
    def save_model(self, model: DiffusionModel, folder: Path) -> None:
        """Write the model being unlearned into a checkpoint's model folder."""

    @abstractmethod
    def load_weights(self, unet: torch.nn.Module, folder: Path) -> None:
        """Load a checkpoint's model folder into `unet` in place."""

    @abstractmethod
    def evaluate(
        self, model: DiffusionModel, data: ImageData, sample: Sampler, cache_dir: str | None, rank: int = 0
    ) -> Evaluation:
        """Judge the unlearned `model` beside the base model, drawing samples with `sample` (over the
        run's ranks, or over the cluster); the metrics are on rank 0 only. The one evaluation path."""

    def evaluates_in_workers(self, model: DiffusionModel, data: ImageData) -> bool:
        """True when the Train workers evaluate the run themselves (they hold the model already); False
        when the driver evaluates the final checkpoint with the cluster's evaluation tasks
        (`eval.workers`, ray/evaluation.py)."""
        return True

    def probe(self, model: DiffusionModel, data: ImageData, n: int, rank: int, world: int, gather) -> dict[str, float]:
        """A cheap mid-run score for ASHA (`probe_*` figures and `score`), drawn over the run's ranks."""
        raise SafemaxError(f"{type(self).__name__} has no mid-run probe: run tune without a scheduler")

    # -- after the run -----------------------------------------------------------------------------------
    @abstractmethod
    def export(self, checkpoint_folder: Path, out: Path) -> None:
        """Write what users load (a model or pipeline folder) and its sample grids into `out`."""

    def attack_subject(self, model_path: str, device: torch.device) -> AttackSubject:
        """The model at `model_path` (an exported one, or the base), its data and its judge, for `attack`."""
        raise SafemaxError(f"{type(self).__name__} runs cannot be attacked: attack judges forget-class samples")

    def plan_sizes(self, notes: set[str]) -> tuple[int, int, int]:
        """(diffusion steps T, classes, training images per class) for `--plan`, read where the files are,
        else assumed (and the assumption added to `notes`)."""
        raise SafemaxError(f"--plan counts class runs; {type(self).__name__} runs are not planned")

    # -- in the report -----------------------------------------------------------------------------------
    @classmethod
    def report_tables(cls, runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
        """Its section of the report: titled tables of its runs (`results.loading.load_runs` rows)."""
        return {}

    @classmethod
    def report_figures(cls, runs: pd.DataFrame, folder: Path, results_dir: str) -> list[Path]:
        """The figures of its runs, written into `folder`."""
        return []


def draw_grids(images: torch.Tensor, labels: torch.Tensor, forget: list[int], folder: Path) -> None:
    """`samples.png` (a row per class, the forgotten ones first) and the forget rows alone."""
    from safemax_ray.engine.checkpoint import FORGET_GRID, SAMPLES_GRID
    from safemax_ray.engine.evaluate import save_grid

    save_grid(images, labels, forget, str(folder / SAMPLES_GRID))
    is_forget = torch.isin(labels, torch.tensor(forget))
    save_grid(images[is_forget], labels[is_forget], forget, str(folder / FORGET_GRID))


def load_weights_or_explain(what: str, path: str, load: Callable[[], Any]) -> None:
    """Run `load`; a file that cannot be read becomes one line that says which and what to do."""
    try:
        load()
    except SafemaxError:
        raise
    except Exception as exc:  # noqa: BLE001  (truncated or corrupt files raise OSError, SafetensorError, ...)
        raise SafemaxError(
            f"cannot read the {what} weights in {path} ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            "the files may be truncated: copy or export them again"
        ) from None
