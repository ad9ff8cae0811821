"""Batch unlearning: one run per class, as many at once as the cluster fits, resumable.

Every run has a deterministic key (method, dataset, class, a hash of everything that changes the result,
seed). A batch first reads the
results dataset and skips every class whose key already has a row, so re-running a batch after a crash,
a kill or a failed run repeats only what is missing and never writes a second row for the same key.
Each run is its own Ray task that trains, evaluates, exports its model and writes its own Parquet file;
killing the batch loses at most the runs in flight. A run's task that dies with its node is started
again on a surviving node (up to `ray.max_failures` times) and resumes from the run's last checkpoint:
its Ray Train run keeps its name within a batch, and Ray Train restores a run by name.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from safemax_ray import storage
from safemax_ray.config import UnlearnConfig
from safemax_ray.engine.workloads import workload_for
from safemax_ray.errors import SafemaxError
from safemax_ray.identity import run_key
from safemax_ray.results import layout
from safemax_ray.results.parquet import read_dataframe, read_row
from safemax_ray.schema import checked, to_dict


def parse_classes(spec: str) -> list[int]:
    """'0-9', '1,3,5' or '0-2,7' -> sorted class indices; a class named twice is refused."""
    classes: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise SafemaxError(f"bad class list {spec!r}: use numbers and ranges such as 0-9 or 0,2,5-7")
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        if high < low:
            raise SafemaxError(f"bad class range {part!r}: the end is before the start")
        twice = classes & set(range(low, high + 1))
        if twice:
            raise SafemaxError(f"bad class list {spec!r}: class {min(twice)} is named twice; name each class once")
        classes.update(range(low, high + 1))
    return sorted(classes)


def tuned_params(results_dir: str, dataset: str, study: str | None = None) -> dict[int, dict[str, Any]]:
    """Per forget class, the settings of its best (highest-score) stored Tune trial: lr, iterations and
    the method's options."""
    df = read_dataframe(results_dir)
    df = df[df.score.notna() & (df.dataset == dataset)]
    if study:
        df = df[df.study == study]
    if df.empty:
        raise SafemaxError(
            f"no tuned trials for dataset {dataset!r} under {results_dir}"
            + (f" in study {study!r}" if study else "")
            + "; run `safemax-ray tune` first"
        )
    best = df.sort_values("score", ascending=False).groupby("forget_class").head(1)
    return {
        int(r.forget_class): {
            "lr": float(r.lr),
            "iterations": int(r.iterations),
            "method_options": json.loads(r.method_options_json),
        }
        for r in best.itertuples()
    }


@dataclass
class BatchResult:
    done: list[dict[str, Any]] = field(default_factory=list)  # rows written by this batch
    skipped: list[str] = field(default_factory=list)  # "method class c" of runs that already had a row
    failed: dict[str, str] = field(default_factory=dict)  # "method class c" -> error
    seconds: float = 0.0
    results_dir: str = ""  # where the rows are (absolute)
    run_keys: list[str] = field(default_factory=list)  # the key of every planned run, stored or not


def per_class_configs(
    base: UnlearnConfig, classes: list[int], params: dict[int, dict[str, Any]] | None = None
) -> list[UnlearnConfig]:
    """One run per class: `base` with that forget class and, where `params` has the class, its tuned lr,
    iterations and method options."""
    configs = []
    for c in classes:
        cfg = replace(
            base,
            forget_class=c,
            eval=replace(base.eval),
            ray=replace(base.ray),
            method_options=dict(base.method_options),
        )
        tuned = (params or {}).get(c, {})
        cfg.lr = float(tuned["lr"]) if "lr" in tuned else cfg.lr
        cfg.iterations = int(tuned.get("iterations", cfg.iterations))
        cfg.method_options.update(tuned.get("method_options", {}))
        cfg.output_dir = None
        configs.append(cfg)
    return configs


