"""How the sampler runs the UNet: the CPU path is the plain fp32 forward, compilation is chosen only on
CUDA and only where it pays, and workers that share a GPU train over gloo (NCCL refuses them)."""

import torch

from safemax_ray.config import RayConfig, UnlearnConfig
from safemax_ray.core.models import build_preset
from safemax_ray.core.sampling import COMPILE_SAMPLING_AFTER, Speed, default_speed, guided_forward, sample


def test_the_cpu_forward_is_the_unet_itself_whatever_the_speed():
    unet = build_preset("digits-tiny", 10, 1, 8).unet.eval()
    x, t, y = torch.randn(4, 1, 8, 8), torch.tensor(7), torch.tensor([0, 3, 10, 9])
    with torch.no_grad():
        expected = unet(x, t, class_labels=y).sample
        for speed in (Speed(), Speed("bf16", channels_last=True, compile="reduce-overhead")):
            assert torch.equal(guided_forward(unet, speed)(x, t, y), expected)


def test_a_given_forward_is_what_the_sampler_runs():
    model = build_preset("digits-tiny", 10, 1, 8)
    calls = []

    def forward(x, t, y):
        calls.append(len(x))
        return torch.zeros_like(x)

    labels = torch.tensor([1, 2, 3])
    sample(model.unet, model.scheduler, labels, 10, torch.Generator().manual_seed(0), steps=4, forward=forward)
    assert calls == [6] * 4  # conditional and null copies of the 3 images, once per step


def test_compilation_only_on_cuda_and_only_where_it_pays():
    assert default_speed("cpu", 10**9) == Speed()
    assert default_speed("cuda", COMPILE_SAMPLING_AFTER - 1) == Speed()
    assert default_speed("cuda", COMPILE_SAMPLING_AFTER) == Speed("autocast", compile="default")


def test_workers_sharing_a_gpu_train_over_gloo(tmp_path):
    from safemax_ray.ray.worker import build_trainer

    def trainer(share: float):
        cfg = UnlearnConfig(ray=RayConfig(num_workers=2, gpus_per_worker=share))
        return build_trainer(cfg, "x", str(tmp_path), True, str(tmp_path))

    whole, shared = trainer(1.0), trainer(0.5)
    assert whole.backend_config.backend == "nccl" and whole.scaling_config.resources_per_worker["GPU"] == 1.0
    assert shared.backend_config.backend == "gloo" and shared.scaling_config.resources_per_worker["GPU"] == 0.5
