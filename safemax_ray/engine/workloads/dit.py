"""Classes of a class-conditional latent DiT (diffusers' DiTPipeline), as SFR-on unlearns ImageNet classes.

Everything but the model is the class workload's: the dataset's images and labels, the classifier that
judges, UA, H, FID and the paper's tables. The model is the pipeline's transformer, trained and sampled
in latent space: the images are encoded once by the VAE (cached by content), samples are drawn with
classifier-free guidance on the null label (DiTPipeline's scale s is our weight w = s - 1) and decoded
by the VAE before the judge sees them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file

from safemax_ray import cache, storage
from safemax_ray.core import dit
from safemax_ray.core.data import ImageData
from safemax_ray.core.models import DiffusionModel
from safemax_ray.engine import evaluate
from safemax_ray.engine.workloads.base import AttackSubject, draw_grids, load_weights_or_explain
from safemax_ray.engine.workloads.classes import ClassWorkload
from safemax_ray.engine.workloads.settings import WorkloadSettings
from safemax_ray.errors import SafemaxError
from safemax_ray.schema import setting


@dataclass
class DiTSettings(WorkloadSettings):
    """Classes of a class-conditional latent DiT pipeline (diffusers DiTPipeline folder)."""

    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("pipeline",)

    pipeline: str = setting("", "DiTPipeline folder: transformer/, vae/, scheduler/", "--dit-pipeline")

    def validate(self) -> None:
        if not self.pipeline:
            raise SafemaxError("the dit workload needs --dit-pipeline, a diffusers DiTPipeline folder")


class DiTWorkload(ClassWorkload):
    """Forget classes of a DiT: latents in, decoded samples judged by the classifier."""

    Settings = DiTSettings

    def __init__(self, cfg):
        super().__init__(cfg)
        self.dit: DiTSettings = self.settings
        self._parts: dit.DiTParts | None = None
        self._pixels: ImageData | None = None

    def describe(self) -> str:
        return f"class {self.forget_label()} of the DiT ({self.cfg.dataset})"

    def notes(self) -> list[str]:
        return []

    def parts(self) -> dit.DiTParts:
        if self._parts is None:
            self._parts = dit.load_parts(self.dit.pipeline)
        return self._parts

    def model_id(self) -> str:
        return dit.fingerprint(self.dit.pipeline)

    def identity(self) -> dict[str, Any]:
        return {"dit_pipeline": self.model_id()}

    def base_model(self) -> str:
        return self.dit.pipeline

    def load_data(self) -> ImageData:
        """The real images (pixels): FID's reference, the noise threshold, and what is encoded."""
        if self._pixels is None:
            self._pixels = super().load_data()
        return self._pixels

    def pixels(self, data: ImageData) -> ImageData:
        return self.load_data()

    def load_base(self) -> DiffusionModel:
        return dit.load_parts(self.dit.pipeline).model()

    def decoder(self) -> torch.nn.Module:
        return dit.LatentDecoder(self.parts().vae)

    def check(self) -> None:
        cfg = self.cfg
        if cfg.dataset != "digits" and not cfg.classifier:
            raise SafemaxError(f"dataset {cfg.dataset!r} needs --classifier, a judge of its {cfg.dataset} classes")
        load_weights_or_explain("DiT pipeline", self.dit.pipeline, self.parts)
        parts, data = self.parts(), self.load_data()
        if parts.num_classes != data.num_classes:
            raise SafemaxError(
                f"the DiT in {self.dit.pipeline} has {parts.num_classes} classes but {cfg.dataset} has "
                f"{data.num_classes}; train and unlearn it on the same classes"
            )
        vae_channels = int(parts.vae.config.in_channels)
        if (data.channels, data.image_size) != (vae_channels, parts.image_size):
            raise SafemaxError(
                f"the DiT's VAE takes {vae_channels}x{parts.image_size}x{parts.image_size} images but {cfg.dataset} "
                f"has {data.channels}x{data.image_size}x{data.image_size}; set --image-size {parts.image_size}"
            )
        super().check_forget_classes(data)
        super().check_classifier(data)

    def open(self, device: torch.device, cache_dir: str | None) -> tuple[DiffusionModel, ImageData]:
        """The transformer on `device`, and the dataset's latents: encoded once (by the first of the
        run's workers to claim them; the others wait and read the cache)."""
        parts, pixels = self.parts(), self.load_data()
        path = self.latents_path(cache_dir) if cache_dir else None
        saved, _ = cache.compute_once(path, lambda: {"latents": dit.encode(parts.vae, pixels.images)})
        model = dit.load_parts(self.dit.pipeline).model()
        model.unet.to(device)
        return model, ImageData(saved["latents"], pixels.labels, pixels.class_names)

    def latents_path(self, cache_dir: str) -> str:
        fixed = [self.model_id(), self.cfg.dataset, self.cfg.data_root, self.cfg.image_size]
        digest = hashlib.sha256(json.dumps(fixed).encode()).hexdigest()[:16]
        return storage.join(cache_dir, f"dit-latents-{digest}.safetensors")

    def save_model(self, model: DiffusionModel, folder: Path) -> None:
        """The transformer and scheduler only: the VAE stays in the base folder."""
        model.unet.transformer.save_pretrained(folder / "transformer", safe_serialization=True)
        model.scheduler.save_pretrained(folder / "scheduler")

    def load_weights(self, unet: torch.nn.Module, folder: Path) -> None:
        unet.transformer.load_state_dict(load_file(str(folder / "transformer" / dit.WEIGHTS)))

    def export(self, checkpoint_folder: Path, out: Path) -> None:
        """The whole DiTPipeline with the unlearned transformer, so that diffusers loads it as it is."""
        from safemax_ray.engine import checkpoint as layout

        dit.export(self.dit.pipeline, checkpoint_folder / layout.MODEL_DIR / "transformer", out)
        draw_grids(*layout.load_samples(checkpoint_folder), self.forget_classes(), out)

    def attack_subject(self, model_path: str, device: torch.device) -> AttackSubject:
        from safemax_ray.core.noise import calibrate
        from safemax_ray.engine.attack import Judge

        parts, pixels = dit.load_parts(self.dit.pipeline, transformer_from=model_path), self.load_data()
        classifier = evaluate.load_eval_classifier(self.cfg, pixels.num_classes)
        decode = dit.LatentDecoder(parts.vae).to(device)
        judge = Judge(classifier, calibrate(pixels.images), self.forget_classes()[0], decode)
        model = parts.model()
        model.unet.to(device)
        latents = ImageData(dit.encode(parts.vae, pixels.images), pixels.labels, pixels.class_names)
        return AttackSubject(model, latents.to(device), judge)

    def schedule_length(self, notes: set[str]) -> int:
        config = Path(self.dit.pipeline, "scheduler", "scheduler_config.json")
        if config.is_file():
            return int(json.loads(config.read_text())["num_train_timesteps"])
        notes.add(f"DiT pipeline {self.dit.pipeline} is not on this machine: T = 1000")
        return 1000
