"""The `safemax-ray` command: bad input fails fast with a clear message; a tiny run goes end to end."""

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
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


def test_one_worker_from_the_command_line_trains_the_model_of_two_workers(
    tiny_assets, finished_run, tmp_path, capsys, monkeypatch
):
    """`safemax-ray unlearn` end to end on one Ray Train worker (evaluated there too), with the settings of
    the shared two-worker run (conftest.tiny_run_config): the same global batch and draws, so the same
    model, whose only difference is the order of floating-point sums in gloo's all-reduce.

    Measured: the noise predictions agree to 1e-6 while training moved them by 1.8. Weights agree to
    1e-9 except ~2% that feed a one-channel-per-group GroupNorm (conv biases, time-embedding
    projections): their gradient is zero in exact arithmetic, and Adam turns float noise there into
    steps of +-lr, which change nothing downstream.
    """
    # Paths relative to the shell's folder: the Ray workers run elsewhere and must get them absolute.
    monkeypatch.chdir(Path(tiny_assets[0]).parent)
    twin = {"--iterations": "8", "--sample-steps": "5", "--cpus-per-worker": "1", "--eval-workers": "train"}
    flags = tiny_flags(("model", "classifier"), os.path.relpath(tmp_path), **twin)
    dead = "http://127.0.0.1:9"  # nothing listens: tracking costs a warning and nothing else
    code = main(
        ["unlearn", "--forget-class", "1", "--num-workers", "1", "--no-progress", "--tracking-uri", dead, *flags]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"MLflow tracking at {dead} failed, the run goes on untracked" in " ".join(out.split())
    assert "UA %" in out and "base model" in out
    # The tiny base model is trained for seconds: it fails its own check, and the table says so.
    assert "base model fails its own check" in " ".join(out.split())
    df = read_dataframe(str(tmp_path))
    assert len(df) == 1
    row = df.iloc[0]
    assert row.forget_class == 1 and row.iterations == 8 and row.num_workers == 1
    assert 0 <= row.ua <= 100 and row.entropy >= 0 and row.fid >= 0
    assert 0 <= row.base_ua <= 100 and row.rte_s > 0 and row.peak_mem_mb > 0
    assert row.base_ok is not None and not row.base_ok
    with Image.open(row.grid_path) as grid:  # a row of 10 per class (the forget class first), 8x8 + 1 gap
        scale = 256 // (10 * 9)
        assert grid.size == (10 * 9 * scale, 10 * 9 * scale)
    assert json.loads(row.config_json)["forget_class"] == 1

    base, p1, p2 = predictions(tiny_assets[0]), predictions(row.model_path), predictions(finished_run.model_path)
    assert (p1 - base).abs().max() > 0.1  # the runs did train
    assert (p1 - p2).abs().max() < 1e-4
    # The evaluation images are identical for any worker count or evaluation path (each sampler here is
    # single-threaded), so UA agrees exactly; FID comes from feature sums that one Train worker and two
    # evaluation tasks add in a different order, so it agrees to rounding.
    assert (row.num_workers, finished_run.row["num_workers"]) == (1, 2)
    assert pd.isna(row.eval_nodes) and finished_run.row["eval_nodes"] == 1  # its Train worker; tasks on this node
    assert row.ua == finished_run.metrics["ua"]
    assert row.base_fid == pytest.approx(finished_run.metrics["base_fid"], rel=1e-6)


def mlflow_runs(store: str, experiment: str):
    import mlflow

    mlflow.set_tracking_uri(store)
    return mlflow.search_runs(experiment_names=[experiment])


def predictions(path):
    """The model's noise predictions on fixed inputs, every class and the null label."""
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 25, (16,), generator=g)
    with torch.no_grad():
        return load_model(path).unet(x, t, class_labels=torch.arange(16) % 11).sample


def test_divergence_is_one_line_and_leaves_nothing(tiny_assets, ray_session, tmp_path, capsys):
    store = f"sqlite:///{tmp_path}-mlflow.db"
    flags = tiny_flags(tiny_assets, tmp_path, **{"--lr": "1000", "--tracking-uri": store})
    code = main(["unlearn", "--no-progress", *flags])
    out = capsys.readouterr().out
    assert code == 2 and "training diverged at step" in out and "--lr, now 1000" in out
    assert len([line for line in out.splitlines() if "error" in line.lower()]) == 1, out
    assert "Traceback" not in out and "WorkerHealthCheck" not in out
    assert read_dataframe(str(tmp_path)).empty and not (tmp_path / "_models").exists()
    runs = mlflow_runs(store, "safemax_ray")  # its MLflow run ended FAILED, saying why
    assert list(runs.status) == ["FAILED"] and "training diverged at step" in runs["tags.safemax.failure"].iloc[0]


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
