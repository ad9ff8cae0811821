"""The GPU path, variant by variant, in one run: the unlearning step (per method, eager and compiled),
the guided sampler (precision, layout, compilation, CUDA graphs), the judges, and what the paper's
protocol costs with the fastest of each.

    python scripts/bench_gpu.py                 # a CUDA device: the 38.6M reference CIFAR-10 layout
    python scripts/bench_gpu.py --jobs 12       # the same, variants compiled in parallel processes
    python scripts/bench_gpu.py --tiny          # CPU, the digits-sized preset, seconds

Needs torch and diffusers only (no Ray): it drives the engine directly on synthetic 32x32 data, since
the timing depends on shapes, not on which images they are. Precision is judged by the guided eps's
error against fp32 on the same inputs (weights are random: sampled images of an untrained network
diverge under any rounding, so their difference says nothing).

With `--jobs N` every variant runs in its own process, N at a time: compilation (minutes of CPU) goes on
in parallel, while the timed sections take turns on the GPU under a file lock, so no two are timed at
once. `--gate FILE` holds every timed section back until FILE exists (a check running beside this one).
Peak memory is each process's own (CUDA max allocated).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import fnmatch
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from safemax_ray.config import EvalConfig, UnlearnConfig
from safemax_ray.core.data import ImageData
from safemax_ray.core.models import build_preset
from safemax_ray.core.sampling import Speed, guided_forward, sample
from safemax_ray.engine.loop import new_session, run_setup, train
from safemax_ray.methods import available_methods

PAPER_SAMPLES = 500 + 9 * 5000
PAPER_STEPS = 1000
TARGET_STEP_MS, TARGET_STEP_GIB, TARGET_SAMPLE_MS, TARGET_RUN_MIN = 50.0, 6.0, 80.0, 50.0
# The paper's GPU GB relative to SAFEMax's (Table: SalUn 23.23, SA 17.29, SAFEMax 9.50 GB): SAFEMax uses
# 59% less than SalUn and 45% less than SA.
PAPER_MEMORY = {"salun": 23.23 / 9.50, "sa": 17.29 / 9.50}
SAMPLE_TOLERANCE = 1.5  # a default's eps error against fp32 may be at most this times today's (bf16 autocast)
# Method options that keep a set-up seconds long here (the timed step is what is compared).
QUICK_SETUP = {"sa": {"fisher_samples_per_class": 2, "fisher_timesteps": 2}}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


@contextlib.contextmanager
def gpu_turn(args: argparse.Namespace) -> Iterator[None]:
    """The timed section of a variant: after the gate, alone on the device (a file lock)."""
    while args.gate and not Path(args.gate).exists():
        time.sleep(1)
    if not args.lock:
        yield
        return
    with open(args.lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def synthetic_data(n: int) -> ImageData:
    g = torch.Generator().manual_seed(0)
    return ImageData(torch.rand((n, 3, 32, 32), generator=g) * 2 - 1, torch.arange(n) % 10, list("0123456789"))


def timed(
    args, device: torch.device, run: Callable[[], None], repeats: int, warmup: Callable[[], None] | None = None
) -> float:
    """ms per repeat of `run`, in the device's turn (after `warmup`, also in the turn)."""
    with gpu_turn(args):
        if warmup is not None:
            warmup()
        sync(device)
        began = time.perf_counter()
        run()
        sync(device)
        return 1000 * (time.perf_counter() - began) / repeats


