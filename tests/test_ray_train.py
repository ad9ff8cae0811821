"""Ray Train: DDP across two workers, and a worker killed mid-run that resumes from its checkpoint."""

import torch

from safemax_ray.config import EvalConfig, RayConfig, UnlearnConfig
from safemax_ray.core.models import load_model
from safemax_ray.drivers.unlearn import unlearn


def tiny_config(tiny_assets, tmp_path, **ray_settings):
    model, classifier = tiny_assets
    return UnlearnConfig(
        forget_class=1,
        model=model,
        classifier=classifier,
        iterations=8,
        batch_size=8,
        results_dir=str(tmp_path),
        eval=EvalConfig(n_forget_samples=8, n_retain_per_class=2),
        ray=RayConfig(checkpoint_every=2, **ray_settings),
    )


def test_two_workers_run_ddp_and_change_the_model(tiny_assets, ray_session, tmp_path):
    result = unlearn(tiny_config(tiny_assets, tmp_path, num_workers=2))
    assert result.metrics["num_workers"] == 2
    assert result.row["num_workers"] == 2
    base = load_model(tiny_assets[0]).unet.state_dict()
    after = load_model(result.model_path).unet.state_dict()
    assert any((base[k] - after[k]).abs().max() > 0 for k in base)


def test_killed_worker_resumes_from_checkpoint_with_the_right_step_count(tiny_assets, ray_session, tmp_path):
    cfg = tiny_config(tiny_assets, tmp_path, num_workers=2, max_failures=1)
    result = unlearn(cfg, crash_at_step=5)  # rank 1 exits its process at step index 5, once
    # Checkpoints follow steps 2 and 4; the restarted group resumes from the latest one the controller
    # registered before the crash (Ray Train registers reports asynchronously) and stops at 8.
    assert result.metrics["resumed_from_step"] in (2, 4)
    assert result.metrics["step"] == 8 and result.row["iterations"] == 8
    # Adam counts its own updates: the final state shows exactly 8, not more, not fewer.
    states = sorted((tmp_path / "ray").glob(f"{result.run_id}/checkpoint_*/train_state.pt"))
    final = torch.load(states[-1], weights_only=True)
    assert final["step"] == 8
    assert {int(s["step"]) for s in final["optimizer"]["state"].values()} == {8}


def test_without_failures_allowed_the_kill_fails_the_run(tiny_assets, ray_session, tmp_path):
    import pytest

    cfg = tiny_config(tiny_assets, tmp_path, num_workers=2, max_failures=0)
    with pytest.raises(Exception):  # noqa: B017  (Ray's error type for a dead worker group)
        unlearn(cfg, crash_at_step=3)
    from safemax_ray.results.parquet import read_dataframe

    assert read_dataframe(str(tmp_path)).empty  # no row for a failed run