def _one_run(config: dict[str, Any], use_gpu: bool, batch_id: str) -> dict[str, Any]:
    """A Ray task: one class, start to finish, with a row named after its run key. Started again after
    its node died, it resumes the Ray Train run of the same name, or returns the row its first attempt
    wrote just before dying."""
    from safemax_ray.drivers.finish import finish_run, start_tracking
    from safemax_ray.ray.run import train_and_evaluate

    cfg = UnlearnConfig.from_mapping(config)
    run_id = run_key(cfg)
    written = read_row(cfg.results_dir, run_id)
    if written is not None:
        return written
    output = storage.join(layout.models_dir(cfg.results_dir), run_id)
    if not storage.is_uri(output) and Path(output).exists():
        # Left by a run killed before its row was written: not a result, so it is redone.
        shutil.rmtree(output)
    tracker = start_tracking(cfg, run_id)
    with tracker.failing_on_error():
        outcome = train_and_evaluate(
            cfg,
            name=f"batch-{run_id}-{batch_id}",
            storage_path=layout.ray_storage(cfg.results_dir, cfg.ray.storage_path),
            use_gpu=use_gpu,
            cache_dir=layout.cache_dir(cfg.results_dir),
            tracker=tracker,
        )
    row, _ = finish_run(cfg, outcome, run_id, output, "cuda" if use_gpu else "cpu", tracker)
    return row


@checked
def batch_unlearn(
    base: UnlearnConfig,
    classes: list[int],
    params: dict[int, dict[str, Any]] | None = None,
    max_concurrent: int | None = None,
    console: Console | None = None,
    together: bool = False,
) -> BatchResult:
    """Unlearn each class in `classes` with `base`'s settings (or tuned `params` per class), one model
    per class; `together`: one model that forgets all of them."""
    return run_all(batch_configs(base, classes, params, together), max_concurrent, console)


def batch_configs(
    base: UnlearnConfig, classes: list[int], params: dict[int, dict[str, Any]] | None = None, together: bool = False
) -> list[UnlearnConfig]:
    """The runs of a batch: one per class, or one that forgets them all (`together`)."""
    if not classes:
        raise SafemaxError("no classes to unlearn")
    if together:
        if params:
            raise SafemaxError("--tuned-from sets settings per class; it does not combine with --together")
        return [replace(per_class_configs(base, classes[:1])[0], forget_class=list(classes))]
    return per_class_configs(base, classes, params)


SETUP_POLL_S = 2.0


class SharedSetups:
    """Which runs may start now: a run whose method's set-up does not depend on the class waits until
    its set-up is in the cache, and one run of each such set-up (the first) computes it meanwhile, while
    the other runs of the batch go ahead. The set-up is then charged to that run alone, as before."""

    def __init__(self, configs: list[UnlearnConfig], use_gpu: bool):
        from safemax_ray.methods import get_method

        device = "cuda" if use_gpu else "cpu"
        self.paths: dict[int, str | None] = {}
        for cfg in configs:
            name = get_method(cfg.method).setup_cache_name(
                workload_for(cfg).model_id(), cfg.options(), cfg.seed, device
            )
            self.paths[id(cfg)] = storage.join(layout.cache_dir(cfg.results_dir), name) if name else None
        self.computing: dict[Any, str] = {}  # in-flight run -> the set-up it computes

    def next_runnable(self, queue: list[UnlearnConfig]) -> UnlearnConfig | None:
        for cfg in queue:
            path = self.paths[id(cfg)]
            if path is None or path not in self.computing.values() or storage.exists(path):
                return cfg
        return None

    def started(self, cfg: UnlearnConfig, ref: Any) -> None:
        path = self.paths[id(cfg)]
        if path is not None and not storage.exists(path) and path not in self.computing.values():
            self.computing[ref] = path

    def ended(self, ref: Any) -> None:
        self.computing.pop(ref, None)  # done or failed: a waiting run may compute it next


def label(cfg: UnlearnConfig) -> str:
    return f"{cfg.method} class {workload_for(cfg).forget_label()}"


def failure_reason(exc: Exception, retries: int) -> str:
    """One line: the run's own error, or its task's death after every attempt Ray made."""
    import ray.exceptions

    first_line = (str(exc).strip().splitlines() or [""])[0]
    if isinstance(exc, ray.exceptions.RayTaskError):  # the run raised: not retried
        return f"{type(exc.cause).__name__}: {str(exc.cause).strip().splitlines()[0]}"
    return f"{type(exc).__name__} after {retries + 1} attempt(s): {first_line}"


