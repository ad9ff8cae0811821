"""A real two-node Ray cluster on this machine, with token authentication: a batch submitted as a Ray
job, the worker node killed part-way; the job must succeed with every class done exactly once.

    .venv/bin/python scripts/multinode_drill.py [--classes 0-3] [--iterations 30]

Writes a fresh token to a file of its own (never ~/.ray), starts a head and a worker node with `ray
start` and RAY_AUTH_MODE=token, each with its own temp dir, shows a job submitted without the token
refused, submits `safemax-ray batch --address auto` with the token, kills every process of the worker
node (SIGKILL, as a crashed machine) while a run is in flight there, and waits for the job: runs that
lost their Train workers or their own task resume on the head from their last checkpoint. Then it
resubmits the batch on a new worker node (nothing must be redone) and prints the rows per class. At the
end it kills this cluster's processes only (found by its temp dirs), so another Ray on the machine
keeps running. Prints every step with a timestamp; a job that has not ended after --job-timeout seconds
fails the drill with Ray's task list. Needs `ray[default]` (the job server is part of the dashboard).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from safemax_ray.drivers.batch import parse_classes

BIN = Path(sys.executable).parent
HEAD_PORT, DASHBOARD_PORT = 6391, 8299
ENV = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}  # + RAY_AUTH_TOKEN_PATH


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


def in_flight_on_worker_node() -> tuple[int, int]:
    """(run tasks, Ray Train worker actors) alive on the non-head node."""
    from ray.util.state import list_actors, list_nodes, list_tasks

    address = f"http://127.0.0.1:{DASHBOARD_PORT}"
    nodes = {n.node_id for n in list_nodes(address=address) if not n.is_head_node and n.state == "ALIVE"}
    actors = list_actors(address=address, filters=[("state", "=", "ALIVE")], detail=True, limit=1000)
    tasks = list_tasks(address=address, filters=[("state", "=", "RUNNING"), ("name", "=", "_one_run")], limit=1000)
    workers = [a for a in actors if a.node_id in nodes and "TrainWorker" in (a.class_name or "")]
    return len([t for t in tasks if t.node_id in nodes]), len(workers)


def write_token(path: Path) -> None:
    """A fresh random token, readable by this user only; the cluster and the job client read this file."""
    path.write_text(secrets.token_hex(32))
    path.chmod(0o600)
    ENV["RAY_AUTH_TOKEN_PATH"] = str(path)


def submit_without_token() -> None:
    """POST a job to the job API as anyone who reaches the port would: no token. It must be refused."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{DASHBOARD_PORT}/api/jobs/",
        data=json.dumps({"entrypoint": "echo this could run any code"}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    for _ in range(30):  # the head's job agent needs a few seconds after `ray start` returns
        try:
            urllib.request.urlopen(request, timeout=10)
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                log(f"job submitted without the token: refused (HTTP {exc.code} {exc.reason})")
                return
        except urllib.error.URLError:
            pass
        else:
            log("FAILED: a job submitted without the token was accepted")
            sys.exit(1)
        time.sleep(2)
    log("FAILED: the job API never answered")
    sys.exit(1)


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
    log(f"submitted {job} with the token: accepted: safemax-ray batch {' '.join(batch_args)}")
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
        resumed = f", resumed from step {row['resumed_from_step']}" if row.get("resumed_from_step") else ""
        log(f"  class {row['forget_class']}: evaluation sampled on {row['eval_nodes']} node(s){resumed}")
    return counts


def batch_args(classes: str, iterations: str, results: Path) -> list[str]:
    """The job's `safemax-ray batch` flags: a short run per class over the cluster."""
    flags = f"--classes {classes} --address auto --results-dir {results} --iterations {iterations}"
    evaluation = "--n-forget-samples 20 --n-retain-per-class 4 --sample-steps 20 --cpus-per-worker 1"
    return [*flags.split(), *evaluation.split()]


def start_head(work: Path) -> None:
    """The head node: 2 CPUs, token auth from the environment, the job server on localhost."""
    dashboard = f"--include-dashboard true --dashboard-host 127.0.0.1 --dashboard-port {DASHBOARD_PORT}"
    ray(
        *f"start --head --port {HEAD_PORT} --num-cpus 2 --temp-dir {work / 'head'} {dashboard}".split(),
        "--disable-usage-stats",
    )


def kill_the_worker_node_mid_run(work: Path, results: Path) -> None:
    """Wait for the first row, then for a run in flight on the worker node, then kill that node whole."""
    while not list((results / "runs").glob("*.parquet")):
        time.sleep(2)
    log(f"first row written: {rows_per_class(results)}")
    for _ in range(60):  # kill it while a run is in flight there, so that the kill costs a run
        tasks, workers = in_flight_on_worker_node()
        if tasks or workers:
            log(f"in flight on the worker node: {tasks} run task(s), {workers} Train worker(s)")
            break
        time.sleep(1)
    pids = kill_processes(work / "node1")
    log(f"killed the worker node: {len(pids)} processes (its raylet, agents and workers)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", default="0-3")
    parser.add_argument("--iterations", default="30")
    parser.add_argument("--job-timeout", type=float, default=600.0, help="seconds each job may take")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="drill", dir="/tmp"))  # short: Ray's socket paths are limited
    write_token(work / "auth_token")
    os.environ.update(ENV)  # before Ray is imported: the job client, in this process, holds the token too
    from ray._private.utils import get_dashboard_dependency_error

    if get_dashboard_dependency_error():  # the job server is part of Ray's dashboard
        shutil.rmtree(work)
        sys.exit("the drill submits jobs through Ray's job server: pip install 'ray[default]==2.60.0' first")
    results = work / "results"
    flags = batch_args(args.classes, args.iterations, results)
    try:
        start_head(work)
        log("head node up (RAY_AUTH_MODE=token)")
        start_worker_node(work / "node1")
        submit_without_token()
        job = submit(flags)
        kill_the_worker_node_mid_run(work, results)
        first = wait_job(job, args.job_timeout)
        counts = rows_per_class(results)
        log(f"rows per class after the first job: {counts}")
        wanted = set(parse_classes(args.classes))
        ok = first == "SUCCEEDED" and set(counts) == wanted and all(n == 1 for n in counts.values())
        start_worker_node(work / "node2")
        wait_job(submit(flags), args.job_timeout)
        again = rows_per_class(results)
        log(f"rows per class after resubmitting: {again}")
        ok = ok and again == counts
        log("the first job succeeded with every class done exactly once" if ok else "FAILED: see above")
        sys.exit(0 if ok else 1)
    finally:
        kill_processes(work)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
