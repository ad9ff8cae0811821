"""Batch runs: class lists, tuned parameters per class, and a batch interrupted then resumed."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import tiny_flags

from safemax_ray.config import UnlearnConfig
from safemax_ray.drivers.batch import parse_classes, per_class_configs, tuned_params
from safemax_ray.errors import SafemaxError
from safemax_ray.identity import run_key
from safemax_ray.results import layout
from safemax_ray.results.parquet import read_dataframe, write_row


def test_parse_classes():
    assert parse_classes("0-9") == list(range(10))
    assert parse_classes("1,3, 5-6") == [1, 3, 5, 6]
    for bad in ("a", "3-1", "1,,2", "1,3,1", "0-4,3"):
        with pytest.raises(SafemaxError):
            parse_classes(bad)


def test_per_class_configs_give_each_class_its_own_key_and_tuned_values():
    base = UnlearnConfig(method_options={"lam": 1.0})
    configs = per_class_configs(base, [0, 1], {1: {"method_options": {"lam": 3.0}, "lr": 1e-4, "iterations": 50}})
    assert [c.forget_class for c in configs] == [0, 1]
    assert configs[0].options().lam == 1.0 and (configs[1].options().lam, configs[1].iterations) == (3.0, 50)
    assert base.method_options == {"lam": 1.0}  # planning never changes the base config
    assert len({run_key(c) for c in configs}) == 2


def test_cli_reads_a_class_list_as_classes_forgotten_together():
    from safemax_ray.cli import build_parser

    args = build_parser().parse_args(["unlearn", "--forget-class", "3,7"])
    assert args.forget_class == [3, 7]
    assert build_parser().parse_args(["unlearn", "--forget-class", "4"]).forget_class == 4


def test_tuned_params_pick_the_best_trial_per_class(tmp_path):
    from test_results import make_row

    def opts(lam):
        return {"lam": lam, "method_options_json": json.dumps({"lam": lam, "alpha": 1.0})}

    write_row(str(tmp_path), make_row("a", 0, score=0.5, study="s", trial_id="a", **opts(1.0)))
    write_row(str(tmp_path), make_row("b", 0, score=0.9, study="s", trial_id="b", **opts(2.0)))
    write_row(str(tmp_path), make_row("c", 1, score=0.1, study="s", trial_id="c", **opts(3.0)))
    write_row(str(tmp_path), make_row("d", 2, **opts(4.0)))  # not a tuned trial: no score
    params = tuned_params(str(tmp_path), "digits")
    assert params == {
        0: {"lr": 1e-3, "iterations": 10, "method_options": {"lam": 2.0, "alpha": 1.0}},
        1: {"lr": 1e-3, "iterations": 10, "method_options": {"lam": 3.0, "alpha": 1.0}},
    }
    with pytest.raises(SafemaxError, match="no tuned trials"):
        tuned_params(str(tmp_path), "digits", study="other")


def _batch_args(tiny_assets, results):
    flags = tiny_flags(tiny_assets, results, **{"--num-workers": "1", "--max-concurrent": "1"})
    return ["batch", "--classes", "0-1", *flags]


@pytest.fixture
def python_ctrl_c():
    """Ctrl-C handled as Python does in a terminal (KeyboardInterrupt). A suite started in the background
    (`pytest &`, some CI runners) inherits an ignored SIGINT, and then `_thread.interrupt_main` does
    nothing: the test failed there while the feature worked."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.mark.slow  # batches on the tests' Ray, the first interrupted part-way
def test_interrupted_batch_resumes_and_stores_every_class_once(
    tiny_assets, tmp_path, ray_session, capsys, python_ctrl_c
):
    """Ctrl-C once the first class is stored: the run in flight is cancelled and leaves nothing (the
    process lives on, as a notebook's would); the batch run again does only what is missing."""
    import _thread
    import threading

    from safemax_ray.cli import main

    results = tmp_path / "results"
    runs = results / layout.RUNS

    def interrupt_after_the_first_row():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (runs.is_dir() and list(runs.glob("*.parquet"))):
            time.sleep(0.05)
        _thread.interrupt_main(signal.SIGINT)  # what Ctrl-C does to the process

    threading.Thread(target=interrupt_after_the_first_row, daemon=True).start()
    assert main(_batch_args(tiny_assets, results)) == 130
    assert "interrupted" in capsys.readouterr().out
    first = read_dataframe(str(results))
    assert len(first) == 1
    assert not [p for p in runs.iterdir() if p.name.startswith(".")]  # no partial file left
    deadline = time.monotonic() + 30
    while _run_tasks() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _run_tasks()  # the run in flight was cancelled, not left to finish unseen

    assert main(_batch_args(tiny_assets, results)) == 0  # resumed
    out = " ".join(capsys.readouterr().out.split())
    assert "1 run(s) done, 1 already stored" in out
    df = read_dataframe(str(results))
    assert sorted(df.forget_class) == [0, 1]  # every class exactly once
    assert df.run_key.is_unique
    assert set(first.run_id) <= set(df.run_id)  # the row from before the interruption was kept

    assert main(_batch_args(tiny_assets, results)) == 0
    assert "0 run(s) done, 2 already stored" in " ".join(capsys.readouterr().out.split())
    assert len(read_dataframe(str(results))) == 2
    assert Path(df.model_path.iloc[0]).is_dir()


