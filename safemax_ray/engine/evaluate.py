"""Judging a model the paper's way: sample with guidance, classify, compute UA, H, FID and accuracy.

The labels to sample are cut into fixed-size chunks (`eval.batch_size`); chunk c is sampled from a
generator seeded by (eval seed, c). Workers take whole chunks (rank r takes chunks r, r + N, ...), so one
worker or many, Train workers or Ray tasks, produce the same images bit for bit, and the base model's
cached samples always share the unlearned model's noise. Each chunk is judged where it is drawn
(engine/judging.py) and only its judgement travels. The base model's judgement is cached under a key
that names everything that fixes it: the model's content, the labels, the evaluation settings, the
device type and the judge.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

import torch

from safemax_ray import cache, storage
from safemax_ray.config import EvalConfig, UnlearnConfig
from safemax_ray.core.classifier import Classifier, FeatureExtractor, classifier_fingerprint, load_classifier
from safemax_ray.core.data import ImageData
from safemax_ray.core.intervals import bootstrap_mean_interval, proportion_interval
from safemax_ray.core.metrics import (
    InceptionFeatures,
    accuracy,
    entropies,
    frechet_from_sums,
    mean_entropy,
    percent,
    unlearning_accuracy,
)
from safemax_ray.core.models import SHIPPED_CLASSIFIER, DiffusionModel, content_hash
from safemax_ray.core.noise import calibrate as calibrate_noise
from safemax_ray.core.objective import score as objective_score
from safemax_ray.core.randomness import chunk_generator
from safemax_ray.core.sampling import default_speed, guided_forward, sample
from safemax_ray.engine.judging import ChunkJudge, ClassJudge, Judgement, KeepImages, Share, assemble, classify

KID_REFERENCE = 1000  # real images each chunk's KID is measured against (torchmetrics' subset size)
GatherObjects = Callable[[Any], list[Any]]  # every rank's object, in rank order
OnStep = Callable[[int, int], None]  # (guided steps done, total) on this rank


class Sampler(Protocol):
    """Samples for `labels`, judged chunk by chunk by `judge` where they are drawn: over a run's ranks
    (`RankSampler`) or over the cluster's evaluation tasks (`ray/evaluation.ClusterSampler`). The
    judgement is the same either way, up to the device type the noise is drawn on, which the base
    model's cache key therefore names."""

    device_type: str

    def __call__(self, model: DiffusionModel, labels: torch.Tensor, phase: str, judge: ChunkJudge) -> Judgement: ...


@dataclass
class RankSampler:
    """Sampling over this run's ranks: rank r draws chunks r, r + N, ... and `gather` joins them."""

    config: EvalConfig
    device_type: str
    rank: int = 0
    world: int = 1
    gather: GatherObjects | None = None
    on_sample: Callable[[str], OnStep | None] = lambda phase: None  # a progress callback per phase

    def __call__(self, model: DiffusionModel, labels: torch.Tensor, phase: str, judge: ChunkJudge) -> Judgement:
        on_step = self.on_sample(phase)
        return judge_labels(model, labels, self.config, judge, self.rank, self.world, self.gather, on_step)


@dataclass
class EvalResult:
    ua: float  # %
    entropy: float  # nats
    fid: float
    kid: float  # KID: mean over chunks of the unbiased squared MMD against fixed real images
    kid_std: float  # its standard deviation over chunks (torchmetrics' kid_std)
    retain_acc: float  # % of retained-class samples labelled as their class
    fid_features: str  # "classifier" or "inception"
    noise_forget: float  # % of forget-class samples that are noise (core/noise.py: no classifier)
    noise_retain: float  # % of retained-class samples that are noise
    per_class: dict[str, dict[str, float]]  # each forgotten class: ua, entropy, noise
    intervals: dict[str, tuple[float, float]]  # 95% interval of each of INTERVAL_METRICS (core/intervals.py)

    def as_dict(self) -> dict:
        """The figures with each interval as `<metric>_lo` and `<metric>_hi`."""
        out = asdict(self)
        for key, (lo, hi) in out.pop("intervals").items():
            out[f"{key}_lo"], out[f"{key}_hi"] = lo, hi
        return out


