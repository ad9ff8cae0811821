"""Shared fixtures: a tiny model and classifier trained here in seconds, and one local Ray for the
tests that need it (starting Ray costs several seconds and about 1 GB)."""

import os
import tempfile

import pytest
import torch

# Ray 2.60 writes an auth token under $HOME for a local ray.init; keep tests out of the real home.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ["HOME"] = tempfile.mkdtemp(prefix="safemax-home-")


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


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from safemax_ray.ray.cluster import ensure_ray

    ensure_ray(None, num_cpus=4)
    yield
    ray.shutdown()


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
