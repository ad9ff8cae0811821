"""Connecting to Ray: an existing cluster, or a local one set up to work on a small machine.

A local Ray here (ray 2.60) would otherwise write an auth token into the user's home, put its sockets
under a temp path that can exceed the 107-byte socket limit, and deadlock when a trial and its workers
need more whole CPUs than the machine has. So a local start disables token auth, uses a short temp dir,
and declares enough logical CPUs for the job (training threads are still capped per worker). Joining
a cluster changes none of its settings: a cluster with token authentication is joined with the token.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from safemax_ray.errors import SafemaxError


def ensure_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Connect or start; returns True when this call started a local Ray that the caller should stop."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Quiet the driver: rich draws progress, Ray's own progress and deduplicated logs would interleave.
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "0")
    if address:
        # A cluster's authentication is its own: RAY_AUTH_MODE and the token come from the environment
        # (a job driver inherits them from the cluster; cluster/README.md says how to submit with them).
        try:
            ray.init(address=address, log_to_driver=False)
        except ConnectionError as exc:
            raise SafemaxError(f"cannot reach the Ray cluster at {address!r}: {exc}") from None
        return False
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # the local Ray below: no token in the user's home
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    ray.init(
        num_cpus=num_cpus or max(4, (os.cpu_count() or 1) * 2),
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=temp_dir,
    )
    return True


@contextmanager
def connected(address: str | None, num_cpus: int | None = None) -> Iterator[None]:
    """Use the Ray this process is connected to, or join `address`, or start a local Ray and stop it on
    the way out: every driver runs inside one of these."""
    import ray

    started = ensure_ray(address, num_cpus)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def cluster_has_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) >= 1