def eval_labels(num_classes: int, forget: int | list[int], config: EvalConfig) -> torch.Tensor:
    """n_forget_samples of each forget class, then n_retain_per_class of every other class."""
    classes = forget if isinstance(forget, list) else [forget]
    retained = [c for c in range(num_classes) if c not in classes]
    return torch.cat(
        [
            torch.tensor(classes).repeat_interleave(config.n_forget_samples),
            torch.tensor(retained).repeat_interleave(config.n_retain_per_class),
        ]
    ).long()


def num_chunks(labels: torch.Tensor, config: EvalConfig) -> int:
    return math.ceil(len(labels) / config.batch_size)


def sample_chunks(
    model: DiffusionModel,
    labels: torch.Tensor,
    config: EvalConfig,
    chunks: list[int],
    judge: ChunkJudge | None = None,
    on_step: OnStep | None = None,
) -> dict[int, Judgement]:
    """The judgement of each of the given chunks of `labels` (their images, by default), each chunk
    drawn from its own (eval seed, chunk) generator and judged on the model's device."""
    device = next(model.unet.parameters()).device
    judge = (judge or KeepImages()).to(device)
    steps = config.sample_steps or model.num_train_timesteps
    total, done = len(chunks) * steps, 0
    forward = guided_forward(model.unet, default_speed(device.type, total))

    def tick() -> None:
        nonlocal done
        done += 1
        if on_step is not None:
            on_step(done, total)

    out = {}
    for c in chunks:
        index = torch.arange(c * config.batch_size, min((c + 1) * config.batch_size, len(labels)))
        generator = chunk_generator(config.seed, c, device)
        images = sample(
            model.unet,
            model.scheduler,
            labels[index],
            model.null_label,
            generator,
            config.guidance,
            steps,
            tick,
            sampler=config.sampler,
            eta=config.eta,
            forward=forward,
        )
        out[c] = judge(images, index)
    return out


def judge_labels(
    model: DiffusionModel,
    labels: torch.Tensor,
    config: EvalConfig,
    judge: ChunkJudge,
    rank: int = 0,
    world: int = 1,
    gather: GatherObjects | None = None,
    on_step: OnStep | None = None,
) -> Judgement:
    """The judgement of all samples for `labels`; with several ranks each judges its chunks and
    `gather` joins them."""
    n = num_chunks(labels, config)
    mine = Share.of(sample_chunks(model, labels, config, list(range(rank, n, world)), judge, on_step))
    if world == 1:
        return assemble([mine])
    assert gather is not None, "several workers need a gather function"
    return assemble(gather(mine))


def sample_labels(
    model: DiffusionModel,
    labels: torch.Tensor,
    config: EvalConfig,
    rank: int = 0,
    world: int = 1,
    gather: GatherObjects | None = None,
) -> torch.Tensor:
    """All images for `labels`, sampled over `world` ranks."""
    return judge_labels(model, labels, config, KeepImages(), rank, world, gather).rows["images"]


def class_judge(cfg: UnlearnConfig, data: ImageData, labels: torch.Tensor, device: torch.device) -> ClassJudge:
    """The judge of a class run's samples: its classifier, the FID features (Inception where
    `eval.fid_weights` names the weights, else the classifier's own) and the dataset's noise threshold."""
    classifier = load_eval_classifier(cfg, data.num_classes)
    features = InceptionFeatures(cfg.eval.fid_weights) if cfg.eval.fid_weights else FeatureExtractor(classifier)
    threshold = calibrate_noise(data.images)
    forget = cfg.forget_classes()
    kid_real = kid_real_images(data, forget)
    return ClassJudge(classifier, features, labels, forget, threshold, kid_real).to(device)


def kid_real_images(data: ImageData, forget: list[int]) -> torch.Tensor:
    """The real retained-class images KID compares every chunk with: KID_REFERENCE of them (all, if
    fewer), chosen with a fixed seed, so every run of the same data uses the same ones."""
    retained = (~torch.isin(data.labels.cpu(), torch.tensor(forget))).nonzero().squeeze(1)
    pick = torch.randperm(len(retained), generator=torch.Generator().manual_seed(0))[:KID_REFERENCE]
    return data.images.cpu()[retained[pick.sort().values]]