def step_variant(method: str, compiled: bool, channels_last: bool = False):
    """The engine's own loop (`engine.loop.train`) for `method`: its set-up, warm-up, then timed steps."""

    def run(args, device: torch.device) -> dict:
        torch.cuda.reset_peak_memory_stats(device) if device.type == "cuda" else None
        cfg = UnlearnConfig(
            method=method,
            method_options=QUICK_SETUP.get(method, {}),
            batch_size=args.batch,
            iterations=args.warmup,
            compile=compiled,
            eval=EvalConfig(sample_steps=4, batch_size=64),
        )
        model = build_preset(args.arch, 10, 3, 32)
        if channels_last:
            model.unet.to(memory_format=torch.channels_last)
        session = new_session(cfg, model, synthetic_data(args.images), device)

        def warm_up() -> None:
            run_setup(session)
            train(session)  # and compilation
            sync(device)
            cfg.iterations = args.warmup + args.steps

        began = time.perf_counter()
        if compiled:  # compilation is CPU work: beside the other variants, outside the GPU turn
            warm_up()
        warmup_s = time.perf_counter() - began
        ms = timed(args, device, lambda: train(session), args.steps, warmup=None if compiled else warm_up)
        return {"ms": ms, "peak_gib": peak_gib(device), "warmup_s": warmup_s, "setup_s": session.state.setup_s}

    return run


def reference_step(args, device: torch.device) -> dict:
    """The naive step: every draw and the noising on the CPU, fp32, host syncs every step."""
    model = build_preset(args.arch, 10, 3, 32)
    unet, scheduler = model.unet.to(device).train(), model.scheduler
    data = synthetic_data(args.images)
    optimizer = torch.optim.Adam(unet.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)

    def step() -> None:
        idx = torch.randint(len(data.labels), (2 * args.batch,), generator=g)
        x0, y = data.images[idx], data.labels[idx]
        eps, target = torch.randn(x0.shape, generator=g), torch.randn(x0[: args.batch].shape, generator=g)
        t = torch.randint(int(scheduler.config.num_train_timesteps), (len(x0),), generator=g)
        pred = unet(scheduler.add_noise(x0, eps, t).to(device), t.to(device), class_labels=y.to(device)).sample
        loss = ((pred[: args.batch] - target.to(device)) ** 2).mean() + (
            (pred[args.batch :] - eps[args.batch :].to(device)) ** 2
        ).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        _ = loss.item(), float(norm)

    for _ in range(args.warmup):
        step()
    ms = timed(args, device, lambda: [step() for _ in range(args.steps)], args.steps)
    return {"ms": ms, "peak_gib": peak_gib(device)}


def sample_variant(speed: Speed):
    """ms per guided DDPM step at batch args.sample_batch, and the relative error of the guided eps against
    fp32 on the same inputs (one forward at a few timesteps: a random network's sampled images diverge
    chaotically under any rounding, so the final images say nothing about precision)."""

    def run(args, device: torch.device) -> dict:
        model = build_preset(args.arch, 10, 3, 32)
        unet = model.unet.to(device).eval()
        forward = guided_forward(unet, speed)
        labels = torch.arange(args.sample_batch) % 10
        g = torch.Generator(device=device)

        def draw(steps: int) -> None:
            sample(unet, model.scheduler, labels, 10, g.manual_seed(0), steps=steps, forward=forward)

        began = time.perf_counter()
        if speed.compile:
            draw(3)  # compilation (CPU, beside the other variants) and CUDA graph recording
        warmup_s = time.perf_counter() - began
        ms = timed(args, device, lambda: draw(args.sample_steps), args.sample_steps, warmup=lambda: draw(2))
        with gpu_turn(args):
            error = eps_error(unet, forward, labels, device)
        return {"ms": ms, "warmup_s": warmup_s, "eps_rel_error": error}

    return run


@torch.no_grad()
def eps_error(unet, forward, labels: torch.Tensor, device: torch.device, guidance: float = 2.0) -> float:
    """max over t in {999, 500, 50} of ||eps - eps_fp32|| / ||eps_fp32||, guided eps, same x_t."""
    reference = guided_forward(unet, Speed("fp32"))
    x = torch.randn((len(labels), 3, 32, 32), device=device, generator=torch.Generator(device).manual_seed(1))
    both = torch.cat([labels, torch.full_like(labels, 10)]).to(device)

    def guided(f, t: torch.Tensor) -> torch.Tensor:
        eps_c, eps_u = f(torch.cat([x, x]), t, both).chunk(2)
        return (1 + guidance) * eps_c - guidance * eps_u

    errors = []
    for t in (999, 500, 50):
        t = torch.tensor(t, device=device)
        ours, ref = guided(forward, t), guided(reference, t)
        errors.append(float((ours - ref).norm() / ref.norm()))
    return max(errors)


