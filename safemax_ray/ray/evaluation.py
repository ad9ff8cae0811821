"""Evaluation spread over the cluster: a run's sampling chunks become Ray tasks on every GPU (or CPU)
the cluster offers, not only on the run's own Train workers.

Chunk c is sampled from a generator seeded by (eval seed, c) (engine/evaluate.py), so the images are the
same whichever task samples which chunk. The model travels through the object store (configs and
tensors), so nodes need no shared filesystem. The caller scores the samples and writes them into the
run's final checkpoint, which then looks exactly like one whose Train workers evaluated it.
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
from safemax_ray.engine.workloads import Workload
from safemax_ray.schema import from_dict, to_dict

OnProgress = Callable[[str, int, int], None]  # (phase, chunks done, chunks)
log = logging.getLogger("safemax_ray")


@dataclass
class ClusterSamples:
    images: torch.Tensor
    nodes: set[str] = field(default_factory=set)  # Ray node ids that sampled chunks


def eval_workers(setting: int | str, chunks: int, use_gpu: bool) -> tuple[int, str]:
    """Tasks to start, and why: the number asked for, or for "auto" one per GPU of the cluster, or one
    per CPU core the tasks can really use. A local Ray declares more logical CPUs than the machine has
    cores (ray/cluster.py), so on a cluster of this machine alone the cores count, not the logical CPUs."""
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
    k = max(1, min(n, chunks))
    return k, f"{why}, at most one per chunk ({chunks})" if k < n else why


@ray.remote(max_retries=2)
def _sample_chunks(parts: dict, labels: torch.Tensor, config: dict, chunks: list[int], use_gpu: bool):
    model = from_parts(parts)
    model.unet.to(torch.device("cuda" if use_gpu else "cpu"))
    images = evaluate.sample_chunks(model, labels, from_dict(EvalConfig, config), chunks)
    return images, ray.get_runtime_context().get_node_id()


def sample_on_cluster(
    model: DiffusionModel,
    labels: torch.Tensor,
    config: EvalConfig,
    use_gpu: bool,
    on_chunks: Callable[[int, int], None] | None = None,
) -> ClusterSamples:
    """All images for `labels`, the chunks dealt round-robin to `config.workers` tasks."""
    n = evaluate.num_chunks(labels, config)
    k, why = eval_workers(config.workers, n, use_gpu)
    log.info("evaluation: %d sampling task(s) for %d chunk(s) (%s)", k, n, why)
    parts = ray.put(to_parts(model))
    # SPREAD: chunks go to every node of the cluster, not first to fill the one the caller runs on.
    task = _sample_chunks.options(num_cpus=1, num_gpus=1 if use_gpu else 0, scheduling_strategy="SPREAD")
    pending = [task.remote(parts, labels, to_dict(config), list(range(r, n, k)), use_gpu) for r in range(k)]
    out = ClusterSamples(torch.empty(0))
    chunks: dict[int, torch.Tensor] = {}
    if on_chunks is not None:
        on_chunks(0, n)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        images, node = ray.get(ready[0])
        chunks.update(images)
        out.nodes.add(node)
        if on_chunks is not None:
            on_chunks(len(chunks), n)
    out.images = torch.cat([chunks[c] for c in range(n)])
    return out


@dataclass
class ClusterSampler:
    """Sampling over the cluster's evaluation tasks (an `engine.evaluate.Sampler`); remembers the nodes."""

    config: EvalConfig
    use_gpu: bool
    on_progress: OnProgress | None = None
    nodes: set[str] = field(default_factory=set)

    @property
    def device_type(self) -> str:
        return "cuda" if self.use_gpu else "cpu"

    def __call__(self, model: DiffusionModel, labels: torch.Tensor, phase: str) -> torch.Tensor:
        on_chunks = (lambda done, n: self.on_progress(phase, done, n)) if self.on_progress else None
        out = sample_on_cluster(model, labels, self.config, self.use_gpu, on_chunks)
        self.nodes |= out.nodes
        return out.images


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
