"""A real two-node Ray cluster on this machine: a batch submitted as a Ray job, the worker node killed
part-way, the batch resubmitted; every class must end up done exactly once.

    .venv/bin/python scripts/multinode_drill.py [--classes 0-3] [--iterations 30]

Starts a head and a worker node with `ray start`, each with its own temp dir, submits `safemax-ray batch
--address auto` with `ray job submit`, kills every process of the worker node (SIGKILL, as a crashed
machine) once the first result row exists, waits for the job to end, starts a worker node again,
resubmits the same batch, and prints the rows per class. At the end it kills this cluster's processes
only (found by its temp dirs), so another Ray on the machine keeps running. Prints every step with a
timestamp; a job that has not ended after --job-timeout seconds fails the drill with Ray's task list.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safemax_ray.drivers.batch import parse_classes

BIN = Path(sys.executable).parent
HEAD_PORT, DASHBOARD_PORT = 6391, 8299
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def ray(*args: str, check: bool = True) -> str:
    done = subprocess.run([str(BIN / "ray"), *args], env=ENV, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise SystemExit(f"ray {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def start_worker_node(temp_dir: Path) -> None:
    ray("start", "--address", f"127.0.0.1:{HEAD_PORT}", "--num-cpus", "2", "--temp-dir", str(temp_dir))
    log(f"worker node up (temp dir {temp_dir})")


def kill_processes(marker: Path) -> list[str]:
    """SIGKILL every process whose command line names `marker` (a node's temp dir), and their children
    (a raylet's workers); their pids."""
    found = subprocess.run(["pgrep", "-f", str(marker)], capture_output=True, text=True).stdout.split()
    pids: list[str] = []
    while found:
        pid = found.pop()
        pids.append(pid)
        found += subprocess.run(["pgrep", "-P", pid], capture_output=True, text=True).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def train_workers_on_worker_node() -> list[str]:
    """Ray Train worker actors alive on the non-head node."""
    from ray.util.state import list_actors, list_nodes

    address = f"http://127.0.0.1:{DASHBOARD_PORT}"
    nodes = {n.node_id for n in list_nodes(address=address) if not n.is_head_node and n.state == "ALIVE"}
    actors = list_actors(address=address, filters=[("state", "=", "ALIVE")], detail=True, limit=1000)
    return [a.actor_id for a in actors if a.node_id in nodes and "TrainWorker" in (a.class_name or "")]


def job_client():
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(f"http://127.0.0.1:{DASHBOARD_PORT}")


def submit(batch_args: list[str]) -> str:
    entrypoint = " ".join(shlex.quote(a) for a in [str(BIN / "safemax-ray"), "batch", *batch_args])
    for attempt in range(30):  # the head's job agent needs a few seconds after `ray start` returns
        try:
            job = job_client().submit_job(entrypoint=entrypoint)
            break
        except RuntimeError:
            if attempt == 29:
                raise
            time.sleep(2)
    log(f"submitted {job}: safemax-ray batch {' '.join(batch_args)}")
    return job


def wait_job(job: str, timeout_s: float) -> str:
    client, deadline = job_client(), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.get_job_status(job)
        if status.is_terminal():
            said = [line for line in client.get_job_logs(job).splitlines() if re.search(r"batch:|failed|Error", line)]
            log(f"{job}: {status.value}\n" + "\n".join(said))
            return status.value
        time.sleep(3)
    tasks = ray("list", "tasks", "--address", f"127.0.0.1:{HEAD_PORT}", "--filter", "state!=FINISHED", check=False)
    log(f"FAILED: {job} has not ended after {timeout_s:.0f} s; unfinished tasks:\n{tasks}")
    sys.exit(1)


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
    parser.add_argument("--job-timeout", type=float, default=600.0, help="seconds each job may take")
    args = parser.parse_args()
    from ray._private.utils import get_dashboard_dependency_error

    if get_dashboard_dependency_error():  # the job server is part of Ray's dashboard
        sys.exit("the drill submits jobs through Ray's job server: pip install 'ray[default]==2.60.0' first")
    os.environ.update(ENV)  # the job client, in this process, talks to the same auth-less cluster
    work = Path(tempfile.mkdtemp(prefix="drill", dir="/tmp"))  # short: Ray's socket paths are limited
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
    try:
        ray(
            "start",
            "--head",
            "--port",
            str(HEAD_PORT),
            "--num-cpus",
            "2",
            "--temp-dir",
            str(work / "head"),
            "--include-dashboard",
            "true",
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(DASHBOARD_PORT),
            "--disable-usage-stats",
        )
        log("head node up")
        start_worker_node(work / "node1")
        job = submit(batch_args)
        while not list((results / "runs").glob("*.parquet")):
            time.sleep(2)
        log(f"first row written: {rows_per_class(results)}")
        for _ in range(60):  # kill it while a run trains there, so that the kill costs a run
            if on_node := train_workers_on_worker_node():
                log(f"Train worker(s) of a run in flight on the worker node: {len(on_node)}")
                break
            time.sleep(1)
        pids = kill_processes(work / "node1")
        log(f"killed the worker node: {len(pids)} processes (its raylet, agents and workers)")
        wait_job(job, args.job_timeout)
        log(f"rows per class after the first job: {rows_per_class(results)}")
        start_worker_node(work / "node2")
        wait_job(submit(batch_args), args.job_timeout)
        counts = rows_per_class(results)
        wanted = set(parse_classes(args.classes))
        log(f"rows per class after resubmitting: {counts}")
        ok = set(counts) == wanted and all(n == 1 for n in counts.values())
        log("every class done exactly once" if ok else "FAILED: some class is missing or doubled")
        sys.exit(0 if ok else 1)
    finally:
        kill_processes(work)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
