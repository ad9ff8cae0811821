"""The shared cache folder (`<results>/cache`): safetensors files keyed by the content that fixes them.

Runs read an entry instead of recomputing it (the base model's evaluation samples, a concept's training
latents, Selective Amnesia's Fisher diagonal). An entry that cannot be read (truncated by a killed
writer, a disk error) is a miss: one log line says so, the caller recomputes, and the write replaces it.
Writes are atomic, so a reader sees a whole entry or none.
"""

from __future__ import annotations

import logging

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
