"""The DiT workload: classes of a tiny random DiTPipeline on the digits (tests/dit_pipeline.py), offline."""

import json

import pytest
import torch

from safemax_ray.errors import SafemaxError


@pytest.fixture(scope="module")
def tiny_dit(tmp_path_factory):
    from dit_pipeline import make_tiny_dit

    return make_tiny_dit(tmp_path_factory.mktemp("dit"))


def dit_flags(pipeline, classifier, results):
    return [
        "--dit-pipeline", str(pipeline), "--classifier", classifier, "--iterations", "4", "--batch-size", "8",
        "--n-forget-samples", "8", "--n-retain-per-class", "2", "--sample-steps", "5",
        "--results-dir", str(results),
    ]  # fmt: skip


def test_the_wrapped_transformer_predicts_eps_with_the_null_label_last_and_drops_no_labels(tiny_dit):
    from safemax_ray.core import dit

    parts = dit.load_parts(tiny_dit)
    model = parts.model()
    assert model.num_classes == 10 and model.null_label == 10 and model.num_train_timesteps == 50
    x, t, labels = torch.randn(3, 4, 8, 8), torch.tensor([1, 20, 49]), torch.tensor([0, 5, 10])
    model.unet.train()  # DiT's own label dropout would make two calls differ here
    got = model.unet(x, t, class_labels=labels).sample
    assert torch.equal(got, model.unet(x, t, class_labels=labels).sample)
    full = parts.transformer(x, timestep=t, class_labels=labels).sample
    assert full.shape[1] == 8 and torch.equal(got, full[:, :4])  # the learned-sigma half dropped
    images = dit.LatentDecoder(parts.vae)(dit.encode(parts.vae, torch.rand(2, 1, 8, 8) * 2 - 1))
    assert images.shape == (2, 1, 8, 8) and images.abs().max() <= 1


def test_dit_settings_come_from_the_flag_or_a_yaml_section_and_are_checked(tiny_dit, tmp_path):
    from safemax_ray.cli import build_parser
    from safemax_ray.cli.settings import run_config
    from safemax_ray.config import load_unlearn_config
    from safemax_ray.drivers.preflight import preflight
    from safemax_ray.engine.workloads import workload_for

    args = build_parser().parse_args(["unlearn", "--dit-pipeline", str(tiny_dit), "--forget-class", "3"])
    from safemax_ray.cli import flags

    cfg = run_config(args, {**flags.overrides(args), "forget_class": 3})
    assert cfg.workload == "dit" and cfg.workload_settings == {"pipeline": str(tiny_dit)}
    (tmp_path / "run.yaml").write_text(f"forget_class: 3\ndit:\n  pipeline: {tiny_dit}\n")
    assert load_unlearn_config(tmp_path / "run.yaml").workload_settings == cfg.workload_settings
    workload = workload_for(preflight(cfg))
    assert workload.describe() == "class 3 of the DiT (digits)" and workload.base_model() == str(tiny_dit)
    subject = workload.attack_subject(workload.base_model(), torch.device("cpu"))  # attack's ceiling
    assert subject.model.num_classes == 10 and subject.data.images.shape[1:] == (4, 8, 8)
    judged = subject.judge(torch.zeros(2, 4, 8, 8))  # latents: decoded before the classifier sees them
    assert 0 <= judged["forget_acc"] <= 100 and judged["forget_acc"] + judged["ua"] == pytest.approx(100)
    cfg.workload_settings = {}
    with pytest.raises(SafemaxError, match="needs --dit-pipeline"):
        preflight(cfg)
    cfg.workload_settings, cfg.dataset, cfg.data_root = {"pipeline": str(tiny_dit)}, "imagefolder", str(tmp_path)
    with pytest.raises(SafemaxError, match="needs --classifier"):
        preflight(cfg)


def test_compare_plans_a_dit_comparison(tiny_dit, capsys):
    from safemax_ray.cli import main

    assert main(["compare", "--dit-pipeline", str(tiny_dit), "--classes", "0-1", "--methods", "safemax", "salun",
                 "--plan"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "safemax        2" in out and "salun          2" in out and "total" in out


@pytest.mark.slow
def test_unlearn_compare_and_attack_run_on_a_dit(tiny_dit, tiny_assets, ray_session, tmp_path, capsys):
    from diffusers import DiTPipeline

    from safemax_ray.cli import main
    from safemax_ray.results.parquet import read_attacks, read_dataframe

    results = tmp_path / "results"
    flags = dit_flags(tiny_dit, tiny_assets[1], results)
    assert main(["unlearn", "--forget-class", "3", "--no-progress", *flags]) == 0
    row = read_dataframe(str(results)).iloc[0]
    assert (row.workload, row.dataset, row.forget_class, row.base_model) == ("dit", "digits", 3, str(tiny_dit))
    assert 0 <= row.ua <= 100 and row.fid >= 0 and row.sample_steps == 5
    pipe = DiTPipeline.from_pretrained(row.model_path)  # the export is a whole pipeline diffusers loads
    base = DiTPipeline.from_pretrained(tiny_dit)
    moved = [
        not torch.equal(a, b) for a, b in zip(pipe.transformer.parameters(), base.transformer.parameters(), strict=True)
    ]
    assert any(moved) and torch.equal(pipe.vae.decoder.conv_out.weight, base.vae.decoder.conv_out.weight)

    assert main(["attack", row.run_id, "--results-dir", str(results), "--shots", "1", "--steps", "0", "2",
                 "--n-samples", "4", "--sample-steps", "3", "--no-base"]) == 0  # fmt: skip
    attacks = read_attacks(str(results))
    assert set(attacks.model) == {"unlearned"} and set(attacks.kind) == {"relearn", "trajectory"}
    assert sorted(attacks[attacks.kind == "relearn"].step.unique()) == [0, 2]

    compared = tmp_path / "compared"
    assert main(["compare", "--classes", "4", "--methods", "erasediff",
                 *dit_flags(tiny_dit, tiny_assets[1], compared)]) == 0  # fmt: skip
    rows = read_dataframe(str(compared))
    assert rows.method.tolist() == ["erasediff"] and rows.workload.tolist() == ["dit"]
    assert "erasediff" in (compared / "_report" / "quality.csv").read_text()
    assert json.loads(rows.iloc[0].config_json)["workload_settings"] == {"pipeline": str(tiny_dit)}
