"""The shared cache folder (`<results>/cache`): safetensors files keyed by the content that fixes them.

Runs read an entry instead of recomputing it (the base model's evaluation samples, a concept's training
latents, Selective Amnesia's Fisher diagonal). An entry that cannot be read (truncated by a killed
writer, a disk error) is a miss: one log line says so, the caller recomputes, and the write replaces it.
Writes are atomic, so a reader sees a whole entry or none. An entry that several runs need at once
(a set-up that does not depend on the class) is computed by one of them (`compute_once`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from safemax_ray import storage

log = logging.getLogger("safemax_ray")


def read(path: str | None) -> dict[str, torch.Tensor] | None:
    """The entry's tensors, or None when there is no entry or it cannot be read."""
    if not path or not storage.exists(path):
        return None
    try:
        return load_tensors(storage.read_bytes(path))
    except Exception as exc:  # noqa: BLE001  (a truncated file raises SafetensorError, OSError, ...)
        log.warning("cache entry %s cannot be read (%s: %s); recomputing it", path, type(exc).__name__, exc)
        return None


def write(path: str | None, tensors: dict[str, torch.Tensor]) -> None:
    """Write (or replace) an entry atomically; concurrent writers of one key write the same content."""
    if path:
        storage.write_bytes_atomic(path, save_tensors({k: v.contiguous() for k, v in tensors.items()}), overwrite=True)


HEARTBEAT_S = 30.0  # a computing claim is touched this often; one untouched for 4 beats is a dead holder's
WAIT_POLL_S = 1.0  # a waiting run looks this often whether the entry is written (a stat: cheap)


def compute_once(
    path: str | None,
    compute: Callable[[], dict[str, torch.Tensor]],
    rank: int = 0,
    all_reduce: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
) -> tuple[dict[str, torch.Tensor], bool]:
    """The entry at `path`, computed at most once however many runs and drivers ask for it at the same
    time: rank 0 of the first to claim it computes (its ranks together), the others wait for the entry
    and read it. Returns (tensors, computed here). Claims are files beside the entry (`.claim`, taken
    with O_EXCL), so they hold across processes and drivers on one filesystem; on an object store there
    are no claims and concurrent runs compute it each, as before."""
    saved = _claim_or_wait(path) if rank == 0 else None
    mine = rank == 0 and saved is None
    computes = bool(all_reduce(torch.tensor(int(mine))).item())  # rank 0 decides for every rank
    if not computes:
        return saved if saved is not None else read(path), False
    with _heartbeat([path] if rank == 0 and path else []):
        tensors = compute()
        if rank == 0:
            write(path, tensors)
    return tensors, True


def compute_each(
    paths: list[str | None],
    compute: Callable[[list[int]], list[dict[str, torch.Tensor]]],
    rank: int = 0,
    claims: bool = True,
) -> list[dict[str, torch.Tensor]]:
    """The entries at `paths`: those there are read, the missing ones computed together by one call of
    `compute` (given their positions) and written by rank 0. With `claims` an entry another run has
    claimed is waited for and read, not computed twice (and computed here if its holder died); without,
    every caller computes what it misses (ranks that compute together must decide alike)."""
    entries = [read(p) for p in paths]
    while missing := [i for i, e in enumerate(entries) if e is None]:
        mine = [i for i in missing if not claims or not paths[i] or storage.is_uri(paths[i]) or _claim(paths[i])]
        if mine:
            with _heartbeat([paths[i] for i in mine if claims and paths[i]]):
                for i, tensors in zip(mine, compute(mine), strict=True):
                    entries[i] = tensors
                    if rank == 0:
                        write(paths[i], tensors)
        for i in set(missing) - set(mine):
            log.info("cache entry %s is being computed by another run; waiting for it", paths[i])
            while _claim_alive(paths[i]):
                time.sleep(min(HEARTBEAT_S / 4, WAIT_POLL_S))
            entries[i] = read(paths[i])
    return entries


def _claim_or_wait(path: str | None) -> dict[str, torch.Tensor] | None:
    """The entry when another computed it (after waiting for it); None when this caller must compute it
    (it then holds the claim)."""
    while path:
        saved = read(path)
        if saved is not None or storage.is_uri(path) or _claim(path):
            return saved
        log.info("cache entry %s is being computed by another run; waiting for it", path)
        while _claim_alive(path):
            time.sleep(min(HEARTBEAT_S / 4, WAIT_POLL_S))
    return None


def _claim(path: str) -> bool:
    claim = Path(f"{path}.claim")
    claim.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _claim_alive(path: str) -> bool:
    claim = Path(f"{path}.claim")
    try:
        age = time.time() - claim.stat().st_mtime
    except FileNotFoundError:
        return False
    if age > 4 * HEARTBEAT_S:  # its holder died without releasing it
        claim.unlink(missing_ok=True)
        return False
    return True


@contextmanager
def _heartbeat(paths: list[str]) -> Iterator[None]:
    """Hold the claims on `paths` (touched every HEARTBEAT_S) until the block ends, then release them."""
    claims = [Path(f"{p}.claim") for p in paths if not storage.is_uri(p)]
    done = threading.Event()

    def beat() -> None:
        while not done.wait(HEARTBEAT_S):
            for claim in claims:
                claim.touch(exist_ok=True)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        for claim in claims:
            claim.unlink(missing_ok=True)
