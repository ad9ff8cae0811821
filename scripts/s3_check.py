"""By hand: `batch` and `tune` with an s3:// results folder, against a local S3 server (moto).

    .venv/bin/pip install "moto[server]" && .venv/bin/python scripts/s3_check.py

A batch of two classes (then again: both skipped), and a two-trial study, each with its results folder
in a bucket; prints what each wrote there and reads the run rows back from the bucket. The server is
local, so nothing leaves the machine; the same code paths serve S3 and GCS (pyarrow filesystems).
"""

from __future__ import annotations

import os
import time

ENDPOINT = "http://127.0.0.1:5055"
# Before Ray starts, so that its workers (started from this process) reach the same server.
SERVER_ENV = {"AWS_ENDPOINT_URL": ENDPOINT, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}
SERVER_ENV |= {"AWS_DEFAULT_REGION": "us-east-1", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
SMALL_EVAL = {"n_forget_samples": 4, "n_retain_per_class": 2, "sample_steps": 3}


def run_batch() -> None:
    import safemax_ray
    from safemax_ray.config import EvalConfig, RayConfig, UnlearnConfig

    cfg = UnlearnConfig(
        results_dir="s3://safemax/results",
        iterations=4,
        batch_size=8,
        eval=EvalConfig(**SMALL_EVAL),
        ray=RayConfig(checkpoint_every=2),
    )
    began = time.time()
    batch = safemax_ray.batch_unlearn(cfg, [0, 1])
    print(f"batch: {len(batch.done)} done, {len(batch.failed)} failed {batch.failed}, {time.time() - began:.0f}s")
    again = safemax_ray.batch_unlearn(cfg, [0, 1])
    print(f"batch again: {len(again.done)} done, {len(again.skipped)} skipped")


def run_study() -> None:
    import safemax_ray

    began = time.time()
    study = safemax_ray.tune(
        {
            "study": "s3",
            "forget_class": 2,
            "results_dir": "s3://safemax/tuned",
            "search": {"lr": {"choices": [1e-3, 2e-3]}},
            "points_to_evaluate": [{"lr": 1e-3}, {"lr": 2e-3}],
            "budget": {"num_samples": 2, "max_concurrent": 1, "workers_per_trial": 1},
            "run": {"iterations": 4, "batch_size": 8, "eval": SMALL_EVAL, "ray": {"checkpoint_every": 2}},
        }
    )
    print(f"tune: {len(study.trials)} trials, best {study.best_params}, {time.time() - began:.0f}s")
    print(f"best config: {study.best_config_path}")


def show_bucket(s3) -> None:
    import pandas as pd
    import pyarrow.fs as pafs

    pages = s3.get_paginator("list_objects_v2").paginate(Bucket="safemax")
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    print(f"{len(keys)} objects; folders: {sorted({'/'.join(k.split('/')[:2]) for k in keys if '/' in k})}")
    fs = pafs.S3FileSystem(endpoint_override=ENDPOINT, access_key="x", secret_key="x", region="us-east-1")
    for folder in ("results", "tuned"):
        print(f"rows in s3://safemax/{folder}/runs: {len(pd.read_parquet(f'safemax/{folder}/runs', filesystem=fs))}")


def main() -> None:
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=5055)
    server.start()
    os.environ.update(SERVER_ENV)
    try:
        s3 = boto3.client("s3", endpoint_url=ENDPOINT)
        s3.create_bucket(Bucket="safemax")
        run_batch()
        run_study()
        show_bucket(s3)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
