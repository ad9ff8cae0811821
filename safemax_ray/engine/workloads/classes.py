"""Classes of a class-conditional pixel-space model: the digits default, CIFAR-10, an ImageFolder tree.

The model is a diffusers `UNet2DModel` folder; the data is the dataset's images and labels; a run is
judged the paper's way: guided samples of every class, classified (UA, H, accuracy) and compared with
real images (FID), beside the base model's samples on the same noise.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from safemax_ray.core.classifier import load_classifier
from safemax_ray.core.data import ImageData, load_dataset
from safemax_ray.core.models import SHIPPED_CLASSIFIER, SHIPPED_MODEL, DiffusionModel, load_model, model_fingerprint
from safemax_ray.engine import evaluate
from safemax_ray.engine.judging import ClassJudge
from safemax_ray.engine.workloads.base import Evaluation, Workload, draw_grids, load_weights_or_explain
from safemax_ray.errors import SafemaxError


class ClassWorkload(Workload):
    """Forget one or more classes of a class-conditional model; judged by a classifier and FID."""

    @property
    def evaluates_in_workers(self) -> bool:  # type: ignore[override]
        return self.cfg.eval.workers == "train"

    metric_rows = (
        ("ua", "UA %"),
        ("entropy", "entropy H (nats)"),
        ("fid", "FID (retained)"),  # the table adds the features it was computed on
        ("kid", "KID (retained)"),
        ("retain_acc", "retained accuracy %"),
        ("noise_forget", "noise rate, forget samples %"),
        ("noise_retain", "noise rate, retained samples %"),
    )

    def describe(self) -> str:
        return f"class {self.cfg.forget_label()} ({self.cfg.dataset})"

    def notes(self) -> list[str]:
        if self.cfg.dataset != "cifar10" or self.cfg.eval.fid_weights:
            return []
        return [
            "FID here is on the judge's features, not the paper's FID: put the 2015 Inception weights "
            "(pt_inception-2015-12-05.pth) on this machine and pass --fid-weights FILE (the `cifar` extra)"
        ]

    def model_id(self) -> str:
        return model_fingerprint(self.cfg.model)

    def row_fields(self) -> dict[str, Any]:
        return {"concept": None, "base_model": self.cfg.model or str(SHIPPED_MODEL)}

    def load_data(self) -> ImageData:
        return load_dataset(self.cfg.dataset, self.cfg.data_root, self.cfg.image_size)

    def load_base(self) -> DiffusionModel:
        return load_model(self.cfg.model)

    def check(self) -> None:
        cfg = self.cfg
        if cfg.dataset != "digits" and not (cfg.model and cfg.classifier):
            raise SafemaxError(
                f"dataset {cfg.dataset!r} needs --model and --classifier (made by `safemax-ray pretrain`)"
            )
        data = self.load_data()
        for c in cfg.forget_classes():
            data.check_class(c)
        if len(cfg.forget_classes()) >= data.num_classes:
            raise SafemaxError(
                f"forget_class names all {data.num_classes} classes of {cfg.dataset}: nothing would remain to "
                f"fine-tune on or to judge FID with; forget at most {data.num_classes - 1} of them"
            )
        load_weights_or_explain(
            "model",
            cfg.model or "the shipped model",
            lambda: load_model(cfg.model, data.num_classes, data.channels, data.image_size),
        )
        classifier = cfg.classifier or str(SHIPPED_CLASSIFIER)
        load_weights_or_explain("classifier", classifier, lambda: load_classifier(classifier, data.num_classes))

    def open(self, device: torch.device, cache_dir: str | None) -> tuple[DiffusionModel, ImageData]:
        data = self.load_data()
        return load_model(self.cfg.model, data.num_classes, data.channels, data.image_size), data

    def save_model(self, model: DiffusionModel, folder: Path) -> None:
        from safemax_ray.core.models import save_model

        save_model(model, folder, overwrite=True)

    def load_weights(self, unet: torch.nn.Module, folder: Path) -> None:
        unet.load_state_dict(load_model(folder).unet.state_dict())

    def base_cache_path(self, cache_dir: str, device_type: str, judge: ClassJudge) -> evaluate.CachePath:
        """Where the base model's judgement of n samples of a class is cached."""
        judge_id = evaluate.judge_id(self.cfg, judge)
        model_id, settings = self.model_id(), self.cfg.eval
        return lambda label, n: evaluate.base_cache_path(cache_dir, model_id, label, n, settings, device_type, judge_id)

    def evaluate(
        self, model: DiffusionModel, data: ImageData, sample: evaluate.Sampler, cache_dir: str | None, rank: int = 0
    ) -> Evaluation:
        """Sample the base and the unlearned model on identical noise, each chunk judged where it is
        drawn (the base's judgement of each class from the cache when it has it); on rank 0 the
        figures: UA, H, FID, KID, accuracy, noise rates. The grid's samples are the only images that
        travel."""
        model.unet.eval()
        labels = evaluate.eval_labels(data.num_classes, self.cfg.forget_classes(), self.cfg.eval)
        device = next(model.unet.parameters()).device
        judge = evaluate.class_judge(self.cfg, data, device)
        cache = self.base_cache_path(cache_dir, sample.device_type, judge) if cache_dir else None
        base = DiffusionModel(self.load_base().unet.to(device).eval(), model.scheduler)
        base_judged = evaluate.base_judgement(base, labels, sample, judge, cache, rank)
        del base
        judged = sample(model, labels, "sample unlearned", judge)
        metrics = evaluate.metrics(self.cfg, data, judge, labels, judged, base_judged) if rank == 0 else {}
        return Evaluation(metrics, judged.rows["grid"], judged.rows["grid_labels"])

    def export(self, checkpoint_folder: Path, out: Path) -> None:
        from safemax_ray.engine import checkpoint as layout

        shutil.copytree(checkpoint_folder / layout.MODEL_DIR, out, dirs_exist_ok=True)
        draw_grids(*layout.load_samples(checkpoint_folder), self.cfg.forget_classes(), out)
