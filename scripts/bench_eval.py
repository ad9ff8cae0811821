"""What judging the base model once per class saves: a three-class comparison's evaluations on digits,
with the base model's samples shared through one cache (as `compare` and `batch` share it) beside
each run sampling its own (what happened before they were cached per class), in one process, one
after the other; then the paper plan's GPU-hours by line.

    .venv/bin/python scripts/bench_eval.py                     # ~1 minute on 2 CPU cores

The unlearned model is the base model itself here: an evaluation costs the same whatever the weights,
and this way the benchmark needs no training. Needs torch and diffusers, not Ray.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from safemax_ray.config import EvalConfig, UnlearnConfig, load_unlearn_config
from safemax_ray.drivers.compare import plan_comparison
from safemax_ray.drivers.plan import describe, plan_runs
from safemax_ray.engine import evaluate
from safemax_ray.engine.workloads.classes import ClassWorkload

PAPER = Path(__file__).resolve().parents[1] / "tune_configs" / "paper-cifar10.yaml"


class Counting(evaluate.RankSampler):
    """Sampling in this process, counting the images drawn per phase."""

    drawn: dict

    def __call__(self, model, labels, phase, judge):
        self.drawn[phase] = self.drawn.get(phase, 0) + len(labels)
        return super().__call__(model, labels, phase, judge)


def evaluations(classes: list[int], settings: EvalConfig, shared: bool) -> tuple[float, dict, list[dict]]:
    """(seconds, images drawn per phase, each class's figures) of judging one run per class."""
    sampler = Counting(settings, "cpu")
    sampler.drawn = {}
    rows, began = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-eval") as cache:
        for c in classes:
            workload = ClassWorkload(UnlearnConfig(forget_class=c, eval=settings))
            model, data = workload.open(torch.device("cpu"), None)
            own = cache if shared else str(Path(cache) / f"run-{c}")
            rows.append(workload.evaluate(model, data, sampler, own).metrics)
    return time.perf_counter() - began, sampler.drawn, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", default="0,1,2")
    parser.add_argument("--sample-steps", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(2)
    classes = [int(c) for c in args.classes.split(",")]
    settings = EvalConfig(sample_steps=args.sample_steps)
    print(f"1. Evaluations of a {len(classes)}-class comparison on digits ({args.sample_steps} sampling steps)")
    results = {}
    for shared in (False, True):
        seconds, drawn, rows = evaluations(classes, settings, shared)
        results[shared] = rows
        name = "base shared per class" if shared else "base sampled per run"
        print(
            f"   {name:24s} {seconds:6.1f} s; images drawn: base {drawn['sample base']:5d}, "
            f"unlearned {drawn['sample unlearned']:5d}"
        )
    same = all(
        a[k] == b[k]
        for a, b in zip(results[False], results[True], strict=True)
        for k in ("ua", "fid", "base_ua", "base_fid", "base_entropy")
    )
    print(f"   the rows' figures are {'identical' if same else 'DIFFERENT'} either way")

    cfg = load_unlearn_config(PAPER)
    print(f"\n2. The paper plan ({PAPER.name}, classes 0-9, 8 GPUs)")
    for methods in (("safemax", "salun", "sa"), None):
        plan = plan_runs(plan_comparison(cfg, list(range(10)), methods), 8)
        for line in describe(plan):
            print(f"   {line}")
        print()


if __name__ == "__main__":
    main()
