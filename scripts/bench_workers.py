"""Side-by-side: the same SAFEMax run (same global batch, same seed) on 1 and on N Ray Train workers.

Prints, for each worker count, the unlearning time (RTE), peak memory and the evaluation figures, so
that the DDP run can be checked against the single-worker run in one sitting on one machine.

    .venv/bin/python scripts/bench_workers.py --forget-class 3 --workers 1 2
"""

from __future__ import annotations

import argparse
import tempfile
import time

from rich.console import Console
from rich.table import Table

from safemax_ray.config import RayConfig, UnlearnConfig
from safemax_ray.drivers.unlearn import unlearn
from safemax_ray.ray.cluster import ensure_ray


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forget-class", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()

    console = Console()
    ensure_ray(None, num_cpus=4)
    table = Table(title=f"forget class {args.forget_class}, {args.iterations} iterations, global batch 128 + 128")
    for column in (
        "workers",
        "seed",
        "RTE s",
        "s/step",
        "peak MB (rank 0)",
        "UA %",
        "H",
        "FID",
        "retained %",
        "wall s",
    ):
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory() as results:
        for seed in args.seeds:
            for n in args.workers:
                cfg = UnlearnConfig(
                    forget_class=args.forget_class,
                    iterations=args.iterations,
                    seed=seed,
                    results_dir=results,
                    ray=RayConfig(num_workers=n),
                )
                began = time.perf_counter()
                m = unlearn(cfg).metrics
                table.add_row(
                    str(n),
                    str(seed),
                    f"{m['rte_s']:.1f}",
                    f"{m['rte_s'] / args.iterations:.3f}",
                    f"{m['peak_mem_mb']:.0f}",
                    f"{m['ua']:.1f}",
                    f"{m['entropy']:.3f}",
                    f"{m['fid']:.2f}",
                    f"{m['retain_acc']:.1f}",
                    f"{time.perf_counter() - began:.0f}",
                )
    console.print(table)


if __name__ == "__main__":
    main()
