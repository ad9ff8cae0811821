"""What a comparison, batch or search will cost, before anything runs (`--plan`).

For each run: the UNet passes of training, of the method's set-up and of the evaluation (a pass is one image
through the UNet; guided sampling pushes two per image and step), and projected GPU time from per-pass
figures measured on one H200 (`scripts/bench_gpu.py`: the 38.6M reference CIFAR-10 UNet, bf16,
compiled, as long evaluations sample by default). A set-up that does not depend on the forget class
(Selective Amnesia's Fisher) and the base model's evaluation samples (one set per class and sample
count: engine/evaluate.py) are charged once, as the cache shares them.

The wall time on N GPUs is a list schedule: the shared set-ups first, then the runs, longest first, each
on the GPU that frees up first (a run trains and is evaluated on one GPU; spreading a run's evaluation
over idle GPUs, which `eval.workers: auto` does, can only shorten it).
"""

from __future__ import annotations

import heapq
import json
from dataclasses import dataclass, field

from safemax_ray.config import UnlearnConfig
from safemax_ray.engine import evaluate
from safemax_ray.engine.workloads import workload_for
from safemax_ray.methods import get_method

# scripts/bench_gpu.py on one H200, 2026-12-04 (the 38.6M reference layout; 65.2 and 67.0 ms in two runs).
# Runs under engine.loop.COMPILE_PAYS_AFTER iterations train eager, ~25% slower a step (81 ms measured
# beside other work); training is a small part of any plan, so the compiled rate stands for both.
TRAIN_PASS_MS = 65.2 / 256  # one image forward and backward: a compiled SAFEMax step of 128 + 128 images
FORWARD_PASS_MS = 78.1 / 2048  # one image forward only: a guided sampling step at batch 1024, as evaluation
FIGURES = "H200, bf16, compiled: 65.2 ms per 128+128 training step, 78.1 ms per guided step at batch 1024"
GOAL_HOURS, GOAL_GPUS = 4.0, 8  # the whole paper comparison on one 8-GPU node


@dataclass
class RunPlan:
    label: str
    method: str
    train_passes: tuple[int, int]  # (with a backward, forward only)
    eval_passes: int
    setup_passes: tuple[int, int]
    setup_key: str | None  # shared set-ups have a key; the run that starts first computes it
    base: dict[str, int]  # the base model's samples of each class this run judges: key -> passes, once per key

    @property
    def run_ms(self) -> float:
        return _ms(self.train_passes) + self.eval_passes * FORWARD_PASS_MS


@dataclass
class Plan:
    runs: list[RunPlan]
    gpus: int
    assumptions: list[str] = field(default_factory=list)

    def shared(self) -> dict[str, float]:
        """ms of each distinct shared set-up, and of each distinct base-sample set."""
        out = {r.setup_key: _ms(r.setup_passes) for r in self.runs if r.setup_key}
        out.update({key: passes * FORWARD_PASS_MS for r in self.runs for key, passes in r.base.items()})
        return out

    def gpu_hours(self) -> float:
        own_setups = sum(_ms(r.setup_passes) for r in self.runs if not r.setup_key)
        return (sum(r.run_ms for r in self.runs) + own_setups + sum(self.shared().values())) / 3.6e6

    def wall_hours(self) -> float:
        free = [0.0] * self.gpus
        jobs = sorted(self.shared().values(), reverse=True)
        jobs += sorted((r.run_ms + (0 if r.setup_key else _ms(r.setup_passes)) for r in self.runs), reverse=True)
        for ms in jobs:
            heapq.heappush(free, heapq.heappop(free) + ms)
        return max(free) / 3.6e6


def _ms(passes: tuple[int, int]) -> float:
    return passes[0] * TRAIN_PASS_MS + passes[1] * FORWARD_PASS_MS


