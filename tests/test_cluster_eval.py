"""Evaluation as Ray tasks: any number of tasks gives the same images and, judged in the tasks, the
figures of judging every image in the driver; a two-node cluster gets chunks on both nodes. The
cluster is real: two raylets (ray.cluster_utils, as `ray start` makes them)."""

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import os, sys
    from dataclasses import replace
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray, torch
    from ray.cluster_utils import Cluster
    from safemax_ray.config import EvalConfig, UnlearnConfig
    from safemax_ray.core.models import load_model
    from safemax_ray.engine import evaluate
    from safemax_ray.core.data import load_dataset
    from safemax_ray.engine.judging import KeepImages, Share, assemble
    from safemax_ray.ray.evaluation import judge_on_cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address, log_to_driver=False)
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    model = load_model(sys.argv[1])
    config = EvalConfig(n_forget_samples=6, n_retain_per_class=2, batch_size=6, sample_steps=4)
    labels = evaluate.eval_labels(10, 3, config)  # 24 images: 10 chunks (one per class)
    runs = {k: judge_on_cluster(model, labels, replace(config, workers=k), False, KeepImages()) for k in (1, 2, 4)}
    images = {k: run.judgement.per_sample["images"] for k, run in runs.items()}
    assert all(torch.equal(images[1], images[k]) for k in (2, 4)), "images depend on the split"
    # Each task is single-threaded; the driver's multi-threaded convolutions sum in another order.
    local = evaluate.sample_labels(model, labels, config)
    torch.testing.assert_close(local, images[1], rtol=0, atol=1e-4)

    # Judged in the tasks, at any split: the figures of judging every image in the driver.
    cfg = UnlearnConfig(forget_class=3, classifier=sys.argv[2])
    data = load_dataset("digits")
    judge = evaluate.class_judge(cfg, data, torch.device("cpu"))
    real = evaluate.Reference.of(judge, data, [3])
    plan = evaluate.chunks_of(labels, config)
    judged = assemble([Share.of({c: judge(images[1][ch.start : ch.stop], ch) for c, ch in enumerate(plan)})])
    driver = evaluate.result(judged, labels, [3], real, "classifier").as_dict()
    for k in (1, 2, 4):
        judged = judge_on_cluster(model, labels, replace(config, workers=k), False, judge)
        tasks = evaluate.result(judged.judgement, labels, [3], real, "classifier").as_dict()
        for name in ("ua", "entropy", "fid", "kid", "retain_acc", "noise_forget", "noise_retain"):
            assert abs(tasks[name] - driver[name]) <= 1e-6 * max(1.0, abs(driver[name])), (k, name, tasks, driver)
    print("nodes", len(runs[1].nodes), len(runs[4].nodes))
    ray.shutdown()
    cluster.shutdown()
    """
)


@pytest.mark.slow  # a two-raylet cluster in its own interpreter
def test_chunks_spread_over_two_nodes_and_give_identical_images(tiny_assets):
    script = [sys.executable, "-c", SCRIPT, *tiny_assets]
    done = subprocess.run(script, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.split()[-2:] == ["1", "2"]  # one task on one node; four tasks on both nodes
