"""MLflow tracking, optional: each run an MLflow run (its parameters, the loss by step, the figures,
`samples.png` and its Parquet row), a Tune study a parent run with a child per trial.

The tracking URI comes from `tracking_uri` (YAML, `--tracking-uri`, the Python API) or, as MLflow users
expect, `MLFLOW_TRACKING_URI`. Tracking never costs a run: a store that is down or refuses, or MLflow
not installed, gives one warning and the run goes on untracked. A `Tracker` is two strings, so it
travels to Ray workers and tasks; it talks to MLflow through `MlflowClient` with explicit run ids (no
global active run), as Ray's own MLflow guide does from inside a training function.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ENV = "MLFLOW_TRACKING_URI"
RUN_TAG = "safemax.run_id"  # our run id, on the MLflow run
PARENT_TAG = "mlflow.parentRunId"  # what MLflow's UI nests child runs by


def tracking_uri(configured: str | None) -> str | None:
    """The configured URI, else $MLFLOW_TRACKING_URI; None: no tracking. A SQLite store's file is made
    absolute here, in the driver: Ray workers and tasks run in other folders."""
    uri = configured or os.environ.get(ENV) or None
    if uri and uri.startswith(SQLITE) and not uri.startswith(SQLITE + "/"):
        return SQLITE + os.path.abspath(uri.removeprefix(SQLITE))
    return uri


SQLITE = "sqlite:///"


def _artifact_location(uri: str) -> str | None:
    """Beside a SQLite store's file (MLflow's default, ./mlruns, depends on the process's folder)."""
    if uri.startswith(SQLITE):
        return Path(uri.removeprefix(SQLITE)).parent.joinpath("mlruns").as_uri()
    return None


@lru_cache(maxsize=8)
def _client(uri: str):
    # A dead server must cost seconds, not MLflow's default minutes of retries; a user's settings win.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    from mlflow import MlflowClient

    return MlflowClient(uri)


@dataclass(frozen=True)
class Tracker:
    """One MLflow run, or none (`run_id` None): then every call does nothing."""

    uri: str | None = None
    run_id: str | None = None

    def __bool__(self) -> bool:
        return self.run_id is not None

    @classmethod
    def start(
        cls,
        uri: str | None,
        experiment: str,
        name: str,
        params: dict[str, Any],
        parent: Tracker | None = None,
    ) -> Tracker:
        """A new MLflow run in `experiment` (made if missing), with `params`; a child of `parent` if given."""
        if uri is None:
            return UNTRACKED

        def create() -> Tracker:
            client = _client(uri)
            found = client.get_experiment_by_name(experiment)
            location = _artifact_location(uri)
            experiment_id = found.experiment_id if found else client.create_experiment(experiment, location)
            tags = {RUN_TAG: name, **({PARENT_TAG: parent.run_id} if parent else {})}
            run = client.create_run(experiment_id, run_name=name, tags=tags)
            tracker = cls(uri, run.info.run_id)
            tracker._call("log_batch", params=_params(params))
            return tracker

        return _guarded(uri, create) or UNTRACKED

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        """Metrics at a training step (the loss and its parts), from rank 0."""
        if not self:  # untracked, MLflow is not even imported (0.6 s of every Train worker's start)
            return
        self._call("log_batch", metrics=_metrics(metrics, step))

    def finish(self, metrics: dict[str, Any], files: tuple[str, ...] = (), status: str = "FINISHED") -> None:
        """The final figures (the numbers among `metrics`; e.g. a whole row), the files (samples.png, the
        row's Parquet file) as artifacts; the run ends."""
        if not self:
            return
        self._call("log_batch", metrics=_metrics(metrics, None))
        for path in files:
            if os.path.isfile(path):  # an object-store row or config is not sent twice
                self._call("log_artifact", local_path=path)
        self._call("set_terminated", status=status)

    def failed(self, reason: str) -> None:
        """The run ended without a result: why, and status FAILED."""
        self._call("set_tag", key="safemax.failure", value=reason[:5000])
        self._call("set_terminated", status="FAILED")

    def end_children(self, status: str) -> None:
        """End this run's child runs that are still running (trials stopped before they could)."""
        if not self:
            return

        def end() -> None:
            client = _client(self.uri)
            experiment = client.get_run(self.run_id).info.experiment_id
            query = f"tags.`{PARENT_TAG}` = '{self.run_id}' and attributes.status = 'RUNNING'"
            for run in client.search_runs([experiment], filter_string=query):
                client.set_terminated(run.info.run_id, status=status)

        _guarded(self.uri, end)

    @contextmanager
    def failing_on_error(self) -> Iterator[None]:
        """An error inside ends the MLflow run as FAILED, with the error's first line, and goes on up."""
        try:
            yield
        except Exception as exc:  # not an interrupt: that ends the process, and MLflow with it
            self.failed(_first_line(exc))
            raise

    def _call(self, method: str, **kwargs: Any) -> None:
        if self:
            _guarded(self.uri, lambda: getattr(_client(self.uri), method)(self.run_id, **kwargs))


UNTRACKED = Tracker()  # the tracker of a run without a tracking URI

_FAILED: set[str] = set()  # URIs that failed in this process: warned once, not tried again


def _guarded(uri: str, call):
    if uri in _FAILED:
        return None
    try:
        return call()
    except Exception as exc:  # noqa: BLE001  (tracking must never cost a run)
        _FAILED.add(uri)
        log.warning("MLflow tracking at %s failed, the run goes on untracked: %s", uri, _first_line(exc))
        return None


def _first_line(exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text.splitlines()[0][:300]


def _params(params: dict[str, Any]):
    from mlflow.entities import Param

    return [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]


def _metrics(values: dict[str, Any], step: int | None):
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    numbers = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return [Metric(k, v, now, step or 0) for k, v in sorted(numbers.items()) if math.isfinite(v)]