def scheduler_update(args, device: torch.device) -> dict:
    """ms of diffusers' DDPM update alone (no UNet) at batch args.sample_batch: what moving it would save."""
    model = build_preset(args.arch, 10, 3, 32)
    scheduler = model.scheduler
    scheduler.set_timesteps(scheduler.config.num_train_timesteps)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn((args.sample_batch, 3, 32, 32), device=device, generator=g)
    eps = torch.randn_like(x)
    steps = scheduler.timesteps[: args.sample_steps]
    return {"ms": timed(args, device, lambda: [scheduler.step(eps, t, x, generator=g) for t in steps], len(steps))}


def score_variant(kind: str, bf16: bool, batch: int):
    """ms per 1000 32x32 images through a judge's network: the ResNet-34 at 224 or Inception at 299."""

    def run(args, device: torch.device) -> dict:
        net = judge_network(kind, args).to(device).eval()
        size = min(batch, args.score_images)
        images = torch.rand((size, 3, 32, 32), device=device) * 2 - 1
        repeats = max(1, args.score_images // size)

        @torch.no_grad()
        def score() -> None:
            for _ in range(repeats):
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
                    net(images)

        score()  # cudnn's choice of kernels
        return {"ms": timed(args, device, score, repeats) * 1000 / size, "images": repeats * size}

    return run


def judge_network(kind: str, args) -> torch.nn.Module:
    if kind == "resnet34":
        from safemax_ray.core.resnet_judge import ResNetJudge

        return ResNetJudge(10)
    from safemax_ray.core.metrics import InceptionFeatures

    return InceptionFeatures(random_inception_weights(args.workdir))


def random_inception_weights(folder: str) -> str:
    """A weights file of torchmetrics' Inception with random values: the 2015 weights are a download, and
    the timing does not depend on them."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    path = os.path.join(folder, "inception-random.pth")
    if not os.path.exists(path):
        load = fe.FeatureExtractorInceptionV3.load_state_dict
        fe.FeatureExtractorInceptionV3.load_state_dict = lambda self, state: None
        try:
            with contextlib.suppress(FileNotFoundError), _no_torch_load(fe):
                net = fe.FeatureExtractorInceptionV3(
                    "inception-v3-compat", ["2048"], feature_extractor_weights_path="-"
                )
            torch.save(net.state_dict(), path)
        finally:
            fe.FeatureExtractorInceptionV3.load_state_dict = load
    return path


@contextlib.contextmanager
def _no_torch_load(module) -> Iterator[None]:
    load = module.torch.load
    module.torch.load = lambda *a, **k: {}
    try:
        yield
    finally:
        module.torch.load = load


SPEEDS = {
    "fp32": Speed("fp32"),
    "autocast": Speed("autocast"),
    "autocast-compiled": Speed("autocast", compile="default"),
    "bf16": Speed("bf16"),
    "bf16-cl": Speed("bf16", channels_last=True),
    "bf16-compiled": Speed("bf16", compile="default"),
    "bf16-graphs": Speed("bf16", compile="reduce-overhead"),
    "bf16-cl-compiled": Speed("bf16", channels_last=True, compile="default"),
    "bf16-cl-graphs": Speed("bf16", channels_last=True, compile="reduce-overhead"),
}


def variants(args) -> dict[str, Callable]:
    """Every variant by name; compiled ones first, so that with --jobs they start compiling at once."""
    cuda = not args.tiny
    out: dict[str, Callable] = {}
    if cuda:
        out["step:safemax:compiled"] = step_variant("safemax", compiled=True)
        out["step:safemax:compiled-cl"] = step_variant("safemax", compiled=True, channels_last=True)
        out.update({f"sample:{k}": sample_variant(s) for k, s in SPEEDS.items() if s.compile})
    out["step:reference"] = reference_step
    out.update({f"step:{m}:eager": step_variant(m, compiled=False) for m in available_methods()})
    out.update({f"sample:{k}": sample_variant(s) for k, s in SPEEDS.items() if not s.compile and (cuda or k == "fp32")})
    out["sample:scheduler-update"] = scheduler_update
    out["score:resnet34:fp32-b64"] = score_variant("resnet34", False, 64)
    if _has_fidelity():  # the `cifar` extra
        out["score:inception:fp32-b256"] = score_variant("inception", False, 256)
    if cuda:
        out["score:resnet34:bf16-b256"] = score_variant("resnet34", True, 256)
        out["score:inception:bf16-b256"] = score_variant("inception", True, 256)
    return out


def _has_fidelity() -> bool:
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        return False
    return True


def run_variant(name: str, args) -> dict:
    device = torch.device(args.device)
    try:
        figures = variants(args)[name](args, device)
    except Exception as exc:  # noqa: BLE001  (a variant that fails is a finding, not the end of the run)
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]}
    return figures


def run_all(args) -> dict[str, dict]:
    names = [n for n in variants(args) if not args.only or any(fnmatch.fnmatch(n, o) for o in args.only)]
    if args.jobs <= 1:
        return {name: _echo(name, run_variant(name, args)) for name in names}
    args.lock = os.path.join(args.workdir, "gpu.lock")
    common = ["--device", args.device, "--workdir", args.workdir, "--lock", args.lock] + _shape_flags(args)
    pending, running, results = list(names), {}, {}
    while pending or running:
        while pending and len(running) < args.jobs:
            name = pending.pop(0)
            cmd = [sys.executable, __file__, "--variant", name, *common] + (["--gate", args.gate] if args.gate else [])
            running[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        for name, proc in list(running.items()):
            if proc.poll() is not None:
                lines = [line for line in proc.stdout.read().splitlines() if line.startswith("{")]
                results[name] = _echo(name, json.loads(lines[-1]) if lines else {"error": f"exit {proc.returncode}"})
                del running[name]
        time.sleep(0.5)
    return results


def _echo(name: str, figures: dict) -> dict:
    print(f"  done {name}: {json.dumps(figures)}", flush=True)
    return figures


def _shape_flags(args) -> list[str]:
    flags = ["--batch", args.batch, "--steps", args.steps, "--warmup", args.warmup]
    flags += ["--sample-batch", args.sample_batch, "--sample-steps", args.sample_steps]
    return [str(f) for f in flags + ["--score-images", args.score_images]] + (["--tiny"] if args.tiny else [])


def report(results: dict[str, dict], args) -> None:
    """The figures, each beside its target, and the paper protocol with the fastest sampler in tolerance."""

    def fig(name: str, key: str = "ms") -> float:
        return float(results.get(name, {}).get(key, math.nan))

    print(f"unlearning step, batch {args.batch} forget + {args.batch} remain ({args.steps} timed steps):")
    safemax_peak = fig("step:safemax:eager", "peak_gib")
    for name, r in results.items():
        if not name.startswith("step:"):
            continue
        if "error" in r:
            print(f"  {name:<28} failed: {r['error']}")
            continue
        method = name.split(":")[1]
        ratio = r["peak_gib"] / safemax_peak if name.endswith("eager") and safemax_peak > 0 else math.nan
        paper = f" (paper {PAPER_MEMORY[method]:.2f}x)" if method in PAPER_MEMORY and name.endswith("eager") else ""
        warm = f"  warm-up {r['warmup_s']:.0f} s" if "compiled" in name else ""
        print(
            f"  {name:<28} {r['ms']:8.1f} ms  peak {r['peak_gib']:6.2f} GiB  "
            f"{ratio:5.2f}x SAFEMax's memory{paper}{warm}"
        )
    best_step = min((r["ms"], n) for n, r in results.items() if n.startswith("step:safemax") and "ms" in r)
    print(f"  target: <= {TARGET_STEP_MS:g} ms compiled and <= {TARGET_STEP_GIB:g} GiB; best {best_step[0]:.1f} ms")
    best = print_sampling(results, args)
    print(f"judges, ms per 1000 images ({args.score_images} timed images each):")
    for name, r in results.items():
        if name.startswith("score:"):
            print(f"  {name:<28} " + (f"{r['ms']:8.1f}" if "ms" in r else f"failed: {r['error']}"))
    chunks = math.ceil(PAPER_SAMPLES / args.sample_batch)
    per_image = {"score:resnet34:fp32-b64": 500, "score:inception:fp32-b256": 45000}  # today's judges
    score_ms = sum(fig(n) * k / 1000 for n, k in per_image.items() if not math.isnan(fig(n)))
    print(f"paper protocol ({PAPER_SAMPLES} samples, {PAPER_STEPS} steps, {chunks} chunks) at {best[0]:.1f} ms a step")
    print(f"  ({best[1]}), scoring {score_ms / 1000:.0f} s; target <= {TARGET_RUN_MIN:g} GPU-minutes per run:")
    for n in args.devices:
        minutes = (math.ceil(chunks / n) * PAPER_STEPS * best[0] + score_ms / n) / 60000
        print(f"  {n} device(s): {minutes:7.1f} min")


def print_sampling(results: dict[str, dict], args) -> tuple[float, str]:
    """The sampler variants with their error against fp32; returns the fastest within tolerance: no
    less faithful than today's default (bf16 autocast, eager) by more than SAMPLE_TOLERANCE x."""
    print(f"guided sampling step, batch {args.sample_batch} ({2 * args.sample_batch} UNet passes), {args.sample_steps}")
    print("  strided steps; relative L2 error of the guided eps against fp32 on the same x_t (max of 3 t):")
    today = results.get("sample:autocast", {}).get("eps_rel_error", math.inf)
    best = (math.inf, "none")
    for name, r in results.items():
        if not name.startswith("sample:"):
            continue
        if "error" in r:
            print(f"  {name:<28} failed: {r['error']}")
            continue
        line = f"  {name:<28} {r['ms']:8.1f} ms per step"
        if "eps_rel_error" in r:
            line += f"  error {r['eps_rel_error']:.2e}"
            if r["eps_rel_error"] <= SAMPLE_TOLERANCE * today:
                best = min(best, (r["ms"], name))
        if "compiled" in name or "graphs" in name:
            line += f"  warm-up {r['warmup_s']:.0f} s"
        print(line)
    print(f"  target: <= {TARGET_SAMPLE_MS:g} ms at batch 1024; fastest within {SAMPLE_TOLERANCE:g}x today's error")
    print(f"  (autocast, {today:.2e}): {best[1]} {best[0]:.1f} ms")
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU, tiny model and batches: a smoke run in seconds")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--batch", type=int, default=128, help="forget and remain images per step, each")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--sample-batch", type=int, default=1024, help="images per sampling chunk")
    parser.add_argument("--sample-steps", type=int, default=50, help="timed guided steps (strided schedule)")
    parser.add_argument("--score-images", type=int, default=45000, help="images through each judge network")
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8], help="N for the projection")
    parser.add_argument("--only", nargs="+", help="variants whose name matches any of these patterns ('sample:*')")
    parser.add_argument("--jobs", type=int, default=1, help="variants in parallel processes (timed one at a time)")
    parser.add_argument("--gate", help="hold the timed sections until this file exists")
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # one variant, in a process of its own
    parser.add_argument("--lock", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.device = args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    args.arch = "digits-tiny" if args.tiny else "ddpm-cifar10"
    args.images = 200 if args.tiny else 2000  # synthetic training images (set-ups pass over them)
    if args.tiny and not args.variant:
        args.batch, args.steps, args.warmup, args.sample_batch, args.sample_steps = 16, 3, 1, 32, 2
        args.score_images = 4
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="bench_gpu_")
    if args.variant:
        print(json.dumps(run_variant(args.variant, args)))
        return
    device = torch.device(args.device)
    params = sum(p.numel() for p in build_preset(args.arch, 10, 3, 32).unet.parameters()) / 1e6
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}; {args.arch} ({params:.2f}M parameters), 32x32x3", flush=True)
    results = run_all(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    report(results, args)


if __name__ == "__main__":
    main()
