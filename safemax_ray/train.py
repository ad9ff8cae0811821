"""The unlearning step (plain torch) and the Ray Train worker loop around it.

Each worker holds its share of the forget and remain classes and draws `batch_size / world_size` images
of each per step, so the global batch is the configured one whatever the worker count. Randomness for
step s on rank r comes from a generator seeded with (seed, r, s): a run resumed from a checkpoint at step
s draws exactly what the uninterrupted run would have drawn, with no RNG state to carry around.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from safemax_ray.classifier import load_classifier
from safemax_ray.config import UnlearnConfig, from_dict, to_dict
from safemax_ray.data import ImageData, draw, load_dataset, shard
from safemax_ray.evaluate import (
    base_cache_path,
    base_samples,
    classify,
    eval_labels,
    sample_sharded,
    score,
)
from safemax_ray.methods import UnlearnBatch, UnlearningMethod, get_method
from safemax_ray.models import (
    SHIPPED_CLASSIFIER,
    DiffusionModel,
    load_model,
    model_fingerprint,
    peak_memory_mb,
    save_model,
)
from safemax_ray.objective import score as objective_score

TRAIN_STATE = "train_state.pt"
MODEL_DIR = "model"
SAMPLES = "samples.safetensors"


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(((seed * 1_000_003 + rank) * 1_000_003 + step) % 2**63)


def draw_batch(
    data: ImageData,
    forget_idx: torch.Tensor,
    remain_idx: torch.Tensor,
    per_rank: int,
    forget_class: int,
    generator: torch.Generator,
) -> UnlearnBatch:
    f = draw(forget_idx, per_rank, generator)
    r = draw(remain_idx, per_rank, generator)
    return UnlearnBatch(data.images[f], data.images[r], data.labels[r], forget_class, data.num_classes)


def train_step(
    unet: torch.nn.Module,
    method: UnlearningMethod,
    optimizer: torch.optim.Optimizer,
    batch: UnlearnBatch,
    generator: torch.Generator,
    grad_clip: float,
    device: torch.device,
) -> dict[str, float]:
    """One optimiser step: forward over [forget; remain], loss, backward, clip, Adam."""
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        out = method.loss(unet, batch, generator)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(unet.parameters(), grad_clip)
    optimizer.step()
    return {**out.stats, "grad_norm": float(grad_norm)}


def _unwrap(unet: torch.nn.Module) -> torch.nn.Module:
    return unet.module if hasattr(unet, "module") else unet


def _save_checkpoint(folder: Path, *, model: DiffusionModel, unet, optimizer, step: int, elapsed: float) -> None:
    save_model(DiffusionModel(_unwrap(unet), model.scheduler), folder / MODEL_DIR, overwrite=True)
    state = {"optimizer": optimizer.state_dict(), "step": step, "elapsed_s": elapsed}
    torch.save(state, folder / TRAIN_STATE)


def _restore(checkpoint, unet: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, float]:
    with checkpoint.as_directory() as folder:
        saved = load_model(Path(folder) / MODEL_DIR)
        unet.load_state_dict(saved.unet.state_dict())
        state = torch.load(Path(folder) / TRAIN_STATE, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"]), float(state["elapsed_s"])


def _gather_fn(device: torch.device):
    import torch.distributed as dist

    def gather(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device).contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        return torch.cat(parts).cpu()

    return gather


def _threads(cpus_per_worker: float | None, local_workers: int) -> int:
    """Torch threads: the worker's CPUs, or by default this node's cores shared among its workers."""
    if cpus_per_worker is not None:
        return max(1, int(cpus_per_worker))
    return max(1, (os.cpu_count() or 1) // local_workers)


def train_loop(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: restore, train, evaluate, report with checkpoints."""
    import ray.train
    import ray.train.torch

    cfg = from_dict(UnlearnConfig, loop_config["config"])
    progress = loop_config.get("progress")
    probe_samples = loop_config.get("probe_samples")
    crash_at = loop_config.get("crash_at_step")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(_threads(cfg.ray.cpus_per_worker, ctx.get_local_world_size()))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    data = load_dataset(cfg.dataset, cfg.data_root, cfg.image_size)
    data.check_class(cfg.forget_class)
    model = load_model(cfg.model, data.num_classes, data.channels, data.image_size)
    method = get_method(cfg.method)(cfg, model.scheduler)
    unet = model.unet.to(device).train()
    optimizer = torch.optim.Adam(unet.parameters(), lr=cfg.lr)
    start, elapsed = 0, 0.0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        start, elapsed = _restore(checkpoint, unet, optimizer)
    unet = ray.train.torch.prepare_model(unet)

    gather = _gather_fn(device) if world > 1 else None
    classifier = load_classifier(cfg.classifier or SHIPPED_CLASSIFIER, data.num_classes)
    forget_idx, remain_idx = data.split(cfg.forget_class)
    forget_idx, remain_idx = shard(forget_idx, rank, world), shard(remain_idx, rank, world)
    per_rank = cfg.batch_size // world
    began = time.perf_counter()
    stats: dict[str, float] = {}
    for step in range(start, cfg.iterations):
        if crash_at is not None and step == crash_at and rank == world - 1:
            marker = Path(loop_config["crash_marker"])
            if not marker.exists():  # die once, like a lost node, then let the restart finish
                marker.touch()
                os._exit(1)
        generator = step_generator(cfg.seed, rank, step)
        batch = draw_batch(data, forget_idx, remain_idx, per_rank, cfg.forget_class, generator)
        stats = train_step(unet, method, optimizer, batch, generator, cfg.grad_clip, device)
        done = step + 1
        if rank == 0 and progress is not None and (done % 5 == 0 or done == cfg.iterations):
            progress.update.remote("train", done, cfg.iterations, stats.get("loss"))
        if done % cfg.ray.checkpoint_every == 0 and done < cfg.iterations:
            if probe_samples:
                probe_began = time.perf_counter()
                stats.update(_probe(unet, model, data, classifier, cfg, probe_samples, rank, world, gather))
                began += time.perf_counter() - probe_began  # RTE counts unlearning, not probing
            so_far = elapsed + time.perf_counter() - began
            _report(
                rank,
                {"step": done, **stats},
                partial(_save_checkpoint, model=model, unet=unet, optimizer=optimizer, step=done, elapsed=so_far),
            )
    rte = elapsed + time.perf_counter() - began
    peak = peak_memory_mb(device)

    # Evaluation: every rank samples a share, rank 0 scores.
    unet.eval()
    final = DiffusionModel(_unwrap(unet), model.scheduler)

    def on_sample(phase: str):
        if rank != 0 or progress is None:
            return None
        return lambda i, n: progress.update.remote(phase, i, n, None) if i % 5 == 0 or i == n else None

    labels = eval_labels(data.num_classes, cfg.forget_class, cfg.eval)
    cache = base_cache_path(
        loop_config["cache_dir"], model_fingerprint(cfg.model), cfg.dataset, cfg.forget_class, cfg.eval
    )
    base_model = DiffusionModel(load_model(cfg.model).unet.to(device).eval(), model.scheduler)
    base_images = base_samples(base_model, labels, cfg.eval, cache, rank, world, gather, on_sample("sample base"))
    del base_model
    images = sample_sharded(final, labels, cfg.eval, rank, world, gather, on_sample("sample unlearned"))
    metrics: dict[str, Any] = {
        "step": cfg.iterations,
        "rte_s": rte,
        "peak_mem_mb": peak,
        "num_workers": world,
        "sample_steps": cfg.eval.sample_steps or model.num_train_timesteps,
        "num_classes": data.num_classes,
        "resumed_from_step": start,  # > 0 when a worker failure made Ray Train restore a checkpoint
    }
    metrics.update({f"train_{k}": v for k, v in stats.items()})
    if rank == 0:
        result = score(images, labels, cfg.forget_class, classifier, data, cfg.eval)
        base = score(base_images, labels, cfg.forget_class, classifier, data, cfg.eval)
        metrics.update(result.as_dict())
        metrics.update({f"base_{k}": v for k, v in base.as_dict().items() if k != "fid_features"})
        metrics["score"] = objective_score(metrics, data.num_classes)

    def write_final(folder: Path) -> None:
        _save_checkpoint(folder, model=model, unet=unet, optimizer=optimizer, step=cfg.iterations, elapsed=rte)
        from safetensors.torch import save_file

        save_file({"images": images.contiguous(), "labels": labels}, folder / SAMPLES)

    _report(rank, metrics, write_final)