def plan_runs(configs: list[UnlearnConfig], gpus: int = 1, evaluations: list[UnlearnConfig] = ()) -> Plan:
    """The cost of `configs` (class runs), and of `evaluations` (judging a trained run again, as a
    study's screen re-judges its best trials), from their settings alone: no file has to exist."""
    notes: set[str] = set()
    read: dict[tuple, tuple[int, int, int]] = {}  # the runs of a plan share a few models and datasets
    runs = [_run_plan(cfg, read, notes) for cfg in configs]
    runs += [_run_plan(cfg, read, notes, evaluation_only=True) for cfg in evaluations]
    return Plan(runs, gpus, sorted(notes))


def _run_plan(cfg: UnlearnConfig, read: dict, notes: set[str], evaluation_only: bool = False) -> RunPlan:
    method = get_method(cfg.method)
    options = cfg.options()
    workload = workload_for(cfg)
    where = (cfg.model, cfg.dataset, cfg.data_root, cfg.image_size)
    if where not in read:
        read[where] = workload.plan_sizes(notes)
    timesteps, num_classes, per_class = read[where]
    steps = cfg.eval.sample_steps or timesteps
    forget = workload.forget_classes()
    counts = {c: cfg.eval.n_forget_samples if c in forget else cfg.eval.n_retain_per_class for c in range(num_classes)}
    grad, fwd = method.step_passes(options, cfg.batch_size, per_class * len(forget))
    noise = evaluate.noise_settings(cfg.eval)
    trains = 0 if evaluation_only else cfg.iterations
    return RunPlan(
        label=f"{cfg.method} class {workload.forget_label()}",
        method="re-judge" if evaluation_only else cfg.method,
        train_passes=(grad * trains, fwd * trains),
        eval_passes=sum(counts.values()) * steps * 2,
        setup_passes=(0, 0)
        if evaluation_only
        else method.setup_passes(options, per_class * len(forget), num_classes, steps, timesteps),
        setup_key=None
        if method.SETUP_DEPENDS_ON_CLASS or evaluation_only
        else json.dumps([cfg.method, cfg.model, vars(options)], sort_keys=True, default=str),
        base={json.dumps([cfg.model, c, n, noise], sort_keys=True): n * steps * 2 for c, n in counts.items()},
    )


def describe(plan: Plan) -> list[str]:
    """The plan as printed lines: per method, then the totals and the goal."""
    lines = [f"{'method':<10}{'runs':>6}{'train passes':>14}{'set-up passes':>14}{'eval passes':>14}{'GPU-h':>9}"]
    for method in dict.fromkeys(r.method for r in plan.runs):
        mine = [r for r in plan.runs if r.method == method]
        shared = {r.setup_key: r for r in mine if r.setup_key}  # computed once each
        setups = [r for r in mine if not r.setup_key] + list(shared.values())
        train = sum(sum(r.train_passes) for r in mine)
        setup = sum(sum(r.setup_passes) for r in setups)
        evals = sum(r.eval_passes for r in mine)
        hours = (sum(r.run_ms for r in mine) + sum(_ms(r.setup_passes) for r in setups)) / 3.6e6
        lines.append(f"{method:<10}{len(mine):>6}{train:>14.3g}{setup:>14.3g}{evals:>14.3g}{hours:>9.1f}")
    bases = {key: passes for r in plan.runs for key, passes in r.base.items()}  # a class's samples, once
    lines.append(
        f"{'base sets':<10}{len(bases):>6}{'':>14}{'':>14}{sum(bases.values()):>14.3g}"
        f"{sum(bases.values()) * FORWARD_PASS_MS / 3.6e6:>9.1f}"
    )
    total, wall = plan.gpu_hours(), plan.wall_hours()
    lines.append(f"total {total:.1f} GPU-hours; wall {wall:.1f} h on {plan.gpus} GPU(s)")
    goal = Plan(plan.runs, GOAL_GPUS).wall_hours()
    lines.append(
        f"goal: <= {GOAL_HOURS:g} h on {GOAL_GPUS} GPUs; projected {goal:.1f} h there "
        f"({goal / GOAL_HOURS:.1f}x the goal)"
    )
    lines.append(f"figures: {FIGURES} (scripts/bench_gpu.py)")
    lines += [f"assumed: {note}" for note in plan.assumptions]
    return lines
