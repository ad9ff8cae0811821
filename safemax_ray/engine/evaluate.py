"""Judging a model the paper's way: sample with guidance, classify, compute UA, H, FID and accuracy.

Each class's samples (consecutive in the labels) are cut into fixed-size chunks (`eval.batch_size`);
chunk j of class k is sampled from a generator seeded by (eval seed, k, j). Workers take whole chunks
(rank r takes chunks r, r + N, ...), so one worker or many, Train workers or Ray tasks, produce the same
images bit for bit, the base model's samples share the unlearned model's noise, and a class's samples
are the same whichever classes are forgotten. Each chunk is judged where it is drawn
(engine/judging.py) and only its judgement travels. The base model's judgement is cached a class at a
time, under a key that names everything that fixes it: the model's content, the class and its sample
count, the evaluation settings, the device type and the judge; so a comparison of ten forget classes
samples each class of the base model once per role (forgotten, retained), not once per forget class.
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
from safemax_ray.core.intervals import bootstrap_mean_interval, frechet_interval, proportion_interval
from safemax_ray.core.metrics import (
    InceptionFeatures,
    accuracy,
    entropies,
    feature_sums,
    frechet_from_sums,
    kid,
    mean_entropy,
    percent,
    unlearning_accuracy,
)
from safemax_ray.core.models import SHIPPED_CLASSIFIER, DiffusionModel, content_hash
from safemax_ray.core.noise import calibrate as calibrate_noise
from safemax_ray.core.objective import score as objective_score
from safemax_ray.core.randomness import chunk_generator
from safemax_ray.core.sampling import default_speed, guided_forward, sample
from safemax_ray.engine.judging import (
    GRID_KEYS,
    Chunk,
    ChunkJudge,
    ClassJudge,
    Judgement,
    KeepImages,
    Share,
    assemble,
    classify,
    decode_all,
    join,
)

GatherObjects = Callable[[Any], list[Any]]  # every rank's object, in rank order
OnStep = Callable[[int, int], None]  # (guided steps done, total) on this rank


class Sampler(Protocol):
    """Samples for `labels`, judged chunk by chunk by `judge` where they are drawn: over a run's ranks
    (`RankSampler`) or over the cluster's evaluation tasks (`ray/evaluation.ClusterSampler`). The
    judgement is the same either way, up to the device type the noise is drawn on, which the base
    model's cache key therefore names."""

    device_type: str
    world: int  # processes that call it together (each must make the same calls)

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
    kid: float  # KID: mean over random subsets of the unbiased squared MMD (torchmetrics' way)
    kid_std: float  # its standard deviation over the subsets (torchmetrics' kid_std)
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


# A Ray evaluation task costs a worker process and the model's transfer, seconds on a CPU: below this
# many guided image-steps of sampling (~10 s of the digits model on one core) fewer tasks finish
# sooner, and an evaluation smaller than one task's share is sampled where the model already is.
MIN_TASK_IMAGE_STEPS = 10_000


def image_steps(labels: torch.Tensor, config: EvalConfig, num_train_timesteps: int) -> int:
    """The guided model calls of sampling `labels`: images times sampling steps."""
    return len(labels) * (config.sample_steps or num_train_timesteps)


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


def class_groups(labels: torch.Tensor) -> list[tuple[int, int, int]]:
    """(class, start, stop) of each run of one class in `labels`; a class may form one run only."""
    classes, counts = torch.unique_consecutive(labels, return_counts=True)
    if len(set(classes.tolist())) < len(classes):
        raise ValueError("evaluation labels must list each class's samples together")
    stops = counts.cumsum(0).tolist()
    return [(int(c), stop - int(n), stop) for c, n, stop in zip(classes, counts, stops, strict=True)]


