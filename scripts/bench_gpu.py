"""The GPU path, measured side by side in one process: the package's unlearning step against a naive
reference step, the guided sampler, and what the paper's evaluation protocol costs.

    python scripts/bench_gpu.py                 # a CUDA device: the 35.7M ddpm-cifar10 preset
    python scripts/bench_gpu.py --tiny          # CPU, the digits-sized preset, seconds

Needs torch and diffusers only (no Ray): it drives the engine directly on synthetic 32x32 data, since
the timing depends on shapes, not on which images they are.

- package step: `engine.loop.train` as a run uses it: data, indices and noise on the device, bf16
  autocast and fused Adam on CUDA, statistics read every `stats_every` steps; optionally compiled.
- reference step: the naive shape (CPU generator, noising on the CPU, fp32, `.item()` every step).
- sampling: ms per guided DDPM step (2 x batch UNet rows), fp32 and bf16, optionally compiled.
- projection: minutes for the paper's protocol (500 forget + 45,000 retained samples, 1000 steps) on
  one device and on N, from the fastest sampling figure; chunks spread evenly over devices.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from safemax_ray.config import UnlearnConfig
from safemax_ray.core.data import ImageData
from safemax_ray.core.models import build_preset
from safemax_ray.core.sampling import sample
from safemax_ray.engine.loop import compile_in_place, new_session, train
from safemax_ray.methods import get_method, method_options

PAPER_SAMPLES = 500 + 9 * 5000
PAPER_STEPS = 1000


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def synthetic_data(n: int, channels: int, size: int) -> ImageData:
    g = torch.Generator().manual_seed(0)
    images = torch.rand((n, channels, size, size), generator=g) * 2 - 1
    return ImageData(images, torch.arange(n) % 10, [str(i) for i in range(10)])


def package_step(args, device: torch.device, compiled: bool) -> tuple[float, float, float]:
    """(ms per step, peak GiB, compile warm-up s) for the engine's own loop."""
    reset_peak(device)
    cfg = UnlearnConfig(batch_size=args.batch, iterations=args.warmup, compile=compiled)
    session = new_session(cfg, build_preset(args.arch, 10, 3, 32), synthetic_data(5000, 3, 32), device)
    began = time.perf_counter()
    train(session)  # warm-up (and compilation)
    sync(device)
    warmup_s = time.perf_counter() - began
    cfg.iterations = args.warmup + args.steps
    began = time.perf_counter()
    train(session)
    sync(device)
    return 1000 * (time.perf_counter() - began) / args.steps, peak_gib(device), warmup_s


def reference_step(args, device: torch.device) -> tuple[float, float]:
    """(ms per step, peak GiB) for the naive step: every draw and the noising on the CPU, fp32, host syncs."""
    reset_peak(device)
    model = build_preset(args.arch, 10, 3, 32)
    unet, scheduler = model.unet.to(device).train(), model.scheduler
    method = get_method("safemax")(method_options("safemax", {}), scheduler)
    data = synthetic_data(5000, 3, 32)
    optimizer = torch.optim.Adam(unet.parameters(), lr=1e-4)
    num_t = int(scheduler.config.num_train_timesteps)
    g = torch.Generator().manual_seed(0)

    def step() -> None:
        idx = torch.randint(len(data.labels), (2 * args.batch,), generator=g)
        x0, y = data.images[idx], data.labels[idx]
        eps, target = torch.randn(x0.shape, generator=g), torch.randn(x0[: args.batch].shape, generator=g)
        t = torch.randint(num_t, (len(x0),), generator=g)
        x_t = scheduler.add_noise(x0, eps, t)
        pred = unet(x_t.to(device), t.to(device), class_labels=y.to(device)).sample
        loss = ((pred[: args.batch] - target.to(device)) ** 2).mean() + (
            (pred[args.batch :] - eps[args.batch :].to(device)) ** 2
        ).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        _ = loss.item(), float(norm)

    del method
    for _ in range(args.warmup):
        step()
    sync(device)
    began = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    return 1000 * (time.perf_counter() - began) / args.steps, peak_gib(device)


