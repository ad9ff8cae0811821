"""`safemax-ray attack RUN`: relearning attacks and the trajectory probe on an unlearned model, with the
base model under the same attack as the ceiling. Each (model, setting) is a Ray task; the rows of one
attack go to `<results_dir>/attacks/<attack_id>.parquet`, joined to the runs by run_id.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from safemax_ray.config import UnlearnConfig
from safemax_ray.engine.attack import AttackSettings
from safemax_ray.engine.workloads import workload_for
from safemax_ray.errors import SafemaxError
from safemax_ray.results import layout
from safemax_ray.results.parquet import read_dataframe, write_attack
from safemax_ray.schema import checked, from_dict

DEFAULT_SHOTS = (1, 5, 10, 50)
DEFAULT_STEPS = (0, 10, 50, 100, 500)
PROBE_FRACTIONS = (0.25, 0.5, 0.75)


@dataclass
class AttackedModel:
    """What is attacked: the unlearned model, its base model and how it was judged."""

    model_path: str
    cfg: UnlearnConfig  # the run's: its workload knows the data, the judge and the base model
    run_id: str | None = None


@dataclass
class AttackResult:
    attack_id: str
    rows: list[dict[str, Any]]
    path: str
    recovered: dict[tuple[str, int], int | None] = field(default_factory=dict)  # (model, shots) -> steps


def find_attacked_model(run_or_folder: str, results_dir: str, forget_class: int | None) -> AttackedModel:
    """A run id stored under `results_dir`, or an unlearned model folder (then --forget-class is needed)."""
    if Path(run_or_folder, "unet", "config.json").is_file():
        if forget_class is None:
            raise SafemaxError(f"{run_or_folder} is a model folder: say which class it forgot with --forget-class")
        return AttackedModel(str(Path(run_or_folder).resolve()), UnlearnConfig(forget_class=forget_class))
    rows = read_dataframe(results_dir)
    match = rows[rows.run_id == run_or_folder]
    if match.empty:
        raise SafemaxError(f"{run_or_folder!r} is neither a model folder nor a run id stored under {results_dir}")
    row = match.iloc[0]
    cfg = UnlearnConfig.from_mapping(json.loads(row.config_json), where=f"run {run_or_folder}")
    workload = workload_for(cfg)
    workload.require_class_by_class("attacks")
    if len(workload.forget_classes()) > 1:
        raise SafemaxError(f"run {run_or_folder} forgot classes {workload.forget_label()}: attack one class at a time")
    if forget_class is not None and [forget_class] != workload.forget_classes():
        raise SafemaxError(f"run {run_or_folder} forgot class {workload.forget_label()}, not {forget_class}")
    return AttackedModel(layout.stored_path(results_dir, row.model_path), cfg, run_or_folder)


def _task(kind: str, model_path: str, cfg: dict, shots: int, steps: list[int], settings: dict, use_gpu: bool):
    """One Ray task: one model under one attack setting (or the trajectory probe)."""
    import torch

    from safemax_ray.engine import attack

    s = from_dict(AttackSettings, settings)
    device = torch.device("cuda" if use_gpu else "cpu")
    subject = workload_for(UnlearnConfig.from_mapping(cfg)).attack_subject(model_path, device)
    model, data, judge = subject.model, subject.data, subject.judge
    if kind == "trajectory":
        return [{"kind": kind, **r} for r in attack.trajectory_probe(model, data, judge, list(PROBE_FRACTIONS), s)]
    rows = attack.relearn(model, data, judge, shots, steps, s)
    recovered = attack.steps_to_recover(rows)
    return [{"kind": kind, "shots": shots, "steps_to_recover": recovered, **r} for r in rows]


@checked
def attack(
    run_or_folder: str,
    results_dir: str = "safemax_results",
    forget_class: int | None = None,
    shots: tuple[int, ...] | list[int] = DEFAULT_SHOTS,
    steps: tuple[int, ...] | list[int] = DEFAULT_STEPS,
    settings: AttackSettings | None = None,
    with_base: bool = True,
    address: str | None = None,
    use_gpu: bool | None = None,
) -> AttackResult:
    """Attack the model (and the base model, the ceiling) with every setting; store and return the rows."""
    import ray

    from safemax_ray.drivers.preflight import absolute, preflight
    from safemax_ray.ray.cluster import cluster_has_gpus, connected

    results_dir = absolute(results_dir)
    settings = settings or AttackSettings()
    if any(k < 0 for k in shots) or any(s < 0 for s in steps) or not steps:
        raise SafemaxError("--shots and --steps take numbers >= 0 (and at least one step count)")
    found = find_attacked_model(run_or_folder, results_dir, forget_class)
    run = preflight(found.cfg)
    base = workload_for(run).base_model()
    models = [("unlearned", found.model_path)] + ([("base", base)] if with_base else [])
    attack_id = f"attack-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    with connected(address):
        gpu = cluster_has_gpus() if use_gpu is None else use_gpu
        task = ray.remote(_task).options(num_cpus=1, num_gpus=1 if gpu else 0, scheduling_strategy="SPREAD")
        cfg = asdict(run)
        jobs = {}
        for label, path in models:
            for k in [*shots, 0]:
                jobs[task.remote("relearn", path, cfg, k, sorted(steps), asdict(settings), gpu)] = (label, path)
            jobs[task.remote("trajectory", path, cfg, 0, [], asdict(settings), gpu)] = (label, path)
        rows = []
        for ref, (label, path) in jobs.items():
            rows += [{"model": label, "model_path": path, **r} for r in ray.get(ref)]
    common = {
        "attack_id": attack_id,
        "timestamp": datetime.now(timezone.utc),
        "run_id": found.run_id,
        "method": run.method if found.run_id else None,
        "dataset": run.dataset,
        "forget_class": run.classes_given()[0],
        "settings_json": json.dumps(asdict(settings), sort_keys=True),
    }
    rows = [{**common, **r} for r in rows]
    path = write_attack(results_dir, attack_id, rows)
    recovered = {(r["model"], r["shots"]): r["steps_to_recover"] for r in rows if r["kind"] == "relearn"}
    return AttackResult(attack_id, rows, path, recovered)