def chunks_of(labels: torch.Tensor, config: EvalConfig) -> list[Chunk]:
    """The sampling chunks of `labels`: each class's samples cut into chunks of `eval.batch_size`."""
    size = config.batch_size
    return [
        Chunk(label, offset // size, start + offset, min(start + offset + size, stop), offset)
        for label, start, stop in class_groups(labels)
        for offset in range(0, stop - start, size)
    ]


def num_chunks(labels: torch.Tensor, config: EvalConfig) -> int:
    return len(chunks_of(labels, config))


def sample_chunks(
    model: DiffusionModel,
    labels: torch.Tensor,
    config: EvalConfig,
    chunks: list[int],
    judge: ChunkJudge | None = None,
    on_step: OnStep | None = None,
) -> dict[int, Judgement]:
    """The judgement of each of the given chunks of `labels` (their images, by default), each chunk
    drawn from its own (eval seed, class, part) generator and judged on the model's device."""
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

    plan, out = chunks_of(labels, config), {}
    for c in chunks:
        chunk = plan[c]
        generator = chunk_generator(config.seed, chunk.label, chunk.part, device)
        images = sample(
            model.unet,
            model.scheduler,
            labels[chunk.start : chunk.stop],
            model.null_label,
            generator,
            config.guidance,
            steps,
            tick,
            sampler=config.sampler,
            eta=config.eta,
            forward=forward,
        )
        out[c] = judge(images, chunk)
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
    return judge_labels(model, labels, config, KeepImages(), rank, world, gather).per_sample["images"]


def class_judge(
    cfg: UnlearnConfig, data: ImageData, device: torch.device, decode: torch.nn.Module | None = None
) -> ClassJudge:
    """The judge of a class run's samples: its classifier, the FID features (Inception where
    `eval.fid_weights` names the weights, else the classifier's own) and the noise threshold of the real
    images `data`; `decode` turns samples into images first (a latent model's VAE)."""
    classifier = load_eval_classifier(cfg, data.num_classes)
    features = InceptionFeatures(cfg.eval.fid_weights) if cfg.eval.fid_weights else FeatureExtractor(classifier)
    return ClassJudge(classifier, features, calibrate_noise(data.images), decode=decode).to(device)


def judge_id(cfg: UnlearnConfig, judge: ClassJudge) -> str:
    """What fixes a judgement besides the samples: the classifier, the FID features and the threshold."""
    fid = content_hash([cfg.eval.fid_weights]) if cfg.eval.fid_weights else "classifier"
    return json.dumps([classifier_fingerprint(cfg.classifier), fid, judge.noise_threshold, judge.grid_per_class])


@dataclass
class Reference:
    """The real retained-class images' FID features: their sums (FID) and the features (KID)."""

    features: torch.Tensor
    sums: dict[str, torch.Tensor]

    @classmethod
    def of(cls, judge: ClassJudge, data: ImageData, forget: list[int]) -> Reference:
        retained = ~torch.isin(data.labels, torch.tensor(forget, device=data.labels.device))
        features = judge.features_of(data.images[retained].cpu()).cpu()
        return cls(features, feature_sums(features))


def result(judged: Judgement, labels: torch.Tensor, forget: list[int], real: Reference, features: str) -> EvalResult:
    """UA (% of forget samples not labelled as their class), H, FID, KID and accuracy on the rest, noise
    rates, and their intervals."""
    logits, noise = judged.per_sample["logits"], judged.per_sample["noise"]
    is_forget = torch.isin(labels, torch.tensor(forget))
    fake = judged.per_sample["features"][~is_forget].double()
    kid_mean, kid_std = kid(fake, real.features)
    return EvalResult(
        intervals={
            **intervals(labels, logits, noise, is_forget),
            "fid": frechet_interval(real.sums, fake, labels[~is_forget]),
        },
        ua=unlearning_accuracy(logits[is_forget], labels[is_forget]),
        entropy=mean_entropy(logits[is_forget]),
        fid=frechet_from_sums(real.sums, feature_sums(fake)),
        kid=kid_mean,
        kid_std=kid_std,
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
            for c in forget
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
    logits = judged.per_sample["logits"]
    return {
        "label": labels.tolist(),
        "pred": logits.argmax(1).tolist(),
        "entropy": entropies(logits).float().tolist(),
        "noise": judged.per_sample["noise"].bool().tolist(),
    }


def load_eval_classifier(cfg: UnlearnConfig, num_classes: int) -> Classifier:
    return load_classifier(cfg.classifier or SHIPPED_CLASSIFIER, num_classes)


def metrics(
    cfg: UnlearnConfig,
    data: ImageData,
    judge: ClassJudge,
    labels: torch.Tensor,
    judged: Judgement,
    base: Judgement,
    timesteps: int,
    forget: list[int],
) -> dict[str, Any]:
    """The unlearned and the base model's figures (same labels, same noise): UA, H, FID, KID, accuracy
    for both, the base model's own check, and the search objective. The real images' (`data`) FID
    features are computed here, on the judge's device; `timesteps` is the model's schedule."""
    real = Reference.of(judge, data, forget)
    features = "inception" if cfg.eval.fid_weights else "classifier"
    unlearned = result(judged, labels, forget, real, features)
    before = result(base, labels, forget, real, features)
    out: dict[str, Any] = unlearned.as_dict()
    out.update({f"base_{k}": v for k, v in before.as_dict().items() if k not in ("fid_features", "per_class")})
    out["samples"] = per_sample(labels, judged)
    out["base_ok"] = base_check(before, cfg.eval)
    out["score"] = objective_score(out, data.num_classes)
    out["sample_steps"] = cfg.eval.sample_steps or timesteps
    return out


def base_check(base: EvalResult, config: EvalConfig) -> bool:
    """Does the base model pass its own test? Its forget-class samples must be recognised as the forget
    class, and its retained samples as theirs; otherwise UA and H of the unlearned model mean nothing."""
    return (100.0 - base.ua) >= config.base_min_acc and base.retain_acc >= config.base_min_acc


def base_cache_path(
    cache_dir: str, model_id: str, label: int, count: int, config: EvalConfig, device_type: str, judge_id: str
) -> str:
    """The cache entry of the base model's judgement of `count` samples of class `label`."""
    key = json.dumps([model_id, label, count, noise_settings(config), device_type, judge_id], sort_keys=True)
    return storage.join(cache_dir, f"judged-base-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors")


def noise_settings(config: EvalConfig) -> dict[str, Any]:
    """The evaluation settings that fix which images a model draws for given labels."""
    fixed = ("guidance", "sample_steps", "batch_size", "seed", "sampler", "eta")
    return {k: v for k, v in asdict(config).items() if k in fixed}


CachePath = Callable[[int, int], str]  # (class, sample count) -> its cache entry


def base_judgement(
    model: DiffusionModel,
    labels: torch.Tensor,
    sample: Sampler,
    judge: ChunkJudge,
    cache_path: CachePath | None,
    rank: int = 0,
) -> Judgement:
    """The base model's judgement for `labels`, a class at a time: each class's from the cache where it
    is there, the missing classes sampled together by `sample` and cached by rank 0. A sampler that is
    alone (`world` 1) waits for a class another run is sampling rather than sampling it twice; ranks
    that sample together each read the cache and so decide alike."""
    groups = class_groups(labels)
    paths = [cache_path(label, stop - start) if cache_path else None for label, start, stop in groups]

    def compute(missing: list[int]) -> list[dict[str, torch.Tensor]]:
        wanted = torch.cat([labels[groups[i][1] : groups[i][2]] for i in missing])
        judged = sample(model, wanted, "sample base", judge)
        counts = [groups[i][2] - groups[i][1] for i in missing]
        per_sample = {k: v for k, v in judged.per_sample.items() if k not in GRID_KEYS}  # no grid of the base
        parts = {k: v.split(counts) for k, v in per_sample.items()}
        return [{k: parts[k][n] for k in parts} for n in range(len(missing))]

    entries = cache.compute_each(paths, compute, rank, claims=sample.world == 1)
    return join([Judgement.from_tensors(e) for e in entries])


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
    decode: torch.nn.Module | None = None,
) -> dict[str, float]:
    """A cheap mid-run estimate for early stopping: a few samples (turned into images by `decode` where
    the model draws latents), no FID, no base model.

    probe score = UA/100 + H/ln K - (100 - retained accuracy)/100, comparable across trials at a rung.
    """
    settings = replace(config, n_forget_samples=n, n_retain_per_class=max(2, n // (num_classes - 1)))
    labels = eval_labels(num_classes, forget, settings)
    images = sample_labels(model, labels, settings, rank, world, gather)
    logits = classify(classifier, images if decode is None else decode_all(decode, images))
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
