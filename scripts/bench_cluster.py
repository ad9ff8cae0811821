"""What a comparison costs on a cluster: the shared set-up, and scoring where the samples are.

    .venv/bin/python scripts/bench_cluster.py [--nodes 3] [--classes 1,2,3] [--iterations 20]

On a local multi-raylet cluster (`ray.cluster_utils`, as `ray start` makes one, 2 CPUs per node):

1. Selective Amnesia on three classes, three runs at once, as `compare` runs them: before shared set-ups
   (each run has a cache of its own, so each computes the Fisher, all at once) and after (one results
   folder: one run computes it, the others start when it is cached and read it). Prints the wall time of
   each, the Fisher computations (rows whose set-up was not read from the cache) and the ratio.
2. The evaluation of one run over the cluster's tasks: every image sent to the driver and judged there
   (before) vs judged in the tasks, only the judgement sent (after). Prints wall time, bytes sent to the
   driver, the ratios, and that the figures agree; then the bytes the paper's protocol would send
   (45,500 CIFAR-10 images, Inception features), from the same accounting.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from safemax_ray.config import EvalConfig, UnlearnConfig
from safemax_ray.core.data import load_dataset
from safemax_ray.core.models import load_model
from safemax_ray.drivers.batch import per_class_configs, run_all
from safemax_ray.engine import evaluate
from safemax_ray.engine.judging import Chunk, KeepImages, Share, assemble


def sa_config(results_dir: str, iterations: int, fisher: dict[str, int]) -> UnlearnConfig:
    cfg = UnlearnConfig(method="sa", iterations=iterations, results_dir=results_dir, method_options=dict(fisher))
    cfg.eval = EvalConfig(n_forget_samples=20, n_retain_per_class=4, sample_steps=20)
    return cfg


def shared_setups(classes: list[int], iterations: int, fisher: dict[str, int], work: Path) -> None:
    print(f"\n1. Selective Amnesia, classes {classes}, {len(classes)} runs at once, {iterations} iterations, {fisher}")
    timings, rows = {}, {}
    for name in ("before: a cache per run", "after: one results folder"):
        if name.startswith("before"):  # each run sees only its own cache: each computes the Fisher
            configs = [
                per_class_configs(sa_config(str(work / f"own-{c}"), iterations, fisher), [c])[0] for c in classes
            ]
        else:
            configs = per_class_configs(sa_config(str(work / "shared"), iterations, fisher), classes)
        began = time.perf_counter()
        result = run_all(configs, max_concurrent=len(classes))
        seconds = time.perf_counter() - began
        assert not result.failed, result.failed
        computed = sum(not row["setup_cached"] for row in result.done)
        setup = sum(row["setup_s"] for row in result.done if not row["setup_cached"])
        timings[name] = seconds
        rows[name] = {row["forget_class"]: row for row in result.done}
        print(f"   {name:28s} {seconds:6.1f} s wall, Fisher computed {computed}x ({setup:.1f} s of set-up)")
    before, after = timings.values()
    own, shared = rows.values()
    worst = max(abs(own[c][k] - shared[c][k]) for c in classes for k in ("ua", "entropy", "fid", "retain_acc"))
    print(f"   wall time after / before: {after / before:.2f}; the rows' figures differ by at most {worst:.1e}")


def scoring(tasks: int) -> None:
    model = load_model(None)
    cfg = UnlearnConfig(forget_class=3)
    cfg.eval = EvalConfig(sample_steps=50, workers=tasks)  # 200 forget samples + 30 per retained class
    data = load_dataset("digits")
    labels = evaluate.eval_labels(10, [3], cfg.eval)
    judge = evaluate.class_judge(cfg, data, torch.device("cpu"))
    real = evaluate.Reference.of(judge, data, [3])
    print(f"\n2. Evaluation of one run: {len(labels)} samples, {cfg.eval.sample_steps} steps, {tasks} tasks")
    from safemax_ray.ray.evaluation import judge_on_cluster

    began = time.perf_counter()
    sent = judge_on_cluster(model, labels, cfg.eval, False, KeepImages())
    images = sent.judgement.per_sample["images"]
    plan = evaluate.chunks_of(labels, cfg.eval)
    in_driver = assemble([Share.of({c: judge(images[ch.start : ch.stop], ch) for c, ch in enumerate(plan)})])
    driver_s = time.perf_counter() - began
    began = time.perf_counter()
    judged = judge_on_cluster(model, labels, cfg.eval, False, judge)
    tasks_s = time.perf_counter() - began
    a = evaluate.result(in_driver, labels, [3], real, "classifier")
    b = evaluate.result(judged.judgement, labels, [3], real, "classifier")
    worst = max(abs(getattr(a, k) - getattr(b, k)) for k in ("ua", "entropy", "fid", "retain_acc"))
    print(f"   scoring in the driver: {driver_s:6.1f} s wall, {sent.received_bytes / 1e3:9.1f} kB to the driver")
    print(f"   scoring in the tasks:  {tasks_s:6.1f} s wall, {judged.received_bytes / 1e3:9.1f} kB to the driver")
    bytes_ratio = judged.received_bytes / sent.received_bytes
    ratios = f"wall {tasks_s / driver_s:.2f}, bytes {bytes_ratio:.2f}"
    print(f"   ratios tasks / driver: {ratios}; the figures agree to {worst:.1e}")


def paper_bytes(tasks: int) -> None:
    """The same accounting (`Share.nbytes`) for the paper's protocol: 45,500 CIFAR-10 samples of
    3 x 32 x 32, ten classes, Inception's 2048 features, `tasks` evaluation tasks."""
    n = 45_500
    whole = Chunk(0, 0, 0, n, 0)
    images = Share({0: KeepImages()(torch.zeros(n, 3, 32, 32), whole).per_sample}).nbytes()
    rows = {"logits": torch.zeros(n, 10), "noise": torch.zeros(n, dtype=torch.bool), "features": torch.zeros(n, 2048)}
    grid = {"grid": torch.zeros(100, 3, 32, 32), "grid_labels": torch.zeros(100, dtype=torch.long)}
    judged = Share({0: {**rows, **grid}}).nbytes()
    print(
        f"\n   paper protocol, {tasks} tasks: images {images / 1e6:.0f} MB vs judgements {judged / 1e6:.0f} MB "
        f"({judged / images:.2f}); the Inception pass moves from the driver's CPU to the tasks' GPUs"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--classes", default="1,2,3")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--eval-tasks", type=int, default=3)
    parser.add_argument("--fisher-samples-per-class", type=int, default=20, help="SA's set-up (500 in the paper)")
    parser.add_argument("--fisher-timesteps", type=int, default=50, help="SA's set-up (0: all, the paper)")
    args = parser.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    for _ in range(args.nodes - 1):
        cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address, log_to_driver=False)
    print(f"a local cluster of {args.nodes} raylets, 2 CPUs each, on {os.cpu_count()} cores")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-cluster") as work:
            fisher = {
                "fisher_samples_per_class": args.fisher_samples_per_class,
                "fisher_timesteps": args.fisher_timesteps,
            }
            shared_setups([int(c) for c in args.classes.split(",")], args.iterations, fisher, Path(work))
            scoring(args.eval_tasks)
            paper_bytes(8)
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
