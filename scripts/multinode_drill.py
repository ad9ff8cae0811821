"""A real two-node Ray cluster on this machine: a batch submitted as a Ray job, the worker node killed
part-way, the batch resubmitted; every class must end up done exactly once.

    .venv/bin/python scripts/multinode_drill.py [--classes 0-3] [--iterations 30]

Starts a head and a worker node with `ray start` (the worker node with its own node-manager port, so
that it can be killed alone), submits `safemax-ray batch --address auto` with `ray job submit`, kills
the worker node's raylet once the first result row exists, waits for the job to end, starts a worker
node again, resubmits the same batch, and prints the rows per class. Stops the cluster (`ray stop`)
at the end. Prints every step with a timestamp.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
HEAD_PORT, DASHBOARD_PORT, WORKER_NODE_PORT = 6391, 8299, 6411
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def ray(*args: str, check: bool = True) -> str:
    done = subprocess.run([str(BIN / "ray"), *args], env=ENV, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise SystemExit(f"ray {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def start_worker_node(port: int) -> None:
    ray("start", "--address", f"127.0.0.1:{HEAD_PORT}", "--num-cpus", "2", "--node-manager-port", str(port))
    log(f"worker node up (node-manager port {port})")


def submit(batch_args: list[str]) -> str:
    out = ray(
        "job",
        "submit",
        "--address",
        f"http://127.0.0.1:{DASHBOARD_PORT}",
        "--no-wait",
        "--",
        str(BIN / "safemax-ray"),
        "batch",
        *batch_args,
    )
    job = re.search(r"raysubmit_[A-Za-z0-9]+", out).group(0)
    log(f"submitted {job}: safemax-ray batch {' '.join(batch_args)}")
    return job


def wait_job(job: str) -> str:
    while True:
        status = ray("job", "status", "--address", f"http://127.0.0.1:{DASHBOARD_PORT}", job).strip().splitlines()[-1]
        if any(s in status for s in ("SUCCEEDED", "FAILED", "STOPPED")):
            log(f"{job}: {status}")
            return status
        time.sleep(3)


def rows_per_class(results: Path) -> dict[int, int]:
    import pyarrow.parquet as pq

    counts: dict[int, int] = {}
    for f in sorted((results / "runs").glob("*.parquet")):
        row = pq.read_table(f).to_pylist()[0]
        counts[row["forget_class"]] = counts.get(row["forget_class"], 0) + 1
        log(f"  class {row['forget_class']}: evaluation sampled on {row['eval_nodes']} node(s)")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", default="0-3")
    parser.add_argument("--iterations", default="30")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="drill", dir="/tmp"))
    results = work / "results"
    batch_args = [
        "--classes",
        args.classes,
        "--address",
        "auto",
        "--results-dir",
        str(results),
        "--iterations",
        args.iterations,
        "--n-forget-samples",
        "20",
        "--n-retain-per-class",
        "4",
        "--sample-steps",
        "20",
        "--cpus-per-worker",
        "1",
    ]
    ray("stop", "--force", check=False)
    try:
        ray(
            "start",
            "--head",
            "--port",
            str(HEAD_PORT),
            "--num-cpus",
            "2",
            "--include-dashboard",
            "true",
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(DASHBOARD_PORT),
            "--disable-usage-stats",
        )
        log("head node up")
        start_worker_node(WORKER_NODE_PORT)
        job = submit(batch_args)
        while not list((results / "runs").glob("*.parquet")):
            time.sleep(2)
        log(f"first row written: {rows_per_class(results)}")
        pids = subprocess.run(
            ["pgrep", "-f", f"node_manager_port={WORKER_NODE_PORT}"], capture_output=True, text=True
        ).stdout.split()
        for pid in pids:
            os.kill(int(pid), signal.SIGKILL)
        log(f"killed the worker node's raylet (pid {', '.join(pids)})")
        wait_job(job)
        log(f"rows per class after the first job: {rows_per_class(results)}")
        start_worker_node(WORKER_NODE_PORT + 1)
        wait_job(submit(batch_args))
        counts = rows_per_class(results)
        wanted = {int(c) for c in range(int(args.classes.split("-")[0]), int(args.classes.split("-")[-1]) + 1)}
        log(f"rows per class after resubmitting: {counts}")
        ok = set(counts) == wanted and all(n == 1 for n in counts.values())
        log("every class done exactly once" if ok else "FAILED: some class is missing or doubled")
        sys.exit(0 if ok else 1)
    finally:
        ray("stop", "--force", check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
