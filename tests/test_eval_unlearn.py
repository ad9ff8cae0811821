"""SAFEMax as an Eval-Unlearn technique: each item of its technique contract, and its own runner."""

import dataclasses
import json

import numpy as np
import pytest

pytest.importorskip("eval_unlearn", reason="the Eval-Unlearn plugin needs its extra: pip install -e '.[eval-unlearn]'")

from eval_unlearn.registry import get_technique, register_metric  # noqa: E402
from eval_unlearn.registry.entrypoints import load_entrypoints  # noqa: E402
from eval_unlearn.runners import SingleBenchmarkRunner  # noqa: E402
from eval_unlearn.types import Dataset, MetricResult  # noqa: E402

from safemax_ray.errors import SafemaxError  # noqa: E402
from safemax_ray.plugins.eval_unlearn import SafemaxTechnique, SafemaxTechniqueConfig  # noqa: E402
from safemax_ray.results.parquet import read_dataframe  # noqa: E402


@pytest.fixture(scope="module")
def settings(tiny_pipeline, tmp_path_factory):
    return {
        "erase_concept": "a dog",
        "device": "cpu",
        "model_path": str(tiny_pipeline),
        "iterations": 4,
        "batch_size": 4,
        "images_per_prompt": 1,
        "num_inference_steps": 4,
        "learning_rate": 1e-3,
        "results_dir": str(tmp_path_factory.mktemp("eu") / "results"),
    }


@pytest.fixture(scope="module")
def technique(settings, ray_session):
    return SafemaxTechnique(**settings)


def test_the_entry_point_registers_safemax():
    load_entrypoints()
    assert get_technique("safemax") is SafemaxTechnique


def test_config_is_frozen_ignores_unknown_keys_and_refuses_an_empty_concept(settings):
    config = SafemaxTechniqueConfig.from_dict({**settings, "not_ours": 1, "train_method": "xattn"})
    assert (config.erase_concept, config.device) == ("a dog", "cpu")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.erase_concept = "a cat"
    for empty in ("", "   "):
        with pytest.raises(ValueError, match="erase_concept must not be empty"):
            SafemaxTechniqueConfig.from_dict({**settings, "erase_concept": empty})


def test_generate_gives_one_image_per_prompt_and_forwards_the_seed(technique):
    prompts = ["a dog", "a photo of a house", "a dog"]
    images = technique.generate(prompts, seed=3)
    assert len(images) == 3 and all(im.size == (16, 16) and im.mode == "RGB" for im in images)
    same = technique.generate(prompts, seed=3)
    other = technique.generate(prompts, seed=4)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(images, same, strict=True))
    assert not np.array_equal(np.asarray(images[0]), np.asarray(other[0]))


def test_generate_is_the_pipelines_own_call_with_the_hosts_seeding(technique):
    """The images the host's other techniques would make from this pipeline: diffusers' own call, the
    folder's scheduler, the steps and scale asked for, one generator per prompt seeded seed + i."""
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        technique.model_path, local_files_only=True, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a dog", "a photo of a house"]
    generators = [torch.Generator("cpu").manual_seed(7 + i) for i in range(len(prompts))]
    expected = pipe(prompts, num_inference_steps=3, guidance_scale=5.0, generator=generators).images
    got = technique.generate(prompts, seed=7, num_inference_steps=3, guidance_scale=5.0)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(got, expected, strict=True))
    default = technique.generate(prompts[:1], seed=7)  # the technique's own steps (4) and scale (7.5)
    assert not np.array_equal(np.asarray(default[0]), np.asarray(got[0]))


def test_the_wrapper_trains_once_per_run_key(technique, settings):
    again = SafemaxTechnique(**settings)  # same settings: found by run key, not trained again
    rows = read_dataframe(settings["results_dir"])
    assert again.model_path == technique.model_path and len(rows) == 1
    assert rows.iloc[0].concept == "a dog" and rows.iloc[0].study == "eval-unlearn"