def judge_id(cfg: UnlearnConfig, judge: ClassJudge) -> str:
    """What fixes a judgement besides the samples: the classifier, the FID features and the threshold."""
    fid = content_hash([cfg.eval.fid_weights]) if cfg.eval.fid_weights else "classifier"
    kid = f"kid{len(judge.kid_real)}"
    return json.dumps([classifier_fingerprint(cfg.classifier), fid, judge.noise_threshold, judge.grid_per_class, kid])


def result(judged: Judgement, judge: ClassJudge, real_sums: dict[str, torch.Tensor], features: str) -> EvalResult:
    """UA (% of forget samples not labelled as their class), H, FID and accuracy on the rest, noise rates."""
    labels, logits, noise = judge.labels, judged.rows["logits"], judged.rows["noise"]
    is_forget = torch.isin(labels, torch.tensor(judge.forget))
    kids = judged.rows["kid"][~judged.rows["kid"].isnan()]  # chunks with 2+ retained samples
    return EvalResult(
        intervals=intervals(labels, logits, noise, is_forget),
        ua=unlearning_accuracy(logits[is_forget], labels[is_forget]),
        entropy=mean_entropy(logits[is_forget]),
        fid=frechet_from_sums(real_sums, judged.sums),
        kid=float(kids.mean()) if len(kids) else math.nan,
        kid_std=float(kids.std(unbiased=False)) if len(kids) else math.nan,
        retain_acc=accuracy(logits[~is_forget], labels[~is_forget]),
        fid_features=features,
        noise_forget=percent(noise[is_forget]),
        noise_retain=percent(noise[~is_forget]),
        per_class={
            str(c): {
                "ua": unlearning_accuracy(logits[labels == c], c),
                "entropy": mean_entropy(logits[labels == c]),
                "noise": percent(noise[labels == c]),
            }
            for c in judge.forget
        },
    )


def intervals(
    labels: torch.Tensor, logits: torch.Tensor, noise: torch.Tensor, is_forget: torch.Tensor
) -> dict[str, tuple[float, float]]:
    """The 95% interval of UA, H, retained accuracy and the noise rates, from the same samples."""
    predicted = logits.argmax(1)

    def share(flags: torch.Tensor) -> tuple[float, float]:
        return proportion_interval(int(flags.sum()), len(flags))

    return {
        "ua": share(predicted[is_forget] != labels[is_forget]),
        "entropy": bootstrap_mean_interval(entropies(logits[is_forget])),
        "retain_acc": share(predicted[~is_forget] == labels[~is_forget]),
        "noise_forget": share(noise[is_forget]),
        "noise_retain": share(noise[~is_forget]),
    }


def per_sample(labels: torch.Tensor, judged: Judgement) -> dict[str, list]:
    """Every sample's label, predicted class, entropy and noise flag, in evaluation order: with the
    same settings, sample i of one model and of another share their noise, so their figures pair."""
    logits = judged.rows["logits"]
    return {
        "label": labels.tolist(),
        "pred": logits.argmax(1).tolist(),
        "entropy": entropies(logits).float().tolist(),
        "noise": judged.rows["noise"].bool().tolist(),
    }


def load_eval_classifier(cfg: UnlearnConfig, num_classes: int) -> Classifier:
    return load_classifier(cfg.classifier or SHIPPED_CLASSIFIER, num_classes)


def metrics(
    cfg: UnlearnConfig, data: ImageData, judge: ClassJudge, judged: Judgement, base: Judgement
) -> dict[str, Any]:
    """The unlearned and the base model's figures (same labels, same noise): UA, H, FID, accuracy for
    both, the base model's own check, and the search objective. The real images' FID features are
    computed here, on the judge's device."""
    real = data.images[~torch.isin(data.labels, torch.tensor(judge.forget, device=data.labels.device))].cpu()
    real_sums = judge.fid_sums(real)
    features = "inception" if cfg.eval.fid_weights else "classifier"
    unlearned, before = result(judged, judge, real_sums, features), result(base, judge, real_sums, features)
    out: dict[str, Any] = unlearned.as_dict()
    out.update({f"base_{k}": v for k, v in before.as_dict().items() if k not in ("fid_features", "per_class")})
    out["samples"] = per_sample(judge.labels, judged)
    out["base_ok"] = base_check(before, cfg.eval)
    out["score"] = objective_score(out, data.num_classes)
    out["sample_steps"] = cfg.eval.sample_steps or _train_steps(cfg)
    return out


