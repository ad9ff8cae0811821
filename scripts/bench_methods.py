"""Every registered method side by side (SAFEMax, SalUn, Selective Amnesia, EraseDiff, SFR-on and any
installed through the entry point): set-up time, ms per step and peak memory on the same model and
batch, with the ratios to SAFEMax (the paper: ~2x faster than SalUn, 30x than SA) and the RTE ratio at
each method's budget in the paper's protocol (its ITERATIONS_VS_SAFEMAX).

    .venv/bin/python scripts/bench_methods.py --options sa.fisher_samples_per_class=20   # CPU: digits
    python scripts/bench_methods.py --device cuda             # a GPU: the 35.7M ddpm-cifar10 preset

`--options METHOD.OPTION=VALUE` sets a method's option, as `compare` does (above: a cheaper Fisher).

Each method runs in a fresh process (one after the other), so its peak memory is its own: CUDA max
allocated on a GPU, the process's peak resident set on a CPU. Needs torch and diffusers, not Ray. The
step time is per step; SA's paper budget is 20x the steps, which the last column applies.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import torch

from safemax_ray.cli.compare import parse_options
from safemax_ray.config import EvalConfig, UnlearnConfig
from safemax_ray.core.data import ImageData, load_digits
from safemax_ray.core.models import build_preset, load_model, peak_memory_mb
from safemax_ray.engine.loop import new_session, run_setup, train
from safemax_ray.methods import available_methods, get_method


def _workload(device: torch.device):
    """(model, data): digits on a CPU, the paper's CIFAR-sized UNet on synthetic 32x32 data on a GPU."""
    if device.type == "cpu":
        return load_model(None), load_digits()
    g = torch.Generator().manual_seed(0)
    data = ImageData(torch.rand((5000, 3, 32, 32), generator=g) * 2 - 1, torch.arange(5000) % 10, list("0123456789"))
    return build_preset("ddpm-cifar10", 10, 3, 32), data


def measure(method: str, args: argparse.Namespace, out: mp.Queue) -> None:
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    model, data = _workload(device)
    cfg = UnlearnConfig(
        method=method,
        method_options=parse_options(args.options).get(method, {}),
        iterations=args.warmup,
        batch_size=args.batch,
        eval=EvalConfig(sample_steps=args.setup_sample_steps, batch_size=256),
    )
    session = new_session(cfg, model, data, device)
    run_setup(session)
    train(session)
    cfg.iterations = args.warmup + args.steps
    if device.type == "cuda":
        torch.cuda.synchronize()
    began = time.perf_counter()
    train(session)
    if device.type == "cuda":
        torch.cuda.synchronize()
    out.put((method, session.state.setup_s, 1000 * (time.perf_counter() - began) / args.steps, peak_memory_mb(device)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=128, help="forget and remain images per step, each")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--options", nargs="*", default=[], help="METHOD.OPTION=VALUE, e.g. sa.gamma=0.5")
    parser.add_argument(
        "--setup-sample-steps",
        type=int,
        default=None,
        help="set-ups that sample the base model (SA): sampling steps (default: all)",
    )
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    results = {}
    for method in ["safemax", *(m for m in available_methods() if m != "safemax")]:
        queue = ctx.Queue()
        proc = ctx.Process(target=measure, args=(method, args, queue))
        proc.start()
        name, setup_s, ms, peak = queue.get()
        proc.join()
        results[name] = (setup_s, ms, peak)
    ref_ms, ref_peak = results["safemax"][1], results["safemax"][2]
    print(
        f"{args.device}, batch {args.batch} + {args.batch}, {args.steps} timed steps; options: "
        f"{' '.join(args.options) or 'the defaults'}"
    )
    print(
        f"{'method':<10} {'set-up s':>9} {'ms/step':>9} {'x safemax':>10} {'peak MB':>9} {'x safemax':>10} "
        f"{'RTE x at paper budget':>22}"
    )
    for name, (setup_s, ms, peak) in results.items():
        budget = get_method(name).ITERATIONS_VS_SAFEMAX * ms / ref_ms
        print(
            f"{name:<10} {setup_s:9.1f} {ms:9.1f} {ms / ref_ms:10.2f} {peak:9.0f} {peak / ref_peak:10.2f}"
            f" {budget:22.2f}"
        )


if __name__ == "__main__":
    main()
