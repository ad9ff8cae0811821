"""Models in and out of the field's own format: `safemax-ray import` and `safemax-ray export`.

Import reads a Selective-Amnesia-format `ckpt.pth` (SA, SalUn, EraseDiff, SFR-on) into a diffusers
folder that every command takes as `--model`; export writes an unlearned model (a run id or a model
folder) back into that format, so their sampling and evaluation scripts load it strictly.
"""

from __future__ import annotations

import json
from pathlib import Path

from safemax_ray.core.concat_unet import ConcatClassUNet
from safemax_ray.core.models import PRESET_FILE, load_model, save_model
from safemax_ray.core.sa_checkpoint import ReferenceConfig, read_checkpoint, write_checkpoint
from safemax_ray.errors import SafemaxError
from safemax_ray.results import layout

FORMATS = ("sa",)  # Selective Amnesia's list layout, shared by SalUn, EraseDiff and SFR-on


def import_checkpoint(
    checkpoint: str, output: str, weights: str = "auto", config: str | None = None, overwrite: bool = False
) -> Path:
    """Their checkpoint (and optionally their config.yml) as a diffusers folder at `output`."""
    reference = ReferenceConfig.from_yaml(config) if config else ReferenceConfig()
    model = read_checkpoint(checkpoint, weights, reference)
    out = save_model(model, output, overwrite=overwrite)
    (out / PRESET_FILE).write_text(json.dumps({"arch": "sa-import", "source": str(Path(checkpoint).resolve())}))
    return out


def export_model(run_or_folder: str, output: str, fmt: str = "sa", results_dir: str = "safemax_results") -> Path:
    """The model of a run id stored under `results_dir`, or of a model folder, in format `fmt`."""
    if fmt not in FORMATS:
        raise SafemaxError(f"unknown --format {fmt!r}; formats: {', '.join(FORMATS)}")
    folder = _model_folder(run_or_folder, results_dir)
    model = load_model(folder)
    if not isinstance(model.unet, ConcatClassUNet):
        preset = _preset(folder)
        raise SafemaxError(
            f"{folder} is not of the reference layout (it is {preset}, with the class added to the time "
            "embedding); only models imported from that format or pretrained with --arch ddpm-cifar10 export to it"
        )
    if Path(output).exists():
        raise SafemaxError(f"{output} already exists; not overwriting it")
    write_checkpoint(model, output)
    return Path(output)


def _model_folder(run_or_folder: str, results_dir: str) -> str:
    if Path(run_or_folder, "unet", "config.json").is_file():
        return run_or_folder
    from safemax_ray.results.parquet import read_dataframe

    rows = read_dataframe(results_dir)
    match = rows[rows.run_id == run_or_folder]
    if match.empty:
        raise SafemaxError(f"{run_or_folder!r} is neither a model folder nor a run id stored under {results_dir}")
    return layout.stored_path(results_dir, str(match.model_path.iloc[0]))


def _preset(folder: str) -> str:
    record = Path(folder, PRESET_FILE)
    if record.is_file():
        return f"preset {json.loads(record.read_text()).get('arch')!r}"
    return "a UNet2DModel of no recorded preset"
