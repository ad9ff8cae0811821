"""How a run ended, as one typed value instead of keys to look for in a metrics dict.

The Train workers put `status` into every report; `Outcome` is what the drivers act on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from safemax_ray.errors import SafemaxError

STATUS = "status"  # the report key that carries a Status value


class Status(str, Enum):
    RUNNING = "running"  # a mid-run checkpoint
    TRAINED = "trained"  # training done; the evaluation is still to come (spread over the cluster)
    FINISHED = "finished"  # trained and evaluated: a row can be written
    DIVERGED = "diverged"  # the loss or a gradient became non-finite
    STOPPED = "stopped"  # stopped early by a Tune scheduler before its final report
    FAILED = "failed"  # an error ended it


@dataclass
class Outcome:
    status: Status
    metrics: dict[str, Any] = field(default_factory=dict)
    checkpoint: Any = None  # ray.train.Checkpoint of the last report that carried one
    reason: str = ""  # why it did not finish, in one line

    def require(self, *wanted: Status) -> Outcome:
        """Self, when its status is one of `wanted`; else its reason as a one-line SafemaxError."""
        if self.status not in wanted:
            raise SafemaxError(self.reason or f"the run ended {self.status.value}")
        return self
