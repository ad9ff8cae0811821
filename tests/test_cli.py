"""The `safemax-ray` command: bad input fails fast with a clear message; a tiny run goes end to end."""

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import tiny_flags
from PIL import Image

from safemax_ray.cli import main
from safemax_ray.core.models import load_model
from safemax_ray.results.parquet import read_dataframe


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--forget-class", "10"], "forget class 10 is not in this dataset"),
        (["--model", "/nonexistent/model"], "model folder /nonexistent/model does not exist"),
        (["--lam", "-1"], "lam (lambda) must be >= 0"),
        (["--lr", "-0.1"], "lr must be > 0"),
        (["--iterations", "0"], "iterations must be >= 1"),
        (["--method", "esd"], "unknown unlearning method 'esd'"),
        (["--config", "/nonexistent.yaml"], "config file /nonexistent.yaml does not exist"),
    ],
)
def test_bad_input_is_a_clear_error(flags, message, capsys, tmp_path):
    assert main(["unlearn", "--results-dir", str(tmp_path), *flags]) == 2
    out = capsys.readouterr().out
    assert "error:" in out and message in " ".join(out.split())
    assert "Traceback" not in out


def test_non_diffusers_folder_is_refused(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.ckpt").write_bytes(b"\0")
    assert main(["unlearn", "--model", str(tmp_path / "m")]) == 2
    assert "not a diffusers model folder" in capsys.readouterr().out


def test_unlearn_end_to_end_with_relative_paths(tiny_assets, ray_session, tmp_path, capsys, monkeypatch):
    # Paths relative to the shell's folder: the Ray workers run elsewhere and must get them absolute.
    monkeypatch.chdir(Path(tiny_assets[0]).parent)
    flags = tiny_flags(("model", "classifier"), os.path.relpath(tmp_path))
    code = main(["unlearn", "--forget-class", "2", "--no-progress", *flags])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "UA %" in out and "base model" in out
    # The tiny base model is trained for seconds: it fails its own check, and the table says so.
    assert "base model fails its own check" in " ".join(out.split())
    df = read_dataframe(str(tmp_path))
    assert len(df) == 1
    row = df.iloc[0]
    assert row.forget_class == 2 and row.iterations == 4 and row.num_workers == 1
    assert 0 <= row.ua <= 100 and row.entropy >= 0 and row.fid >= 0
    assert row.base_ua is not None and row.rte_s > 0 and row.peak_mem_mb > 0 and not row.base_ok
    model = load_model(row.model_path, num_classes=10)  # a diffusers folder that loads back
    assert model.num_classes == 10
    with Image.open(row.grid_path) as grid:
        assert grid.size[0] > 0
    assert json.loads(row.config_json)["forget_class"] == 2


def test_divergence_is_one_line_and_leaves_nothing(tiny_assets, ray_session, tmp_path, capsys):
    code = main(["unlearn", "--no-progress", *tiny_flags(tiny_assets, tmp_path, **{"--lr": "1000"})])
    out = capsys.readouterr().out
    assert code == 2 and "training diverged at step" in out and "--lr, now 1000" in out
    assert len([line for line in out.splitlines() if "error" in line.lower()]) == 1, out
    assert "Traceback" not in out and "WorkerHealthCheck" not in out
    assert read_dataframe(str(tmp_path)).empty and not (tmp_path / "models").exists()


def _no_ray(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started before the input was checked")

    monkeypatch.setattr("safemax_ray.ray.cluster.ensure_ray", refuse)


def test_results_dir_that_is_a_file_is_refused_before_ray_starts(tiny_assets, tmp_path, capsys, monkeypatch):
    _no_ray(monkeypatch)
    (tmp_path / "results").write_text("not a folder")
    assert main(["unlearn", *tiny_flags(tiny_assets, tmp_path / "results")]) == 2
    out = capsys.readouterr().out
    assert "results folder" in out and "is a file, not a folder" in out


def test_truncated_weights_are_refused_before_ray_starts(tiny_assets, tmp_path, capsys, monkeypatch):
    _no_ray(monkeypatch)
    model = tmp_path / "model"
    shutil.copytree(tiny_assets[0], model)
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert main(["unlearn", *tiny_flags((str(model), tiny_assets[1]), tmp_path / "results")]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert f"cannot read the model weights in {model}" in out and "truncated" in out


def test_existing_output_dir_is_not_overwritten(tiny_assets, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    flags = tiny_flags(tiny_assets, tmp_path)
    assert main(["unlearn", "--output-dir", str(out), *flags]) == 2
    assert "already exists" in capsys.readouterr().out
    assert (out / "keep.txt").read_text() == "mine"
