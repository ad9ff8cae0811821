"""The entropy-ceiling script's SAFEMax optimum: eps = 0 for the forget class, the model elsewhere."""

import importlib.util
from pathlib import Path

import torch

from safemax_ray.core.models import load_model
from safemax_ray.core.sampling import sample

SCRIPT = Path(__file__).parents[1] / "scripts" / "entropy_ceiling.py"


def _script():
    spec = importlib.util.spec_from_file_location("entropy_ceiling", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_forget_optimum_zeroes_only_the_forget_class(tiny_assets):
    model = load_model(tiny_assets[0])
    optimum = _script().ForgetOptimum(model.unet, forget_class=3)
    x = torch.randn(4, 1, 8, 8)
    labels = torch.tensor([3, 1, model.null_label, 3])
    t = torch.tensor(10)
    with torch.no_grad():
        got = optimum(x, t, class_labels=labels).sample
        want = model.unet(x, t, class_labels=labels).sample
    assert torch.all(got[[0, 3]] == 0)
    assert torch.equal(got[[1, 2]], want[[1, 2]])
    assert want[[0, 3]].abs().sum() > 0  # the base model does denoise class 3


def test_forget_optimum_samples_through_the_package_sampler(tiny_assets):
    model = load_model(tiny_assets[0])
    labels = torch.tensor([3, 3])
    optimum = sample(
        _script().ForgetOptimum(model.unet, 3), model.scheduler, labels, model.null_label, torch.Generator(), steps=5
    )
    base = sample(model.unet, model.scheduler, labels, model.null_label, torch.Generator(), steps=5)
    assert optimum.shape == base.shape == (2, 1, 8, 8)
    assert not torch.equal(optimum, base)
