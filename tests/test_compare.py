"""compare: the paper's methods on the same classes through the batch machinery, then the report with
cost ratios to SAFEMax and the forget-samples figure."""

from pathlib import Path

import pytest
from test_attack import the_folder_reads_as_the_run_rows

from safemax_ray.cli.compare import parse_options
from safemax_ray.config import UnlearnConfig, load_unlearn_config
from safemax_ray.drivers.compare import compare, plan_comparison
from safemax_ray.errors import SafemaxError


def test_plan_gives_sa_twenty_times_the_iterations_and_each_method_its_options():
    configs = plan_comparison(UnlearnConfig(iterations=10), [0, 3], ["safemax", "sa"], {"sa": {"gamma": 0.5}})
    assert [(c.method, c.forget_class, c.iterations) for c in configs] == [
        ("safemax", 0, 10),
        ("safemax", 3, 10),
        ("sa", 0, 200),
        ("sa", 3, 200),
    ]
    assert configs[2].options().gamma == 0.5 and configs[0].method_options == {}
    with pytest.raises(SafemaxError, match="options given for salun"):
        plan_comparison(UnlearnConfig(), [0], ["safemax"], {"salun": {"alpha": 1.0}})
    with pytest.raises(SafemaxError, match="unknown unlearning method 'esd'"):
        plan_comparison(UnlearnConfig(), [0], ["safemax", "esd"])


def test_options_flag_parses_method_dot_option_pairs():
    assert parse_options(["sa.fisher_samples_per_class=50", "salun.mask_ratio=0.3"]) == {
        "sa": {"fisher_samples_per_class": 50},
        "salun": {"mask_ratio": 0.3},
    }
    with pytest.raises(SafemaxError, match="METHOD.OPTION=VALUE"):
        parse_options(["gamma=1"])


def paper_stand_ins(root: Path) -> dict[str, str]:
    """The four files the paper's config asks for, tiny: a narrow Selective-Amnesia-format checkpoint
    (imported by the command line, as README shows), a random ResNet-34 state dict, a CIFAR-10 binary
    release of 40 images (no Inception)."""
    import numpy as np
    import torch
    from reference_ddpm import random_state, save_checkpoint
    from resnet34_reference import random_state as resnet_state
    from test_sa_checkpoint import narrow_config

    from safemax_ray.cli import main

    save_checkpoint(root / "ckpt.pth", random_state(0, ch=32), random_state(1, ch=32))
    model = root / "model"
    assert main(["import", str(root / "ckpt.pth"), "--output", str(model), "--config", narrow_config(root)]) == 0
    torch.save(resnet_state(10), root / "cifar10_resnet34.pth")
    batches = root / "cifar10" / "cifar-10-batches-bin"
    batches.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        labels = np.arange(8, dtype=np.uint8)[:, None] + 2 * (i % 2)  # classes 0-7 or 2-9: each twice or more
        pixels = rng.integers(0, 256, (8, 3072), dtype=np.uint8)
        np.concatenate([labels % 10, pixels], axis=1).tofile(batches / f"data_batch_{i}.bin")
    return {"model": str(model), "classifier": str(root / "cifar10_resnet34.pth"), "data_root": str(root / "cifar10")}


def test_the_paper_config_runs_end_to_end_on_stand_ins(tmp_path, ray_session):
    """The researcher's path: their checkpoint in (`import`), tune_configs/paper-cifar10.yaml with tiny
    stand-ins for its four files and a tiny budget: SAFEMax and SA (the method with a set-up and the 20x
    budget) on one class through compare, judged by the ResNet-34, then the report with the cost ratios
    and Figure 2 (that a stored run is not rerun, test_batch checks); the SAFEMax model goes back out in
    their format (`export`) and is the unlearned model. (SalUn runs the same path; its plan is checked above and its
    training in test_baselines.)"""
    paths = paper_stand_ins(tmp_path)
    tiny = {
        "iterations": 1,
        "batch_size": 4,
        "eval.n_forget_samples": 4,
        "eval.n_retain_per_class": 2,
        "eval.sample_steps": 3,
        "results_dir": str(tmp_path / "results"),
        **paths,
    }
    base = load_unlearn_config(Path(__file__).parent.parent / "tune_configs" / "paper-cifar10.yaml", **tiny)
    base.eval.fid_weights = None  # no Inception weights here: FID on the judge's features
    options = {"sa": {"fisher_samples_per_class": 2, "fisher_timesteps": 3}}
    result = compare(base, [3], ["safemax", "sa"], options)
    assert len(result.batch.done) == 2 and not result.batch.failed
    rows = {row["method"]: row for row in result.batch.done}
    assert rows["sa"]["iterations"] == 20 and rows["sa"]["setup_s"] > 0
    assert {row["dataset"] for row in rows.values()} == {"cifar10"}
    assert {row["fid_features"] for row in rows.values()} == {"classifier"}
    ratios = result.report.tables["ratios"]
    assert ratios.loc["safemax", "RTE / safemax"] == pytest.approx(1.0)
    assert set(ratios.index) == {"safemax", "sa"}
    names = {p.name for p in result.report.files}
    assert {"ratios.md", "forget_samples.png", "quality.md", "cost.md", "report.html"} <= names
    the_folder_reads_as_the_run_rows(
        str(tmp_path / "results"), [row["run_id"] for row in rows.values()], ray_data=False
    )
    exported_back_is_the_unlearned_model(rows["safemax"], tmp_path)


def exported_back_is_the_unlearned_model(row: dict, tmp_path: Path) -> None:
    import torch
    from test_sa_checkpoint import _layout, agreement

    from safemax_ray.cli import main
    from safemax_ray.core.models import load_model

    out = tmp_path / "unlearned.pth"
    flags = ["--format", "sa", "--output", str(out), "--results-dir", str(tmp_path / "results")]
    assert main(["export", row["run_id"], *flags]) == 0
    unlearned = load_model(row["model_path"])
    assert agreement(unlearned, torch.load(out, weights_only=True)[3], _layout(32)) <= 1e-4
    before = load_model(tmp_path / "model").unet.state_dict()
    assert any(not torch.equal(before[k], v) for k, v in unlearned.unet.state_dict().items())


def test_a_cifar_folder_without_its_batches_is_refused_by_name(tmp_path):
    from safemax_ray.core.data import load_cifar10

    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(SafemaxError, match="lacks data_batch_1, .*data_batch_5: copy the whole CIFAR-10"):
        load_cifar10(tmp_path)
