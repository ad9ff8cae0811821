"""The paper's judge: a torchvision ResNet-34 state dict in the classifier slot, with the reference's
preprocessing (resize to 224, Normalize(0.5, 0.5)); and the reference's DDIM sampler as an option."""

import importlib.util

import pytest
import torch
from resnet34_reference import forward as reference_forward
from resnet34_reference import random_state

from safemax_ray.core.classifier import classifier_fingerprint, load_classifier
from safemax_ray.errors import SafemaxError


def test_a_resnet34_state_dict_gives_the_reference_logits(tmp_path):
    state = random_state(10)
    torch.save(state, tmp_path / "cifar10_resnet34.pth")
    judge = load_classifier(tmp_path / "cifar10_resnet34.pth", num_classes=10)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1  # ours: [-1, 1]
    with torch.no_grad():
        expected = reference_forward(state, (images + 1) / 2)
        ours = judge(images)
    assert expected.abs().max() > 0.1 and (ours - expected).abs().max() < 1e-4
    assert judge.features(images).shape == (3, 512)
    assert classifier_fingerprint(tmp_path / "cifar10_resnet34.pth") != classifier_fingerprint(None)


@pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is None, reason="torchvision is not installed beside this torch"
)
def test_torchvisions_own_resnet34_agrees_where_torchvision_imports(tmp_path):
    """Where a torchvision matching the torch build is installed (GPU images), its module itself."""
    import torchvision
    from torchvision.transforms import v2

    net = torchvision.models.resnet34(num_classes=10).eval()
    torch.save(net.state_dict(), tmp_path / "tv.pth")
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    preprocess = v2.Compose([v2.Resize((224, 224), antialias=True), v2.Normalize([0.5] * 3, [0.5] * 3)])
    with torch.no_grad():
        expected = net(preprocess((images + 1) / 2))
        ours = load_classifier(tmp_path / "tv.pth", num_classes=10)(images)
    assert (ours - expected).abs().max() < 1e-4


def test_foreign_judges_are_refused_by_name(tmp_path):
    torch.save(random_state(1000), tmp_path / "imagenet.pth")  # the ImageNet head
    with pytest.raises(SafemaxError, match="has 1000 classes but the data has 10 .*ImageNet head"):
        load_classifier(tmp_path / "imagenet.pth", num_classes=10)
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(SafemaxError, match="is not a torchvision ResNet-34 state dict"):
        load_classifier(tmp_path / "other.pth", num_classes=10)


def test_the_ddim_sampler_is_diffusers_ddim_with_eta(tiny_assets):
    from diffusers import DDIMScheduler

    from safemax_ray.core.models import load_model
    from safemax_ray.core.sampling import sample

    model = load_model(tiny_assets[0])
    labels = torch.tensor([1, 2])
    ours = sample(
        model.unet, model.scheduler, labels, 10, torch.Generator().manual_seed(0), 2.0, 5, sampler="ddim", eta=1.0
    )
    # By hand: diffusers' DDIM steps (uniform skip, eta 1, no x0 clipping) on the same draws.
    scheduler = DDIMScheduler.from_config(model.scheduler.config, clip_sample=False)
    scheduler.set_timesteps(5)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 8, 8, generator=g)
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps_c, eps_u = model.unet(torch.cat([x, x]), t, class_labels=torch.tensor([1, 2, 10, 10])).sample.chunk(2)
            x = scheduler.step(3 * eps_c - 2 * eps_u, t, x, eta=1.0, generator=g).prev_sample
    assert torch.allclose(ours, x.clamp(-1, 1), atol=1e-5)
    ddpm = sample(model.unet, model.scheduler, labels, 10, torch.Generator().manual_seed(0), 2.0, 5)
    assert not torch.allclose(ours, ddpm)
