"""Class-conditional diffusion models in the diffusers format, and the weights shipped with the package.

A model folder is what `DDPMPipeline.save_pretrained` writes: `model_index.json`, `unet/` (a
`UNet2DModel` whose `num_class_embeds` is K + 1, index K being the null label for classifier-free
guidance) and `scheduler/` (a `DDPMScheduler`), weights as safetensors. Loading reads local files only.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from safemax_ray import storage
from safemax_ray.core.concat_unet import ConcatClassUNet
from safemax_ray.errors import SafemaxError

ASSETS = Path(__file__).parent.parent / "assets"
SHIPPED_MODEL = ASSETS / "digits" / "model"
SHIPPED_CLASSIFIER = ASSETS / "digits" / "classifier"


@dataclass
class DiffusionModel:
    unet: UNet2DModel
    scheduler: DDPMScheduler

    @property
    def num_classes(self) -> int:
        """Real classes, without the null label."""
        return int(self.unet.config.num_class_embeds) - 1

    @property
    def null_label(self) -> int:
        return self.num_classes

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)


@dataclass(frozen=True)
class Preset:
    """A named UNet layout; `safemax-ray pretrain --arch NAME` builds it and records the name."""

    block_out_channels: tuple[int, ...]
    layers_per_block: int
    attention: tuple[bool, ...]  # per resolution level, from the top
    dropout: float
    num_train_timesteps: int
    about: str
    concat_class: bool = False  # the reference's concatenated class conditioning (core/concat_unet.py)


PRESETS = {
    "digits-tiny": Preset((32, 64), 1, (False, False), 0.0, 100, "0.64M parameters: the shipped 8x8 digits model"),
    # Selective Amnesia's / SalUn's CIFAR-10 model, exactly (ch 128, ch_mult 1,2,2,2, attention at 16x16).
    "ddpm-cifar10": Preset(
        (128, 256, 256, 256),
        2,
        (False, True, False, False),
        0.1,
        1000,
        "38.6M parameters: the reference CIFAR-10 model of SA and SalUn (exports to their ckpt.pth)",
        concat_class=True,
    ),
}
PRESET_FILE = "safemax_preset.json"
UNET_CLASSES = {"UNet2DModel": UNet2DModel, "ConcatClassUNet": ConcatClassUNet}  # by config.json's _class_name


def build_unet(
    num_classes: int,
    channels: int,
    image_size: int,
    block_out_channels: tuple[int, ...] = (32, 64),
    layers_per_block: int = 1,
    attention: tuple[bool, ...] | None = None,
    dropout: float = 0.0,
) -> UNet2DModel:
    """A class-conditional UNet; the null label is index `num_classes`."""
    attention = attention or (False,) * len(block_out_channels)
    return UNet2DModel(
        **_layout(channels, image_size, block_out_channels, layers_per_block, attention),
        norm_num_groups=min(32, block_out_channels[0]),
        add_attention=any(attention),
        dropout=dropout,
        num_class_embeds=num_classes + 1,
    )


def build_concat_unet(
    num_classes: int,
    channels: int,
    image_size: int,
    block_out_channels: tuple[int, ...],
    layers_per_block: int,
    attention: tuple[bool, ...],
    dropout: float,
) -> ConcatClassUNet:
    """The reference layout with these widths (core/concat_unet.py): GroupNorm(32, eps 1e-6), sin-then-cos
    timestep features with frequencies log(10000)/(half - 1), (0, 1, 0, 1)-padded stride-2 downsampling
    convs, one-head attention over all channels at the levels marked in `attention`."""
    return ConcatClassUNet(
        **_layout(channels, image_size, block_out_channels, layers_per_block, attention),
        time_embedding_dim=8 * block_out_channels[0],
        flip_sin_to_cos=False,
        freq_shift=1,
        downsample_padding=0,
        norm_eps=1e-6,
        norm_num_groups=32,
        attention_head_dim=None,
        dropout=dropout,
        num_class_embeds=num_classes + 1,
    )


def _layout(channels: int, image_size: int, widths: tuple[int, ...], layers: int, attention: tuple[bool, ...]):
    """What both UNet builders share: the image, the widths per level, where attention is."""
    return {
        "sample_size": image_size,
        "in_channels": channels,
        "out_channels": channels,
        "block_out_channels": widths,
        "layers_per_block": layers,
        "down_block_types": tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        "up_block_types": tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
    }


def build_preset(name: str, num_classes: int, channels: int, image_size: int, widths=None) -> DiffusionModel:
    """The named layout (optionally with other block widths) and its noise schedule."""
    if name not in PRESETS:
        raise SafemaxError(f"unknown --arch {name!r}: presets are {', '.join(PRESETS)}")
    p = PRESETS[name]
    widths = tuple(widths or p.block_out_channels)
    if len(widths) != len(p.attention):
        raise SafemaxError(f"--arch {name} has {len(p.attention)} levels; give {len(p.attention)} block widths")
    build = build_concat_unet if p.concat_class else build_unet
    unet = build(num_classes, channels, image_size, widths, p.layers_per_block, p.attention, p.dropout)
    return DiffusionModel(unet, build_scheduler(p.num_train_timesteps))


def build_scheduler(num_train_timesteps: int = 1000) -> DDPMScheduler:
    """Linear betas; for fewer than 1000 steps they are scaled so that sum(beta), and so the noise
    level of x_T, matches the reference schedule (1e-4..0.02 over 1000 steps)."""
    scale = 1000 / num_train_timesteps
    if 0.02 * scale >= 0.9:
        raise SafemaxError(f"num_train_timesteps must be >= 23 for a linear schedule, got {num_train_timesteps}")
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_start=1e-4 * scale,
        beta_end=0.02 * scale,
        beta_schedule="linear",
    )


def save_model(model: DiffusionModel, path: str | Path, overwrite: bool = False) -> Path:
    """Write the diffusers folder atomically: into a temporary sibling, then one rename."""

    def fill(folder: Path) -> None:
        DDPMPipeline(unet=model.unet, scheduler=model.scheduler).save_pretrained(folder, safe_serialization=True)

    storage.write_folder_atomic(path, fill, overwrite)
    return Path(path)


def load_model(
    path: str | Path | None,
    num_classes: int | None = None,
    channels: int | None = None,
    image_size: int | None = None,
) -> DiffusionModel:
    """Load and check a model folder against the data it will be trained on."""
    path = Path(path) if path else SHIPPED_MODEL
    unet_config = path / "unet" / "config.json"
    if not path.is_dir():
        raise SafemaxError(f"model folder {path} does not exist")
    if not unet_config.is_file() or not (path / "scheduler" / "scheduler_config.json").is_file():
        raise SafemaxError(
            f"{path} is not a diffusers model folder: expected unet/config.json and "
            "scheduler/scheduler_config.json (as written by DDPMPipeline.save_pretrained)"
        )
    config = json.loads(unet_config.read_text())
    if config.get("_class_name") not in UNET_CLASSES:
        raise SafemaxError(
            f"{path}/unet holds a {config.get('_class_name')}, expected one of {', '.join(UNET_CLASSES)}"
        )
    if not config.get("num_class_embeds"):
        raise SafemaxError(
            f"{path} is not class-conditional (unet num_class_embeds is unset); SAFEMax needs a model "
            "trained with class labels plus a null label"
        )
    if num_classes is not None and config["num_class_embeds"] != num_classes + 1:
        raise SafemaxError(
            f"{path} has {config['num_class_embeds']} class embeddings but the data has {num_classes} classes; "
            f"expected {num_classes + 1} (the classes plus the null label)"
        )
    if channels is not None and config.get("in_channels") != channels:
        raise SafemaxError(f"{path} takes {config.get('in_channels')}-channel images but the data has {channels}")
    if image_size is not None and config.get("sample_size") != image_size:
        raise SafemaxError(f"{path} makes {config.get('sample_size')}px images but the data is {image_size}px")
    unet = UNET_CLASSES[config["_class_name"]].from_pretrained(
        path, subfolder="unet", local_files_only=True, use_safetensors=True, low_cpu_mem_usage=False
    )
    return DiffusionModel(unet, load_scheduler(path))


def load_scheduler(path: str | Path | None) -> DDPMScheduler:
    folder = Path(path) if path else SHIPPED_MODEL
    return DDPMScheduler.from_pretrained(folder, subfolder="scheduler", local_files_only=True)


def to_parts(model: DiffusionModel) -> dict:
    """The model as plain configs and CPU tensors: what travels to another process (a Ray task). A
    denoiser that is not one of our UNet classes (a wrapped transformer) travels as the module itself."""
    scheduler = dict(model.scheduler.config)
    if type(model.unet).__name__ not in UNET_CLASSES:
        return {"module": model.unet.cpu(), "scheduler": scheduler}
    state = {k: v.detach().cpu() for k, v in model.unet.state_dict().items()}
    unet = {**model.unet.config, "_class_name": type(model.unet).__name__}
    return {"unet": unet, "scheduler": scheduler, "state": state}


def from_parts(parts: dict) -> DiffusionModel:
    if "module" in parts:
        unet = parts["module"]
    else:
        unet = UNET_CLASSES[parts["unet"]["_class_name"]].from_config(parts["unet"])
        unet.load_state_dict(parts["state"])
    return DiffusionModel(unet.eval(), DDPMScheduler.from_config(parts["scheduler"]))


def model_fingerprint(path: str | Path | None) -> str:
    """Identifies a model by the content of its weights and configs (for run keys and caches)."""
    path = Path(path) if path else SHIPPED_MODEL
    files = sorted((path / "unet").glob("*.safetensors")) + [
        path / "unet" / "config.json",
        path / "scheduler" / "scheduler_config.json",
    ]
    return content_hash(files)


def require_parts(path: str | Path, parts: tuple[str, ...], what: str, written_by: str) -> Path:
    """The folder, if it holds every one of `parts`; else a one-line error naming what is missing."""
    path = Path(path)
    missing = [part for part in parts if not (path / part).is_dir()]
    if not path.is_dir() or missing:
        raise SafemaxError(
            f"{path} is not a diffusers {what} folder: missing {', '.join(missing) or 'the folder'} "
            f"(as written by {written_by})"
        )
    return path


def folder_fingerprint(path: str | Path) -> str:
    """Every file under `path`, by content."""
    return content_hash(sorted(f for f in Path(path).rglob("*") if f.is_file()))


def content_hash(files: list[Path]) -> str:
    """sha256 over the files' bytes, remembered per (path, size, mtime) so a model is read once."""
    stats = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file())
    if stats not in _HASHES:
        digest = hashlib.sha256()
        for f in files:
            if f.is_file():
                digest.update(f.name.encode())
                with f.open("rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(block)
        _HASHES[stats] = digest.hexdigest()[:16]
    return _HASHES[stats]


_HASHES: dict[tuple, str] = {}


def use_shared_inductor_cache() -> None:
    """torch.compile's Inductor cache in one folder per user (unless set), so the runs and evaluation
    tasks of a batch on a node compile each graph once."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path.home() / ".cache" / "safemax_ray" / "inductor"))


def peak_memory_mb(device: torch.device) -> float:
    """CUDA max allocated on a GPU; the process's peak resident set on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