def sampling_step(args, device: torch.device, bf16: bool, compiled: bool) -> tuple[float, float]:
    """(ms per guided step at batch args.sample_batch, compile warm-up s)."""
    model = build_preset(args.arch, 10, 3, 32)
    unet = model.unet.to(device).eval()
    if compiled:
        compile_in_place(unet)
    labels = torch.arange(args.sample_batch) % 10
    g = torch.Generator(device=device)

    def run(steps: int) -> float:
        sync(device)
        began = time.perf_counter()
        sample(unet, model.scheduler, labels, 10, g.manual_seed(0), steps=steps, bf16=bf16)
        sync(device)
        return time.perf_counter() - began

    warmup_s = run(2)
    timed = run(args.sample_steps)
    return 1000 * timed / args.sample_steps, warmup_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU, tiny model and batches: a smoke run in seconds")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time torch.compile variants (default: on CUDA)",
    )
    parser.add_argument("--batch", type=int, default=128, help="forget and remain images per step, each")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--sample-batch", type=int, default=1024, help="images per sampling chunk")
    parser.add_argument("--sample-steps", type=int, default=10, help="timed guided steps")
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8], help="N for the projection")
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu"))
    args.arch = "digits-tiny" if args.tiny else "ddpm-cifar10"
    if args.tiny:
        args.batch, args.steps, args.warmup, args.sample_batch, args.sample_steps = 16, 3, 1, 32, 2
    compiled = device.type == "cuda" if args.compile is None else args.compile
    params = sum(p.numel() for p in build_preset(args.arch, 10, 3, 32).unet.parameters()) / 1e6
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}; {args.arch} ({params:.2f}M parameters), 32x32x3")
    print(f"unlearning step, batch {args.batch} forget + {args.batch} remain, {args.steps} timed steps:")
    ref_ms, ref_gib = reference_step(args, device)
    print(f"  reference (CPU RNG, host syncs, fp32) {ref_ms:8.1f} ms  peak {ref_gib:6.2f} GiB")
    eager_ms, eager_gib, _ = package_step(args, device, compiled=False)
    print(
        f"  package, eager                         {eager_ms:8.1f} ms  peak {eager_gib:6.2f} GiB"
        f"  ({ref_ms / eager_ms:.2f}x the reference)"
    )
    if compiled:
        comp_ms, comp_gib, comp_s = package_step(args, device, compiled=True)
        print(
            f"  package, compiled                      {comp_ms:8.1f} ms  peak {comp_gib:6.2f} GiB"
            f"  ({ref_ms / comp_ms:.2f}x; warm-up {comp_s:.0f} s)"
        )
    print(f"guided sampling step, batch {args.sample_batch} ({2 * args.sample_batch} UNet rows):")
    best = math.inf
    half = "bf16" if device.type == "cuda" else "fp32 (bf16 is CUDA-only)"
    variants = [("fp32", False, False), (half, True, False)] + ([(f"{half}, compiled", True, True)] if compiled else [])
    for label, bf16, comp in variants:
        ms, warm = sampling_step(args, device, bf16, comp)
        best = min(best, ms)
        print(f"  {label:<24} {ms:8.1f} ms per step" + (f"  (warm-up {warm:.0f} s)" if comp else ""))
    chunks = math.ceil(PAPER_SAMPLES / args.sample_batch)
    print(f"paper protocol ({PAPER_SAMPLES} samples, {PAPER_STEPS} steps, {chunks} chunks), at {best:.1f} ms a step:")
    for n in args.devices:
        minutes = math.ceil(chunks / n) * PAPER_STEPS * best / 60000
        print(f"  {n} device(s): {minutes:7.1f} min")


if __name__ == "__main__":
    main()