def _train_steps(cfg: UnlearnConfig) -> int:
    from safemax_ray.core.models import load_scheduler

    return int(load_scheduler(cfg.model).config.num_train_timesteps)


def base_check(base: EvalResult, config: EvalConfig) -> bool:
    """Does the base model pass its own test? Its forget-class samples must be recognised as the forget
    class, and its retained samples as theirs; otherwise UA and H of the unlearned model mean nothing."""
    return (100.0 - base.ua) >= config.base_min_acc and base.retain_acc >= config.base_min_acc


def base_cache_path(
    cache_dir: str, model_id: str, labels: torch.Tensor, config: EvalConfig, device_type: str, judge_id: str
) -> str:
    fixed = ("guidance", "sample_steps", "batch_size", "seed", "sampler", "eta")
    noise = {k: v for k, v in asdict(config).items() if k in fixed}
    key = json.dumps([model_id, labels.tolist(), noise, device_type, judge_id], sort_keys=True)
    return storage.join(cache_dir, f"judged-base-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors")


def base_judgement(
    model: DiffusionModel,
    labels: torch.Tensor,
    sample: Sampler,
    judge: ChunkJudge,
    cache_path: str | None,
    rank: int = 0,
) -> Judgement:
    """The base model's judgement for `labels`, from the cache or sampled by `sample` (and cached by rank 0)."""
    cached = cache.read(cache_path)
    if cached is not None:
        return Judgement.from_tensors(cached)
    judged = sample(model, labels, "sample base", judge)
    if rank == 0:
        cache.write(cache_path, judged.tensors())
    return judged


def probe(
    model: DiffusionModel,
    classifier: Classifier,
    num_classes: int,
    forget: list[int],
    config: EvalConfig,
    n: int,
    rank: int = 0,
    world: int = 1,
    gather: GatherObjects | None = None,
) -> dict[str, float]:
    """A cheap mid-run estimate for early stopping: a few samples, no FID, no base model.

    probe score = UA/100 + H/ln K - (100 - retained accuracy)/100, comparable across trials at a rung.
    """
    settings = replace(config, n_forget_samples=n, n_retain_per_class=max(2, n // (num_classes - 1)))
    labels = eval_labels(num_classes, forget, settings)
    images = sample_labels(model, labels, settings, rank, world, gather)
    logits = classify(classifier, images)
    is_forget = torch.isin(labels, torch.tensor(forget))
    ua = unlearning_accuracy(logits[is_forget], labels[is_forget])
    entropy = mean_entropy(logits[is_forget])
    acc = accuracy(logits[~is_forget], labels[~is_forget])
    value = ua / 100 + entropy / math.log(num_classes) - (100 - acc) / 100
    return {"probe_ua": ua, "probe_entropy": entropy, "probe_retain_acc": acc, "score": value}


def save_grid(images: torch.Tensor, labels: torch.Tensor, forget: list[int], path: str, per_row: int = 10) -> None:
    """PNG: a row of samples per forget class, then a row per retained class."""
    from PIL import Image

    rows = []
    for c in sorted(forget) + sorted(set(labels.tolist()) - set(forget)):
        picks = images[labels == c][:per_row]
        if len(picks) < per_row:
            picks = torch.cat([picks, -torch.ones((per_row - len(picks), *images.shape[1:]))])
        gap = -torch.ones((images.shape[1], images.shape[2], 1))  # a dark column between samples
        rows.append(torch.cat([torch.cat([p, gap], dim=-1) for p in picks], dim=-1))
        rows.append(-torch.ones((images.shape[1], 1, rows[-1].shape[-1])))  # and a dark row between classes
    grid = torch.cat(rows, dim=-2)  # (C, rows*(H+1), per_row*(W+1))
    pixels = ((grid.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    img = Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels)
    scale = max(1, 256 // max(img.size))
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    storage.write_bytes_atomic(path, buffer.getvalue(), overwrite=True)
