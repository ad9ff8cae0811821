"""Selective Amnesia's checkpoint format (`ckpt.pth`), the one this field shares, in and out.

Their file is a Python list: [model state dict (keys prefixed `module.`), optimizer state, step,
EMA shadow (unprefixed; only when EMA was on)]. Their model config (`config.yml`: `model`, `data` and
`diffusion` sections) fixes the widths and the noise schedule. `read_checkpoint` turns such a file into
a `ConcatClassUNet` (core/concat_unet.py) and its `DDPMScheduler`; `reference_state` turns one back into
their state dict, key for key. Files load with `torch.load(weights_only=True)`: tensors, numbers and
plain containers only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler

from safemax_ray.core.concat_unet import ConcatClassUNet
from safemax_ray.core.models import DiffusionModel, build_concat_unet
from safemax_ray.errors import SafemaxError
from safemax_ray.schema import read_yaml

WEIGHTS = ("auto", "ema", "raw")  # auto: the EMA shadow when the file has one (SA samples with it), else raw


@dataclass
class ReferenceConfig:
    """What of their config.yml shapes the model and its schedule (their other keys are training's)."""

    ch: int = 128
    ch_mult: list[int] = field(default_factory=lambda: [1, 2, 2, 2])
    num_res_blocks: int = 2
    attn_resolutions: list[int] = field(default_factory=lambda: [16])
    dropout: float = 0.1
    in_channels: int = 3
    image_size: int = 32
    n_classes: int = 10
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    num_diffusion_timesteps: int = 1000

    @classmethod
    def from_yaml(cls, path: str | Path) -> ReferenceConfig:
        data = read_yaml(path)
        model, dataset, diffusion = (data.get(k) or {} for k in ("model", "data", "diffusion"))
        if model.get("type") == "bayesian":
            raise SafemaxError(f"{path}: a bayesian model (model.type: bayesian, a learned logvar) is not supported")
        if diffusion.get("beta_schedule", "linear") != "linear":
            raise SafemaxError(
                f"{path}: only the linear beta schedule is supported, got {diffusion['beta_schedule']!r}"
            )
        keys = {
            **{
                k: model[k]
                for k in ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "in_channels")
                if k in model
            },
            **{k: dataset[k] for k in ("image_size", "n_classes") if k in dataset},
            **{k: diffusion[k] for k in ("beta_start", "beta_end", "num_diffusion_timesteps") if k in diffusion},
        }
        return cls(**keys)

    def widths(self) -> tuple[int, ...]:
        return tuple(self.ch * m for m in self.ch_mult)

    def attention(self) -> tuple[bool, ...]:
        """Per level, whether its resolution has attention (the resolution halves after each level)."""
        return tuple(self.image_size // 2**level in self.attn_resolutions for level in range(len(self.ch_mult)))

    def build(self) -> DiffusionModel:
        unet = build_concat_unet(
            self.n_classes,
            self.in_channels,
            self.image_size,
            self.widths(),
            self.num_res_blocks,
            self.attention(),
            self.dropout,
        )
        scheduler = DDPMScheduler(
            num_train_timesteps=self.num_diffusion_timesteps,
            beta_start=self.beta_start,
            beta_end=self.beta_end,
            beta_schedule="linear",
        )
        return DiffusionModel(unet, scheduler)

    @classmethod
    def of(cls, model: DiffusionModel) -> ReferenceConfig:
        """The config a `ConcatClassUNet` and its scheduler were built from."""
        c, s = model.unet.config, model.scheduler.config
        ch = c.block_out_channels[0]
        attn = ["Attn" in kind for kind in c.down_block_types]
        return cls(
            ch=ch,
            ch_mult=[w // ch for w in c.block_out_channels],
            num_res_blocks=c.layers_per_block,
            attn_resolutions=[c.sample_size // 2**level for level, a in enumerate(attn) if a],
            dropout=c.dropout,
            in_channels=c.in_channels,
            image_size=c.sample_size,
            n_classes=c.num_class_embeds - 1,
            beta_start=s.beta_start,
            beta_end=s.beta_end,
            num_diffusion_timesteps=s.num_train_timesteps,
        )


ATTENTION_CONVS = {"q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}  # 1x1 convs -> Linear


def _resnet(ref: str, ours: str) -> list[tuple[str, str]]:
    names = {
        "norm1": "norm1",
        "conv1": "conv1",
        "temb_cemb_proj": "time_emb_proj",
        "norm2": "norm2",
        "conv2": "conv2",
        "nin_shortcut": "conv_shortcut",
    }
    return [(f"{ref}.{a}", f"{ours}.{b}") for a, b in names.items()]


def _attention(ref: str, ours: str) -> list[tuple[str, str]]:
    return [(f"{ref}.norm", f"{ours}.group_norm")] + [(f"{ref}.{a}", f"{ours}.{b}") for a, b in ATTENTION_CONVS.items()]


def module_pairs(cfg: ReferenceConfig) -> list[tuple[str, str]]:
    """(their module, ours) for every module with weights but the class table. Their `up.{i}` is level
    i counted from the top, ours `up_blocks.{k}` counts from the bottom."""
    levels, attn = len(cfg.ch_mult), cfg.attention()
    pairs = [
        ("temb.dense.0", "time_embedding.linear_1"),
        ("temb.dense.1", "time_embedding.linear_2"),
        ("cemb.dense.0", "class_embedding.linear_1"),
        ("cemb.dense.1", "class_embedding.linear_2"),
        ("conv_in", "conv_in"),
        ("norm_out", "conv_norm_out"),
        ("conv_out", "conv_out"),
    ]
    for i in range(levels):
        for j in range(cfg.num_res_blocks):
            pairs += _resnet(f"down.{i}.block.{j}", f"down_blocks.{i}.resnets.{j}")
            pairs += _attention(f"down.{i}.attn.{j}", f"down_blocks.{i}.attentions.{j}") if attn[i] else []
        if i != levels - 1:
            pairs.append((f"down.{i}.downsample.conv", f"down_blocks.{i}.downsamplers.0.conv"))
    pairs += _resnet("mid.block_1", "mid_block.resnets.0") + _attention("mid.attn_1", "mid_block.attentions.0")
    pairs += _resnet("mid.block_2", "mid_block.resnets.1")
    for i in range(levels):
        k = levels - 1 - i
        for j in range(cfg.num_res_blocks + 1):
            pairs += _resnet(f"up.{i}.block.{j}", f"up_blocks.{k}.resnets.{j}")
            pairs += _attention(f"up.{i}.attn.{j}", f"up_blocks.{k}.attentions.{j}") if attn[i] else []
        if i != 0:
            pairs.append((f"up.{i}.upsample.conv", f"up_blocks.{k}.upsamplers.0.conv"))
    return pairs


def _is_attention_conv(ref_key: str) -> bool:
    return ".attn" in ref_key and ref_key.rsplit(".", 2)[-2] in ATTENTION_CONVS and ref_key.endswith(".weight")


def param_pairs(cfg: ReferenceConfig, ours: dict[str, torch.Tensor]) -> list[tuple[str, str]]:
    """(their parameter, ours) for every parameter of our model but the class table."""
    return [
        (f"{a}.{suffix}", f"{b}.{suffix}")
        for a, b in module_pairs(cfg)
        for suffix in ("weight", "bias")
        if f"{b}.{suffix}" in ours
    ]


CLASS_TABLE = "class_embedding.embedding.weight"  # rows: their classes_emb, then null_classes_emb


def to_ours(theirs: dict[str, torch.Tensor], cfg: ReferenceConfig, where: str) -> DiffusionModel:
    """Their state dict (unprefixed) as our model; a missing, extra or misshapen key is named."""
    if "logvar" in theirs:
        raise SafemaxError(f"{where} is a bayesian model (it has logvar); only type: simple models are supported")
    model = cfg.build()
    ours = model.unet.state_dict()
    left = dict(theirs)
    loaded = {}
    for a, b in param_pairs(cfg, ours):
        if a not in left:
            raise SafemaxError(f"{where} has no key {a!r}; is it a Selective Amnesia Conditional_Model checkpoint?")
        value = left.pop(a)
        value = value[:, :, 0, 0] if _is_attention_conv(a) else value
        if value.shape != ours[b].shape:
            raise SafemaxError(
                f"{where}: {a} has shape {tuple(value.shape)} but the config makes {tuple(ours[b].shape)}; "
                "pass the checkpoint's own config.yml with --config"
            )
        loaded[b] = value
    for key in ("classes_emb.weight", "null_classes_emb"):
        if key not in left:
            raise SafemaxError(f"{where} has no key {key!r}; is it a class-conditional Conditional_Model checkpoint?")
    table = torch.cat([left.pop("classes_emb.weight"), left.pop("null_classes_emb")[None]])
    if table.shape != ours[CLASS_TABLE].shape:
        raise SafemaxError(
            f"{where}: classes_emb holds {len(table) - 1} classes of width {table.shape[1]}, the config "
            f"{cfg.n_classes} of width {cfg.ch}; pass the checkpoint's own config.yml with --config"
        )
    loaded[CLASS_TABLE] = table
    if left:
        raise SafemaxError(f"{where} has key(s) this model does not: {', '.join(sorted(left)[:5])}")
    model.unet.load_state_dict(loaded, strict=True)
    return model


def to_theirs(model: DiffusionModel) -> dict[str, torch.Tensor]:
    """Our reference-layout model as their state dict (unprefixed), key for key."""
    cfg = ReferenceConfig.of(model)
    ours = {k: v.detach().cpu().clone() for k, v in model.unet.state_dict().items()}
    theirs = {}
    for a, b in param_pairs(cfg, ours):
        theirs[a] = ours[b][:, :, None, None] if _is_attention_conv(a) else ours[b]
    theirs["classes_emb.weight"], theirs["null_classes_emb"] = ours[CLASS_TABLE][:-1], ours[CLASS_TABLE][-1]
    return theirs


def read_checkpoint(path: str | Path, weights: str = "auto", config: ReferenceConfig | None = None) -> DiffusionModel:
    """Their `ckpt.pth` as our model: the EMA shadow or the raw weights, with `config`'s widths."""
    if weights not in WEIGHTS:
        raise SafemaxError(f"--weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    path = Path(path)
    if not path.is_file():
        raise SafemaxError(f"checkpoint {path} does not exist")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (a truncated or foreign file: pickle, zip and torch errors alike)
        raise SafemaxError(f"cannot read {path} as a torch checkpoint ({type(exc).__name__}: {exc})") from None
    state = _pick_weights(saved, weights, path)
    return to_ours(state, config or ReferenceConfig(), str(path))


def _pick_weights(saved: Any, weights: str, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(saved, dict):
        kind = "a bare state dict" if all(isinstance(v, torch.Tensor) for v in saved.values()) else "a dict"
        raise SafemaxError(
            f"{path} is {kind} (keys {', '.join(list(saved)[:3])}, ...), not Selective Amnesia's list "
            "[model state, optimizer state, step, EMA shadow]"
        )
    if not isinstance(saved, list) or len(saved) < 3 or not isinstance(saved[0], dict):
        raise SafemaxError(f"{path} holds a {type(saved).__name__}, not Selective Amnesia's list [model state, ...]")
    has_ema = len(saved) >= 4 and isinstance(saved[-1], dict)
    if weights == "ema" and not has_ema:
        raise SafemaxError(f"{path} has no EMA shadow (its model was trained with EMA off); use --weights raw")
    if has_ema and weights != "raw":
        return dict(saved[-1])
    return {k.removeprefix("module."): v for k, v in saved[0].items()}


def write_checkpoint(model: DiffusionModel, path: str | Path, step: int = 0) -> None:
    """Their list layout, atomically: the weights both raw (`module.`-prefixed) and as the EMA shadow,
    so their scripts load them whichever they sample with; an empty optimizer state."""
    import io

    from safemax_ray import storage

    if not isinstance(model.unet, ConcatClassUNet):
        raise SafemaxError("only reference-layout models export to --format sa")
    theirs = to_theirs(model)
    buffer = io.BytesIO()
    torch.save([{f"module.{k}": v for k, v in theirs.items()}, {}, step, theirs], buffer)
    storage.write_bytes_atomic(str(path), buffer.getvalue())
