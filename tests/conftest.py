"""Shared fixtures: a tiny model and classifier trained here in seconds, one local Ray for the tests that
need it (starting Ray costs several seconds and about 1 GB), and one finished two-worker run that tests
read instead of training again.

The test pyramid: `pytest -q` runs everything (what CI runs); `pytest -q -m "not slow"` is the inner
loop. A test is slow when it needs Ray (any test that uses the `ray_session` fixture is marked here) or
a fresh interpreter or cluster (marked in its file)."""

import os
import tempfile

import pytest
import torch

from safemax_ray.core.randomness import RankRandom

# Ray 2.60 writes an auth token under $HOME for a local ray.init; keep tests out of the real home.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ["HOME"] = tempfile.mkdtemp(prefix="safemax-home-")
# Ray Train's controller polls its workers every 2 s by default; a tiny test run is over in less, so
# most of its wall time would be spent waiting for polls. (Users' runs keep Ray's default.)
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
# Each Ray Train run starts an actor that watches for nodes being drained (cloud preemption); the tests'
# one machine is never drained, and that process costs a run ~1.5 CPU-seconds of a 2-core machine.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
# Under pytest-xdist each test process shares the cores with the others: torch's default (a thread per
# core in every process) oversubscribes them, and the fast layer took 227 s instead of 82 s.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory):
    """(model_dir, classifier_dir): a 2-level UNet with 8/16 channels and T = 25, trained 30 steps."""
    from safemax_ray.core.classifier import save_classifier
    from safemax_ray.core.data import load_digits
    from safemax_ray.core.models import save_model
    from safemax_ray.engine.pretrain import PretrainConfig, pretrain_diffusion, train_classifier

    root = tmp_path_factory.mktemp("tiny")
    data = load_digits()
    cfg = PretrainConfig(steps=30, classifier_steps=30, num_train_timesteps=25, block_out_channels=(8, 16))
    save_classifier(train_classifier(data, cfg, torch.device("cpu"))[0], root / "classifier")
    save_model(pretrain_diffusion(data, cfg, torch.device("cpu")), root / "model")
    return str(root / "model"), str(root / "classifier")


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """A random text-to-image pipeline folder (tests/text_pipeline.py); needs the text extra."""
    pytest.importorskip("transformers", reason="text-to-image tests need the text extra: pip install -e '.[text]'")
    from text_pipeline import make_tiny_pipeline

    return make_tiny_pipeline(tmp_path_factory.mktemp("t2i"))


def pytest_collection_modifyitems(items):
    for item in items:
        if "ray_session" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    # Files with slow tests first: xdist deals whole files (--dist loadfile) in this order, so the many
    # short files fill the end on both workers instead of one long file running alone at the end.
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: a file's tests keep their order


def pytest_xdist_make_scheduler(config, log):
    """Whole files to each test process, as `--dist loadfile`, except that the files using the shared
    finished run go to one process together: a session fixture is built once per process, and that run
    costs ~30 s of a 2-core machine."""
    from functools import cache
    from pathlib import Path

    from xdist.scheduler import LoadFileScheduling

    @cache
    def uses_finished_run(file: str) -> bool:
        return "finished_run" in (Path(config.rootpath) / file).read_text()

    class SharedRunScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = super()._split_scope(nodeid)
            return "uses finished_run" if uses_finished_run(file) else file

    return SharedRunScheduling(config, log)


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from safemax_ray.ray.cluster import ensure_ray

    ensure_ray(None, num_cpus=4)
    yield
    ray.shutdown()


def tiny_run_config(tiny_assets, results_dir, **ray_settings):
    """A seconds-long run of forget class 1 on the tiny model, checkpointing every 2 of its 8 steps."""
    from safemax_ray.config import EvalConfig, RayConfig, UnlearnConfig

    model, classifier = tiny_assets
    return UnlearnConfig(
        forget_class=1,
        model=model,
        classifier=classifier,
        iterations=8,
        batch_size=8,
        results_dir=str(results_dir),
        eval=EvalConfig(n_forget_samples=8, n_retain_per_class=2, sample_steps=5),
        ray=RayConfig(checkpoint_every=2, cpus_per_worker=1.0, **ray_settings),
    )


@pytest.fixture(scope="session")
def finished_run(tiny_assets, ray_session, tmp_path_factory):
    """One finished tiny run on two Ray Train workers, evaluated by two Ray tasks (its results folder:
    finished_run.row's), tracked in an MLflow SQLite store in that folder's parent."""
    from dataclasses import replace

    from safemax_ray.drivers.unlearn import unlearn

    cfg = tiny_run_config(tiny_assets, tmp_path_factory.mktemp("finished"), num_workers=2)
    cfg = replace(cfg, eval=replace(cfg.eval, workers=2))  # "auto" would keep so small an evaluation on the workers
    cfg.tracking_uri = f"sqlite:///{cfg.results_dir}-mlflow.db"
    return unlearn(cfg)


def tiny_flags(tiny_assets, results_dir, **extra):
    """CLI flags for a seconds-long run on the tiny model."""
    model, classifier = tiny_assets
    flags = {
        "--model": model,
        "--classifier": classifier,
        "--iterations": "4",
        "--batch-size": "8",
        "--n-forget-samples": "8",
        "--n-retain-per-class": "2",
        "--results-dir": str(results_dir),
        "--checkpoint-every": "2",
    }
    flags.update(extra)
    return [x for kv in flags.items() for x in kv]


class RecordingRandom(RankRandom):
    """A RankRandom (one rank) that keeps every draw in order, for a reference written from a method's
    original code to replay on the same noise, timesteps, labels and orders."""

    def __init__(self, generator):
        super().__init__(generator)
        self.draws = []

    def _keep(self, x):
        self.draws.append(x.clone())
        return x

    def antithetic(self, high, n):
        return self._keep(super().antithetic(high, n))

    def rand(self, shape):
        return self._keep(super().rand(shape))

    def normal(self, shape):
        return self._keep(super().normal(shape))

    def uniform(self, n):
        return self._keep(super().uniform(n))

    def permutation(self, n):
        return self._keep(super().permutation(n))
