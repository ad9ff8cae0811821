"""The config boundary: every impossible setting is refused in one line where the run is set up, from the
Python API and from the CLI, before Ray starts; a cache entry that cannot be read is a miss."""

import dataclasses
import typing

import pytest
import torch

from safemax_ray.cli import main
from safemax_ray.config import EvalConfig, RayConfig, UnlearnConfig
from safemax_ray.errors import SafemaxError
from safemax_ray.schema import apply_overrides

# Every numeric and list setting, with values that cannot make a run (zero, negative, empty, duplicate, ...).
IMPOSSIBLE = {
    "forget_class": [-1, [], [3, 3]],
    "image_size": [0, -8],
    "lr": [0.0, -1e-3],
    "iterations": [0, -1],
    "batch_size": [0, -4],
    "seed": [-1],
    "grad_clip": [0.0, -1.0],
    "stats_every": [0, -1],
    "eval.guidance": [-1.0],
    "eval.sample_steps": [0, -5],
    "eval.n_forget_samples": [0, 1, -1],
    "eval.n_retain_per_class": [0, 1, -1],
    "eval.batch_size": [0, -1],
    "eval.workers": [0, -2, "some"],
    "eval.seed": [-1],
    "eval.base_min_acc": [-1.0, 101.0],
    "eval.eta": [-0.1, 1.5],
    "ray.num_workers": [0, -1],
    "ray.cpus_per_worker": [0.0, -1.0],
    "ray.gpus_per_worker": [0.0, 1.5],
    "ray.num_cpus": [0, -1],
    "ray.checkpoint_every": [0, -1],
    "ray.max_failures": [-1],
    "method_options.lam": [-1.0],
    "method_options.alpha": [-1.0],
    "method_options.null_drop": [-0.1, 1.0],
}
CASES = [(key, value) for key, values in IMPOSSIBLE.items() for value in values]


def _numeric_settings(cls: type, prefix: str = "") -> set[str]:
    hints = typing.get_type_hints(cls)
    out = set()
    for f in dataclasses.fields(cls):
        kinds = set(typing.get_args(hints[f.name])) | {hints[f.name]}
        if kinds & {int, float, list[int]} and not (kinds & {str} and f.name != "workers"):
            out.add(prefix + f.name)
    return out


def test_the_sweep_covers_every_numeric_and_list_setting():
    every = (
        _numeric_settings(UnlearnConfig) | _numeric_settings(EvalConfig, "eval.") | _numeric_settings(RayConfig, "ray.")
    )
    assert every <= set(IMPOSSIBLE), sorted(every - set(IMPOSSIBLE))


@pytest.fixture
def no_ray(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started before the input was checked")

    monkeypatch.setattr("safemax_ray.ray.cluster.ensure_ray", refuse)


@pytest.mark.parametrize("key, value", CASES, ids=[f"{k}={v}" for k, v in CASES])
def test_the_python_api_refuses_it_in_one_line(key, value, no_ray, tmp_path):
    from safemax_ray import unlearn

    cfg = apply_overrides(UnlearnConfig(results_dir=str(tmp_path)), {key: value})
    with pytest.raises(SafemaxError) as refused:
        unlearn(cfg)
    message = str(refused.value)
    assert "\n" not in message and key.split(".")[-1] in message.replace(" (lambda)", ""), message


def _flag(key: str, value) -> list[str]:
    name = {
        "forget_class": "forget-class",
        "eval.batch_size": "eval-batch-size",
        "eval.workers": "eval-workers",
        "eval.seed": "eval-seed",
    }.get(key, key.split(".")[-1].replace("_", "-"))
    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return [f"--{name}={text}"]


@pytest.mark.parametrize("key, value", CASES, ids=[f"{k}={v}" for k, v in CASES])
def test_the_cli_refuses_it_in_one_line(key, value, no_ray, tmp_path, capsys):
    assert main(["unlearn", "--results-dir", str(tmp_path), *_flag(key, value)]) == 2
    captured = capsys.readouterr()
    lines = (captured.out + captured.err).strip().splitlines()
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in captured.out, lines


def test_forgetting_every_class_is_refused_before_ray_starts(no_ray, tmp_path, capsys):
    from safemax_ray import unlearn

    with pytest.raises(SafemaxError, match="names all 10 classes of digits: nothing would remain"):
        unlearn(UnlearnConfig(forget_class=list(range(10)), results_dir=str(tmp_path)))
    assert main(["unlearn", "--forget-class", "0-9", "--results-dir", str(tmp_path)]) == 2
    assert "forget at most 9 of them" in " ".join(capsys.readouterr().out.split())


def test_a_class_named_twice_on_the_command_line_is_refused(no_ray, capsys):
    assert main(["batch", "--classes", "0-4,3"]) == 2
    assert "class 3 is named twice" in capsys.readouterr().out


def _truncate_every_entry(cache_dir) -> int:
    entries = sorted(cache_dir.glob("*.safetensors"))
    for entry in entries:
        entry.write_bytes(entry.read_bytes()[:100])
    return len(entries)


def test_a_truncated_cache_entry_is_recomputed_and_the_run_finishes(tiny_assets, tmp_path, caplog):
    """The base model's evaluation samples and SA's Fisher, both cached: truncate them, run again."""
    from safemax_ray.engine.loop import evaluate_run, open_session, run_setup, train

    model, classifier = tiny_assets
    cfg = UnlearnConfig(
        model=model,
        classifier=classifier,
        method="sa",
        iterations=2,
        batch_size=8,
        method_options={"fisher_samples_per_class": 2, "fisher_timesteps": 2},
        eval=EvalConfig(n_forget_samples=4, n_retain_per_class=2, sample_steps=5),
    )
    cache = tmp_path / "_cache"

    def run():
        session = open_session(cfg, torch.device("cpu"))
        run_setup(session, str(cache))
        train(session)
        return session, evaluate_run(session, str(cache))

    first, first_eval = run()
    assert _truncate_every_entry(cache) == 11  # the Fisher and the base model's judgement of each class
    with caplog.at_level("WARNING", logger="safemax_ray"):
        again, again_eval = run()
    assert not again.state.setup_cached  # a miss, so computed again
    assert sum("cannot be read" in r.message and "recomputing" in r.message for r in caplog.records) == 11
    assert again_eval.metrics["base_ua"] == first_eval.metrics["base_ua"]
    third, _ = run()
    assert third.state.setup_cached  # the recomputed entries were written over the broken ones
