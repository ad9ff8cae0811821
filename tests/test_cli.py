"""The `safemax-ray` command: bad input fails fast with a clear message; a tiny run goes end to end."""

import json

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
        (["--method", "salun"], "unknown unlearning method 'salun'"),
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


def test_unlearn_end_to_end(tiny_assets, ray_session, tmp_path, capsys):
    code = main(["unlearn", "--forget-class", "2", "--no-progress", *tiny_flags(tiny_assets, tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "UA %" in out and "base model" in out
    df = read_dataframe(str(tmp_path))
    assert len(df) == 1
    row = df.iloc[0]
    assert row.forget_class == 2 and row.iterations == 4 and row.num_workers == 1
    assert 0 <= row.ua <= 100 and row.entropy >= 0 and row.fid >= 0
    assert row.base_ua is not None and row.rte_s > 0 and row.peak_mem_mb > 0
    model = load_model(row.model_path, num_classes=10)  # a diffusers folder that loads back
    assert model.num_classes == 10
    with Image.open(row.grid_path) as grid:
        assert grid.size[0] > 0
    assert json.loads(row.config_json)["forget_class"] == 2
    # A second run writes a second row and never touches the first one's files.
    assert main(["unlearn", "--forget-class", "2", "--no-progress", *tiny_flags(tiny_assets, tmp_path)]) == 0
    assert len(read_dataframe(str(tmp_path))) == 2


def test_existing_output_dir_is_not_overwritten(tiny_assets, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    flags = tiny_flags(tiny_assets, tmp_path)
    assert main(["unlearn", "--output-dir", str(out), *flags]) == 2
    assert "already exists" in capsys.readouterr().out
    assert (out / "keep.txt").read_text() == "mine"
