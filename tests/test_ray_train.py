"""Ray Train: a worker killed mid-run resumes from its checkpoint to the weights of an uninterrupted run.
(That two workers train the one-worker model is tested with the command line, in test_cli.py.)"""

import signal

import pytest
import torch
from conftest import tiny_run_config as tiny_config

from safemax_ray.core.models import load_model
from safemax_ray.drivers.unlearn import unlearn


def weights(path):
    return torch.cat([p.detach().flatten() for p in load_model(path).unet.parameters()])


def crash_drill(monkeypatch, folder, step: int) -> None:
    """The last rank exits its process at step index `step`, once (ray/worker.py's fault drill)."""
    from safemax_ray.ray.worker import FAULT_DRILL_ENV

    monkeypatch.setenv(FAULT_DRILL_ENV, f"{step}:{folder / 'crashed-once'}")


def test_killed_worker_resumes_to_the_weights_of_an_uninterrupted_run(
    tiny_assets, ray_session, tmp_path, finished_run, monkeypatch
):
    cfg = tiny_config(tiny_assets, tmp_path, num_workers=2, max_failures=1)
    crash_drill(monkeypatch, tmp_path, 5)
    ctrl_c = signal.getsignal(signal.SIGINT)
    result = unlearn(cfg)
    assert signal.getsignal(signal.SIGINT) is ctrl_c  # Ray Train's own handler is gone with its run
    assert (tmp_path / "crashed-once").exists()
    # Checkpoints follow steps 2, 4 and 6; the restarted group resumes from the latest one the
    # controller registered before the crash (Ray Train registers reports asynchronously) and stops at 8.
    assert result.metrics["resumed_from_step"] in (2, 4)
    assert result.metrics["step"] == 8 and result.row["iterations"] == 8
    states = sorted((tmp_path / "_ray").glob(f"{result.run_id}/checkpoint_*/train_state.pt"))
    final = torch.load(states[-1], weights_only=True)
    assert {int(s["step"]) for s in final["optimizer"]["state"].values()} == {8}  # Adam counted 8 updates
    assert torch.equal(weights(result.model_path), weights(finished_run.model_path))


def test_without_failures_allowed_the_kill_fails_the_run(tiny_assets, ray_session, tmp_path, monkeypatch):
    cfg = tiny_config(tiny_assets, tmp_path, num_workers=1, max_failures=0)
    crash_drill(monkeypatch, tmp_path, 3)
    with pytest.raises(Exception):  # noqa: B017  (Ray's error type for a dead worker group)
        unlearn(cfg)
    from safemax_ray.results.parquet import read_dataframe

    assert read_dataframe(str(tmp_path)).empty  # no row for a failed run


def test_auto_evaluation_tasks_count_the_cores_not_the_logical_cpus(ray_session):
    """The tests' local Ray declares 4 logical CPUs; the tasks can use only the machine's cores."""
    import os

    from safemax_ray.ray.evaluation import eval_workers

    tasks, why = eval_workers("auto", 100, use_gpu=False)
    assert tasks == min(4, os.cpu_count()) and why == "one per core of this machine"
    assert eval_workers(3, 2, use_gpu=False) == (2, "eval.workers, at most one per chunk (2)")
    # A small evaluation is not worth a second task; an asked-for number is kept whatever the work.
    assert eval_workers("auto", 100, False, image_steps=220) == (1, f"{why}, at most one per 10000 image-steps (220)")
    assert eval_workers("auto", 100, False, image_steps=47_000)[0] == tasks
    assert eval_workers(3, 100, False, image_steps=220)[0] == 3
