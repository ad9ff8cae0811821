"""Evaluation spread over the cluster: a run's sampling chunks become Ray tasks on every GPU (or CPU)
the cluster offers, not only on the run's own Train workers.

Chunk j of class k is sampled from a generator seeded by (eval seed, k, j) (engine/evaluate.py), so the images are the
same whichever task samples which chunk. Each task judges its chunks on its own device (classifier
logits, noise flags, FID feature sums: engine/judging.py) and returns those, not the images; the
driver joins them. The model and the judge travel through the object store, so nodes need no shared
filesystem. The grid's samples go into the run's final checkpoint, which then looks exactly like one
whose Train workers evaluated it.
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import torch

from safemax_ray.config import EvalConfig
from safemax_ray.core.models import DiffusionModel, from_parts, to_parts
from safemax_ray.engine import checkpoint as layout
from safemax_ray.engine import evaluate
from safemax_ray.engine.evaluate import MIN_TASK_IMAGE_STEPS
from safemax_ray.engine.judging import ChunkJudge, Judgement, Share, assemble
from safemax_ray.engine.workloads.base import Workload
from safemax_ray.schema import from_dict, to_dict

OnProgress = Callable[[str, int, int], None]  # (phase, chunks done, chunks)
log = logging.getLogger("safemax_ray")


@dataclass
class ClusterJudgement:
    judgement: Judgement
    nodes: set[str] = field(default_factory=set)  # Ray node ids that sampled chunks
    received_bytes: int = 0  # what the tasks sent back to the caller


def eval_workers(setting: int | str, chunks: int, use_gpu: bool, image_steps: int | None = None) -> tuple[int, str]:
    """Tasks to start, and why: the number asked for, or for "auto" one per GPU of the cluster, or one
    per CPU core the tasks can really use, and at most one per MIN_TASK_IMAGE_STEPS of `image_steps`
    (images times sampling steps). A local Ray declares more logical CPUs than the machine has cores
    (ray/cluster.py), so on a cluster of this machine alone the cores count, not the logical CPUs."""
    if setting != "auto":
        n, why = int(setting), "eval.workers"
    elif use_gpu:
        n, why = int(ray.cluster_resources().get("GPU", 0)), "one per GPU of the cluster"
    else:
        logical = int(ray.cluster_resources().get("CPU", 1))
        here = ray.util.get_node_ip_address()
        alone = all(node["NodeManagerAddress"] == here for node in ray.nodes() if node["Alive"])
        n, why = (
            (min(logical, os.cpu_count() or 1), "one per core of this machine")
            if alone
            else (logical, "one per CPU of the cluster")
        )
    if setting == "auto" and image_steps is not None and image_steps // MIN_TASK_IMAGE_STEPS < min(n, chunks):
        k = max(1, image_steps // MIN_TASK_IMAGE_STEPS)
        return k, f"{why}, at most one per {MIN_TASK_IMAGE_STEPS} image-steps ({image_steps})"
    k = max(1, min(n, chunks))
    return k, f"{why}, at most one per chunk ({chunks})" if k < n else why


@ray.remote(max_retries=2)
def _judge_chunks(parts: dict, labels: torch.Tensor, config: dict, chunks: list[int], judge: ChunkJudge, use_gpu: bool):
    model = from_parts(parts)
    model.unet.to(torch.device("cuda" if use_gpu else "cpu"))
    judged = evaluate.sample_chunks(model, labels, from_dict(EvalConfig, config), chunks, judge)
    return Share.of(judged), ray.get_runtime_context().get_node_id()


def judge_on_cluster(
    model: DiffusionModel,
    labels: torch.Tensor,
    config: EvalConfig,
    use_gpu: bool,
    judge: ChunkJudge,
    on_chunks: Callable[[int, int], None] | None = None,
) -> ClusterJudgement:
    """The judgement of all samples for `labels`, the chunks dealt round-robin to `config.workers`
    tasks that sample and judge them."""
    n = evaluate.num_chunks(labels, config)
    k, why = eval_workers(config.workers, n, use_gpu, evaluate.image_steps(labels, config, model.num_train_timesteps))
    log.info("evaluation: %d sampling task(s) for %d chunk(s) (%s)", k, n, why)
    parts, shared_judge = ray.put(to_parts(model)), ray.put(judge)
    # SPREAD: chunks go to every node of the cluster, not first to fill the one the caller runs on.
    task = _judge_chunks.options(num_cpus=1, num_gpus=1 if use_gpu else 0, scheduling_strategy="SPREAD")
    config_dict = to_dict(config)
    pending = [task.remote(parts, labels, config_dict, list(range(r, n, k)), shared_judge, use_gpu) for r in range(k)]
    shares, nodes = [], set()
    if on_chunks is not None:
        on_chunks(0, n)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        share, node = ray.get(ready[0])
        shares.append(share)
        nodes.add(node)
        if on_chunks is not None:
            on_chunks(sum(len(s.per_chunk) for s in shares), n)
    return ClusterJudgement(assemble(shares), nodes, sum(s.nbytes() for s in shares))


@dataclass
class ClusterSampler:
    """Sampling and judging over the cluster's evaluation tasks (an `engine.evaluate.Sampler`);
    remembers the nodes and counts the bytes the tasks sent back."""

    config: EvalConfig
    use_gpu: bool
    on_progress: OnProgress | None = None
    world: int = 1  # one caller: the driver
    nodes: set[str] = field(default_factory=set)
    received_bytes: int = 0

    @property
    def device_type(self) -> str:
        return "cuda" if self.use_gpu else "cpu"

    def __call__(self, model: DiffusionModel, labels: torch.Tensor, phase: str, judge: ChunkJudge) -> Judgement:
        on_chunks = (lambda done, n: self.on_progress(phase, done, n)) if self.on_progress else None
        out = judge_on_cluster(model, labels, self.config, self.use_gpu, judge, on_chunks)
        self.nodes |= out.nodes
        self.received_bytes += out.received_bytes
        return out.judgement


def evaluate_checkpoint(
    workload: Workload,
    checkpoint,
    metrics: dict[str, Any],
    use_gpu: bool,
    cache_dir: str,
    on_progress: OnProgress | None = None,
) -> dict[str, Any]:
    """The run's metrics with the workload's evaluation of its final checkpoint added, sampled on the
    cluster; the samples go into the checkpoint folder, which then looks like one whose Train workers
    evaluated it."""
    model, data = workload.open(torch.device("cpu"), cache_dir)
    with checkpoint.as_directory() as folder:
        workload.load_weights(model.unet, Path(folder) / layout.MODEL_DIR)
    sample = ClusterSampler(workload.cfg.eval, use_gpu, on_progress)
    result = workload.evaluate(model, data, sample, cache_dir)
    with checkpoint.filesystem.open_output_stream(posixpath.join(checkpoint.path, layout.SAMPLES)) as f:
        f.write(layout.samples_bytes(result.images, result.labels))
    return {**metrics, **result.metrics, "eval_nodes": len(sample.nodes)}