def test_a_batch_computes_a_shared_set_up_once(tiny_assets, tmp_path, ray_session):
    """SA on two classes, two runs at once: its Fisher (the same for every class) is computed by one run,
    before the other starts; it reads it. Its cost stays with the run that computed it."""
    from safemax_ray.drivers.batch import batch_unlearn

    model, classifier = tiny_assets
    base = UnlearnConfig(
        method="sa",
        model=model,
        classifier=classifier,
        iterations=2,
        batch_size=8,
        results_dir=str(tmp_path),
        method_options={"fisher_samples_per_class": 2, "fisher_timesteps": 3},
    )
    base.eval.n_forget_samples, base.eval.n_retain_per_class, base.eval.sample_steps = 4, 2, 3
    base.ray.storage_path = str(tmp_path / "ray-storage")  # Ray's storage where the user says
    base.tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = batch_unlearn(base, [1, 2], max_concurrent=2)
    assert len(list((tmp_path / "ray-storage").glob("batch-*"))) == 2 and not (tmp_path / "_ray").exists()
    assert len(result.done) == 2 and not result.failed
    computed = [row for row in result.done if not row["setup_cached"]]
    assert len(computed) == 1 and computed[0]["setup_s"] > 0
    assert not list((tmp_path / "_cache").glob("*.claim"))
    import mlflow  # one MLflow run per class, named by its run key, with the row's figures

    mlflow.set_tracking_uri(base.tracking_uri)
    runs = mlflow.search_runs(experiment_names=["safemax_ray"]).set_index("tags.mlflow.runName")
    assert sorted(runs.index) == sorted(row["run_id"] for row in result.done) and (runs.status == "FINISHED").all()
    assert sorted(runs["metrics.forget_class"]) == [1.0, 2.0] and (runs["params.method"] == "sa").all()


def test_a_retried_run_task_returns_the_row_its_first_attempt_wrote(tmp_path):
    """A task that died after writing its row (just before returning) must not train again or write a
    second row when Ray starts it again."""
    from test_results import make_row

    from safemax_ray.drivers.batch import _one_run
    from safemax_ray.schema import to_dict

    cfg = UnlearnConfig(forget_class=4, results_dir=str(tmp_path))
    write_row(str(tmp_path), make_row(run_key(cfg), 4))
    row = _one_run(to_dict(cfg), False, "batch")
    assert row["run_id"] == run_key(cfg) and row["forget_class"] == 4
    assert len(read_dataframe(str(tmp_path))) == 1


def test_a_failed_run_is_one_line_naming_its_error_or_its_attempts():
    import ray.exceptions

    from safemax_ray.drivers.batch import failure_reason

    died = ray.exceptions.NodeDiedError("node 1a2b died\nmore detail")
    assert failure_reason(died, 1) == "NodeDiedError after 2 attempt(s): node 1a2b died"
    raised = ray.exceptions.RayTaskError("_one_run", "Traceback ...", SafemaxError("run diverged at step 3\nmore"))
    assert failure_reason(raised, 1) == "SafemaxError: run diverged at step 3"


@pytest.mark.slow  # a run's task killed part-way, as with its node
def test_a_run_whose_task_dies_is_started_again_and_resumes_from_its_checkpoint(tiny_assets, tmp_path, ray_session):
    import threading

    from safemax_ray.config import RayConfig
    from safemax_ray.drivers.batch import batch_unlearn

    model, classifier = tiny_assets
    base = UnlearnConfig(
        model=model,
        classifier=classifier,
        iterations=20,
        batch_size=8,
        results_dir=str(tmp_path),
        ray=RayConfig(checkpoint_every=5),
    )
    base.eval.n_forget_samples, base.eval.n_retain_per_class, base.eval.sample_steps = 4, 2, 3
    killed = []

    def kill_the_task_after_its_first_checkpoint():
        # Ray Train lists a run's checkpoints in this file once one is registered; a new trainer of the
        # same name reads it
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not list((tmp_path / "_ray").glob("batch-*/checkpoint_manager_*")):
            time.sleep(0.05)
        pids = _run_tasks()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        killed.extend(pids)

    killer = threading.Thread(target=kill_the_task_after_its_first_checkpoint)
    killer.start()
    result = batch_unlearn(base, [3])
    killer.join()
    assert killed, "the run's task was not found"
    assert not result.failed and len(result.done) == 1
    assert result.done[0]["resumed_from_step"] >= 5  # not started over
    assert len(list((tmp_path / "_ray").glob("batch-*"))) == 1  # one Ray Train run, resumed by name


def _run_tasks() -> list[int]:
    """The processes running a batch's run tasks on the tests' Ray (not on a neighbour's)."""
    found = subprocess.run(["pgrep", "-f", "ray::_one_run"], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found if _grandparent(int(p)) == os.getpid()]


def _grandparent(pid: int) -> int:
    """A Ray worker's raylet's parent: the process whose `ray.init` started that local Ray."""

    def parent(p: int) -> int:
        return int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1])

    try:
        return parent(parent(pid))
    except OSError:  # it has exited meanwhile
        return -1