def _probe(
    unet, model: DiffusionModel, data: ImageData, classifier, cfg: UnlearnConfig, n: int, rank: int, world: int, gather
) -> dict[str, float]:
    """A cheap mid-run estimate for early stopping: a few samples, no FID, no base model.

    probe_score = UA/100 + H/ln K - (100 - retained accuracy)/100, comparable across trials at a rung.
    """
    import math

    from safemax_ray.metrics import accuracy, mean_entropy, unlearning_accuracy

    unet.eval()
    settings = replace(cfg.eval, n_forget_samples=n, n_retain_per_class=max(2, n // (data.num_classes - 1)))
    labels = eval_labels(data.num_classes, cfg.forget_class, settings)
    images = sample_sharded(DiffusionModel(_unwrap(unet), model.scheduler), labels, settings, rank, world, gather)
    unet.train()
    logits = classify(classifier, images)
    is_forget = labels == cfg.forget_class
    ua = unlearning_accuracy(logits[is_forget], cfg.forget_class)
    entropy = mean_entropy(logits[is_forget])
    acc = accuracy(logits[~is_forget], labels[~is_forget])
    score = ua / 100 + entropy / math.log(data.num_classes) - (100 - acc) / 100
    return {"probe_ua": ua, "probe_entropy": entropy, "probe_retain_acc": acc, "score": score}


def _report(rank: int, metrics: dict[str, Any], write) -> None:
    """Every rank reports (it is a barrier); rank 0 alone writes the checkpoint folder."""
    import ray.train
    from ray.train import Checkpoint

    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    folder = Path(tempfile.mkdtemp(prefix="safemax-ckpt-"))
    try:
        write(folder)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(folder)))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def build_trainer(
    cfg: UnlearnConfig,
    name: str,
    storage_path: str,
    use_gpu: bool,
    cache_dir: str,
    progress: Any = None,
    callbacks: list | None = None,
    crash_at_step: int | None = None,
    crash_marker: str | None = None,
    probe_samples: int | None = None,
):
    """A TorchTrainer for one run: DDP over `cfg.ray.num_workers`, gloo on CPU and NCCL on GPU."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    resources = {"CPU": cfg.ray.cpus_per_worker or 1.0}
    if use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        train_loop,
        train_loop_config={
            "config": to_dict(cfg),
            "progress": progress,
            "cache_dir": cache_dir,
            "crash_at_step": crash_at_step,
            "crash_marker": crash_marker,
            "probe_samples": probe_samples,
        },
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.ray.num_workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
        ),
    )