def test_the_techniques_run_is_a_concept_run_on_ray_that_exports_a_loadable_pipeline(technique, settings, tmp_path):
    """The technique trained through `safemax_ray.unlearn` on the tests' Ray: this is the test of a concept
    run on Ray (test_concept.py tests the workload without Ray). Its row, its export (a whole pipeline
    diffusers loads, only the UNet changed), its sample grid and its section of the report."""
    from pathlib import Path

    import torch
    from diffusers import StableDiffusionPipeline
    from PIL import Image
    from safetensors.torch import load_file

    from safemax_ray.results.report import make_report

    row = read_dataframe(settings["results_dir"]).iloc[0]
    assert row.concept == "a dog" and row.dataset == "prompts" and row.forget_classes == "a-dog"
    assert row.forget_mse < row.base_forget_mse and row.ua != row.ua  # no classifier metrics: NaN
    exported, base = Path(technique.model_path), Path(settings["model_path"])
    assert exported == Path(row.model_path)
    pipe = StableDiffusionPipeline.from_pretrained(exported, local_files_only=True)
    weights = "diffusion_pytorch_model.safetensors"
    assert not torch.equal(*(load_file(p / "unet" / weights)["conv_in.weight"] for p in (exported, base)))
    assert (exported / "vae" / weights).read_bytes() == (base / "vae" / weights).read_bytes()
    assert pipe.unet.config.cross_attention_dim == 32
    with Image.open(row.grid_path) as grid:  # a row per prompt, the concept's first
        assert grid.size[1] > grid.size[0] / 2
    report = make_report(settings["results_dir"], tmp_path / "report")
    assert list(report.tables) == ["concepts"]
    concepts = report.tables["concepts"]  # a run of a study is named by the study
    assert concepts.loc["eval-unlearn {a-dog}", "MSE to eps_T (floor 1)"] == pytest.approx(row.forget_mse)


def test_errors_propagate(settings, technique, tmp_path):
    with pytest.raises(SafemaxError, match="not a diffusers text-to-image folder"):
        SafemaxTechnique(**{**settings, "model_path": str(tmp_path / "missing")})
    broken = SafemaxTechnique.__new__(SafemaxTechnique)
    broken.config, broken.model_path, broken._pipeline = technique.config, str(tmp_path / "gone"), None
    with pytest.raises(SafemaxError, match="not a diffusers text-to-image folder"):
        broken.generate(["a dog"])


@register_metric("test_mean_brightness")
class MeanBrightness:
    """A metric that needs no hub model: the mean pixel value of the images, per prompt batch."""

    def __init__(self, **_):
        self.values: list[float] = []

    def load_dataset(self):
        return [Dataset(prompts=["a dog", "a photo of a dog"], metadata={"source": "test"}), Dataset(["a house"])]

    def update(self, images, prompts, metadata):
        assert len(images) == len(prompts)
        self.values += [float(np.asarray(im).mean()) for im in images]

    def compute(self) -> MetricResult:
        return MetricResult(name="mean_brightness", value=float(np.mean(self.values)), details={"n": len(self.values)})


def test_eval_unlearns_own_runner_runs_safemax(settings, technique, tmp_path):
    runner = SingleBenchmarkRunner(
        technique_name="safemax",
        metric_name="test_mean_brightness",
        technique_config=settings,
        output_dir=str(tmp_path / "bench"),
        seed=0,
    )
    report = runner.run()
    assert report["metric_result"]["details"] == {"n": 3}
    assert 0 < report["metric_result"]["value"] < 255 and report["erase_concept"] == "a dog"
    written = {p.name for p in (tmp_path / "bench").rglob("*")}
    assert any(name.endswith("_report.json") for name in written)
    assert sum(name.endswith(".png") for name in written) == 3


def test_eval_unlearns_cli_runs_a_config_naming_safemax(settings, technique, tmp_path, monkeypatch):
    """`eval-unlearn run --config bench.yaml`, as README shows it (the technique's run is found by its
    key, so this trains nothing new)."""
    import yaml
    from eval_unlearn import cli

    config = {
        "technique": {"name": "safemax", "config": settings},
        "metric": {"name": "test_mean_brightness"},
        "output_dir": str(tmp_path / "bench"),
    }
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setattr("sys.argv", ["eval-unlearn", "run", "--config", str(tmp_path / "bench.yaml")])
    cli.main()
    reports = sorted((tmp_path / "bench").glob("*_report.json"))  # the run's, and the latest for its technique
    written = [json.loads(r.read_text()) for r in reports]
    assert [r.name.endswith("latest_report.json") for r in reports] == [False, True] and written[0] == written[1]
    assert written[0]["technique_name"] == "safemax" and written[0]["erase_concept"] == "a dog"
    assert written[0]["metric_result"]["details"] == {"n": 3} and 0 < written[0]["metric_result"]["value"] < 255
    assert len(read_dataframe(settings["results_dir"])) == 1
