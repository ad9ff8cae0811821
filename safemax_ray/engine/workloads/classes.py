"""Classes of a class-conditional pixel-space model: the digits default, CIFAR-10, an ImageFolder tree.

The model is a diffusers `UNet2DModel` folder; the data is the dataset's images and labels; a run is
judged the paper's way: guided samples of every class, classified (UA, H, accuracy) and compared with
real images (FID), beside the base model's samples on the same noise.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import torch

from safemax_ray.core.classifier import load_classifier
from safemax_ray.core.data import ImageData, load_dataset
from safemax_ray.core.models import SHIPPED_CLASSIFIER, SHIPPED_MODEL, DiffusionModel, load_model, model_fingerprint
from safemax_ray.engine import evaluate
from safemax_ray.engine.judging import ClassJudge
from safemax_ray.engine.workloads.base import AttackSubject, Evaluation, Workload, draw_grids, load_weights_or_explain
from safemax_ray.errors import SafemaxError

CLASS_IMAGES = {"cifar10": 5000}  # training images per class for `--plan`, where the data is not on this machine


class ClassWorkload(Workload):
    """Forget one or more classes of a class-conditional model; judged by a classifier and FID."""

    table_metrics = (
        ("ua", "UA %"),
        ("entropy", "entropy H (nats)"),
        ("fid", "FID (retained)"),  # the table adds the features it was computed on
        ("kid", "KID (retained)"),
        ("retain_acc", "retained accuracy %"),
        ("noise_forget", "noise rate, forget samples %"),
        ("noise_retain", "noise rate, retained samples %"),
    )

    def describe(self) -> str:
        return f"class {self.forget_label()} ({self.cfg.dataset})"

    def notes(self) -> list[str]:
        if self.cfg.dataset != "cifar10" or self.cfg.eval.fid_weights:
            return []
        return [
            "FID here is on the judge's features, not the paper's FID: put the 2015 Inception weights "
            "(pt_inception-2015-12-05.pth) on this machine and pass --fid-weights FILE (the `cifar` extra)"
        ]

    def model_id(self) -> str:
        return model_fingerprint(self.cfg.model)

    def base_model(self) -> str:
        return self.cfg.model or str(SHIPPED_MODEL)

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
        self.check_forget_classes(data)
        load_weights_or_explain(
            "model",
            cfg.model or "the shipped model",
            lambda: load_model(cfg.model, data.num_classes, data.channels, data.image_size),
        )
        self.check_classifier(data)

    def check_forget_classes(self, data: ImageData) -> None:
        for c in self.forget_classes():
            data.check_class(c)
        if len(self.forget_classes()) >= data.num_classes:
            raise SafemaxError(
                f"forget_class names all {data.num_classes} classes of {self.cfg.dataset}: nothing would remain to "
                f"fine-tune on or to judge FID with; forget at most {data.num_classes - 1} of them"
            )

    def check_classifier(self, data: ImageData) -> None:
        classifier = self.cfg.classifier or str(SHIPPED_CLASSIFIER)
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

    def pixels(self, data: ImageData) -> ImageData:
        """The real images of the classes (FID's reference, the noise threshold), given the training data."""
        return data

    def decoder(self) -> torch.nn.Module | None:
        """What turns the model's samples into images for the judge (None: they are images)."""
        return None

    def evaluate(
        self, model: DiffusionModel, data: ImageData, sample: evaluate.Sampler, cache_dir: str | None, rank: int = 0
    ) -> Evaluation:
        """Sample the base and the unlearned model on identical noise, each chunk judged where it is
        drawn (the base's judgement of each class from the cache when it has it); on rank 0 the
        figures: UA, H, FID, KID, accuracy, noise rates. The grid's samples are the only images that
        travel."""
        model.unet.eval()
        pixels = self.pixels(data)
        labels = evaluate.eval_labels(data.num_classes, self.forget_classes(), self.cfg.eval)
        device = next(model.unet.parameters()).device
        judge = evaluate.class_judge(self.cfg, pixels, device, self.decoder())
        cache = self.base_cache_path(cache_dir, sample.device_type, judge) if cache_dir else None
        base = DiffusionModel(self.load_base().unet.to(device).eval(), model.scheduler)
        base_judged = evaluate.base_judgement(base, labels, sample, judge, cache, rank)
        del base
        judged = sample(model, labels, "sample unlearned", judge)
        if rank != 0:
            return Evaluation({}, judged.per_sample["grid"], judged.per_sample["grid_labels"])
        metrics = evaluate.metrics(
            self.cfg, pixels, judge, labels, judged, base_judged, model.num_train_timesteps, self.forget_classes()
        )
        return Evaluation(metrics, judged.per_sample["grid"], judged.per_sample["grid_labels"])

    def evaluates_in_workers(self, model: DiffusionModel, data: ImageData) -> bool:
        """As `eval.workers` says; for "auto", on the Train workers when the evaluation is smaller than
        one evaluation task's share (a task's start would cost more than it saves)."""
        settings = self.cfg.eval
        if settings.workers != "auto":
            return settings.workers == "train"
        labels = evaluate.eval_labels(data.num_classes, self.forget_classes(), settings)
        return evaluate.image_steps(labels, settings, model.num_train_timesteps) < evaluate.MIN_TASK_IMAGE_STEPS

    def probe(self, model: DiffusionModel, data: ImageData, n: int, rank: int, world: int, gather) -> dict[str, float]:
        classifier = evaluate.load_eval_classifier(self.cfg, data.num_classes)
        forget, k = self.forget_classes(), data.num_classes
        return evaluate.probe(model, classifier, k, forget, self.cfg.eval, n, rank, world, gather, self.decoder())

    def export(self, checkpoint_folder: Path, out: Path) -> None:
        from safemax_ray.engine import checkpoint as layout

        shutil.copytree(checkpoint_folder / layout.MODEL_DIR, out, dirs_exist_ok=True)
        draw_grids(*layout.load_samples(checkpoint_folder), self.forget_classes(), out)

    def attack_subject(self, model_path: str, device: torch.device) -> AttackSubject:
        from safemax_ray.core.noise import calibrate
        from safemax_ray.engine.attack import Judge

        data = self.load_data()
        classifier = evaluate.load_eval_classifier(self.cfg, data.num_classes)
        judge = Judge(classifier, calibrate(data.images), self.forget_classes()[0])
        model = load_model(model_path, data.num_classes, data.channels, data.image_size)
        model.unet.to(device)
        return AttackSubject(model, data.to(device), judge)

    def plan_sizes(self, notes: set[str]) -> tuple[int, int, int]:
        cfg = self.cfg
        timesteps = self.schedule_length(notes)
        if cfg.data_root and not Path(cfg.data_root).exists():
            per_class = CLASS_IMAGES.get(cfg.dataset, 5000)
            notes.add(f"data {cfg.data_root} is not on this machine: 10 classes of {per_class} images each")
            return timesteps, 10, per_class
        data = self.load_data()
        return timesteps, data.num_classes, len(data.labels) // data.num_classes

    def schedule_length(self, notes: set[str]) -> int:
        """The model's diffusion steps T, read from its scheduler where it is on this machine."""
        config = Path(self.cfg.model or SHIPPED_MODEL, "scheduler", "scheduler_config.json")
        if config.is_file():
            return int(json.loads(config.read_text())["num_train_timesteps"])
        notes.add(f"model {self.cfg.model} is not on this machine: T = 1000")
        return 1000

    @classmethod
    def report_tables(cls, runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
        from safemax_ray.results.tables import class_tables

        return class_tables(runs)

    @classmethod
    def report_figures(cls, runs: pd.DataFrame, folder: Path, results_dir: str) -> list[Path]:
        from safemax_ray.results.figures import figures

        return figures(runs, folder, results_dir)
