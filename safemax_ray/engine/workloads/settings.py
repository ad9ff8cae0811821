"""A workload's own settings: the section of a run's YAML named after the workload, and its flags.

The config holds them as a mapping (`workload_settings`) and reads them through the workload's
`Settings` class, which may also say what the run's classes are where they are not the labels given
(a concept run's "classes" are its prompts).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import ClassVar

from safemax_ray.schema import Settings


@dataclass
class WorkloadSettings(Settings):
    """No settings of its own: the class labels given are the classes forgotten."""

    #: fields that hold local paths, made absolute before Ray workers (in other folders) read them
    PATH_FIELDS: ClassVar[tuple[str, ...]] = ()

    def validate(self) -> None:
        """Refuse what cannot run, in one line (SafemaxError)."""

    def forget_classes(self, given: list[int]) -> list[int]:
        """The model's labels that the run forgets."""
        return given

    def forget_label(self, classes: list[int]) -> str:
        """How run ids and keys name what is forgotten: '3', or '3+7' for classes forgotten together."""
        return "+".join(map(str, classes))

    def data_name(self, dataset: str) -> str:
        """The row's `dataset`: what the training images are."""
        return dataset

    def with_absolute_paths(self, fix: Callable[[str | None], str | None]) -> WorkloadSettings:
        return replace(self, **{name: fix(getattr(self, name)) or getattr(self, name) for name in self.PATH_FIELDS})
