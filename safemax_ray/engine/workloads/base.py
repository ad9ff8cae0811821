"""The workload interface: what a run unlearns, asked once and answered by one object.

A workload is the kind of model and data a run works on: classes of a class-conditional pixel model
(`classes.py`), a concept of a text-to-image pipeline (`concepts.py`), or a third kind. The engine, the
Ray layer and the drivers call these methods and never ask which workload they hold; `workload_for`
(in `__init__.py`) is the one place that chooses.

Everything else of a run is shared: a workload hands the engine a `DiffusionModel` (a UNet called with
class labels, the null label last) and `ImageData` (images or latents with labels), so every method,
the sampler, Ray Train, checkpoints and rows work on it unchanged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from safemax_ray.config import UnlearnConfig
from safemax_ray.core.data import ImageData
from safemax_ray.core.models import DiffusionModel
from safemax_ray.errors import SafemaxError

if TYPE_CHECKING:
    from safemax_ray.engine.evaluate import Sampler


@dataclass
class Evaluation:
    """A workload's verdict on an unlearned model, and the samples its grid shows (in pixels)."""

    metrics: dict[str, Any]
    images: torch.Tensor
    labels: torch.Tensor


class Workload(ABC):
    """One run's model, data, evaluation and export, built from its validated config."""

    #: True when the Train workers evaluate the run themselves; False when the driver evaluates the
    #: final checkpoint with the cluster's evaluation tasks (`eval.workers`, ray/evaluation.py).
    evaluates_in_workers: bool = True

    def __init__(self, cfg: UnlearnConfig):
        self.cfg = cfg

    # -- identity: what the run key and the row say about the model ---------------------------------
    @abstractmethod
    def model_id(self) -> str:
        """The base model by content, for run keys and caches."""

    def identity(self) -> dict[str, Any]:
        """What this workload adds to the run's identity beyond the common settings."""
        return {}

    @abstractmethod
    def row_fields(self) -> dict[str, Any]:
        """Its own Parquet columns: `base_model` and `concept`."""

    #: (metric, label) pairs that a summary table shows, base model beside unlearned
    metric_rows: tuple[tuple[str, str], ...] = ()

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

    # -- after the run -----------------------------------------------------------------------------------
    @abstractmethod
    def export(self, checkpoint_folder: Path, out: Path) -> None:
        """Write what users load (a model or pipeline folder) and its sample grids into `out`."""


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
