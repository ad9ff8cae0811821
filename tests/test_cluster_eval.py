"""Evaluation as Ray tasks: any number of tasks gives the same images, and a two-node cluster gets
chunks on both nodes. The cluster is real: two raylets (ray.cluster_utils, as `ray start` makes them)."""

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
    from safemax_ray.config import EvalConfig
    from safemax_ray.core.models import load_model
    from safemax_ray.engine import evaluate
    from safemax_ray.ray.evaluation import sample_on_cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address, log_to_driver=False)
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    model = load_model(sys.argv[1])
    config = EvalConfig(n_forget_samples=6, n_retain_per_class=2, batch_size=6, sample_steps=4)
    labels = evaluate.eval_labels(10, 3, config)  # 24 images: 4 chunks
    runs = {k: sample_on_cluster(model, labels, replace(config, workers=k), False) for k in (1, 2, 4)}
    assert all(torch.equal(runs[1].images, runs[k].images) for k in (2, 4)), "images depend on the split"
    # Each task is single-threaded; the driver's multi-threaded convolutions sum in another order.
    local = evaluate.sample_labels(model, labels, config)
    torch.testing.assert_close(local, runs[1].images, rtol=0, atol=1e-4)
    print("nodes", len(runs[1].nodes), len(runs[4].nodes))
    ray.shutdown()
    cluster.shutdown()
    """
)


@pytest.mark.slow  # a two-raylet cluster in its own interpreter
def test_chunks_spread_over_two_nodes_and_give_identical_images(tiny_assets):
    done = subprocess.run([sys.executable, "-c", SCRIPT, tiny_assets[0]], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.split()[-2:] == ["1", "2"]  # one task on one node; four tasks on both nodes