def run_all(configs: list[UnlearnConfig], max_concurrent: int | None = None, console: Console | None = None):
    """Run every config not stored yet, as many at once as the cluster fits; one row each."""
    import ray

    from safemax_ray.ray.cluster import cluster_has_gpus, connected

    console = console or Console(quiet=True)
    configs = _prepared(configs)
    first, results_dir = configs[0], configs[0].results_dir
    stored = set(read_dataframe(results_dir).run_key)
    keys = [run_key(c) for c in configs]
    todo = [c for c, key in zip(configs, keys, strict=True) if key not in stored]
    outcome = BatchResult(
        skipped=[label(c) for c, key in zip(configs, keys, strict=True) if key in stored],
        results_dir=results_dir,
        run_keys=keys,
    )
    if outcome.skipped:
        console.log(f"already stored, skipped: {', '.join(outcome.skipped)}")
    if not todo:
        return outcome
    began = time.perf_counter()
    # One CPU beside the workers for the run's scoring and export, so runs at once do not oversubscribe.
    per_run_cpus = 1 + first.ray.num_workers * first.ray.cpus_per_worker
    with connected(first.ray.address, first.ray.num_cpus or max(4, int(2 * per_run_cpus))):
        use_gpu = cluster_has_gpus() if first.ray.use_gpu is None else first.ray.use_gpu
        fits = int(ray.cluster_resources().get("CPU", 1) // per_run_cpus)
        limit = max(1, max_concurrent or fits)
        console.log(f"{len(todo)} runs, {limit} at a time, {first.ray.num_workers} worker(s) each")
        # The run's own task only waits on its Train workers and evaluation tasks: it holds no CPU, or
        # after a node dies the surviving runs' tasks could hold every CPU their restarted workers need.
        # Ray retries it only when its process or node dies; an error of the run itself is final.
        retries = first.ray.max_failures
        task = ray.remote(_one_run).options(num_cpus=0, max_retries=retries)
        batch_id = str(time.time_ns())  # a retried task resumes its run; a new batch starts afresh
        shared = SharedSetups(todo, use_gpu)
        pending: dict[Any, UnlearnConfig] = {}
        queue = list(todo)
        try:
            while queue or pending:
                while len(pending) < limit and (cfg := shared.next_runnable(queue)) is not None:
                    queue = [c for c in queue if c is not cfg]
                    ref = task.remote(to_dict(cfg), use_gpu, batch_id)
                    pending[ref] = cfg
                    shared.started(cfg, ref)
                # Wake up now and then: a set-up another run computes may have become readable meanwhile.
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=SETUP_POLL_S if queue else None)
                if not ready:
                    continue
                shared.ended(ready[0])
                _collect(ready[0], label(pending.pop(ready[0])), outcome, retries, console)
        except KeyboardInterrupt:
            # The runs in flight stop with the batch, also when its process lives on (a notebook, a
            # service): they would otherwise finish unseen and store rows nobody waits for.
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
    outcome.seconds = time.perf_counter() - began
    return outcome


def _prepared(configs: list[UnlearnConfig]) -> list[UnlearnConfig]:
    """Each run checked, with absolute paths; by default one CPU (one thread) a worker, since several
    runs share each node and Ray packs them by CPU count."""
    from safemax_ray.drivers.preflight import preflight

    for cfg in configs:
        workload_for(cfg).require_class_by_class("batch and compare")
    if configs[0].ray.cpus_per_worker is None:
        configs = [replace(c, ray=replace(c.ray, cpus_per_worker=1.0)) for c in configs]
    return [preflight(cfg) for cfg in configs]


def _collect(ref, name: str, outcome: BatchResult, retries: int, console: Console) -> None:
    """An ended run's row into `outcome.done`, or its failure, in one line, into `outcome.failed`."""
    import ray

    try:
        row = ray.get(ref)
    except Exception as exc:  # noqa: BLE001  (one run failing must not stop the others)
        outcome.failed[name] = failure_reason(exc, retries)
        console.log(f"[red]{name} failed[/]: {outcome.failed[name]}")
        return
    outcome.done.append(row)
    console.log(
        f"{name}: UA {row['ua']:.1f}%  H {row['entropy']:.2f}  FID {row['fid']:.2f}  "
        f"retained acc {row['retain_acc']:.1f}%  ({row['rte_s']:.0f}s + set-up {row['setup_s']:.0f}s"
        f"{', cached' if row['setup_cached'] else ''})"
    )
