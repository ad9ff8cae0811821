"""Local paths and object-store URIs (s3://, gs://) behind one small interface, with atomic writes.

Local writes go to a hidden temporary file (or folder) beside its destination and are renamed into place, so
a reader never sees half a file or half a folder. Object stores make a single PUT visible all at once,
which gives the same guarantee without a rename.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pyarrow.fs as pafs

from safemax_ray.errors import SafemaxError


def is_uri(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    if is_uri(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), str(Path(path.removeprefix("file://")).resolve())


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts]) if is_uri(base) else str(Path(base, *parts))


def exists(path: str) -> bool:
    fs, p = filesystem(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def read_bytes(path: str) -> bytes:
    fs, p = filesystem(path)
    with fs.open_input_stream(p) as f:
        return f.read()


def write_bytes_atomic(path: str, data: bytes, overwrite: bool = False) -> None:
    """Write all of `data` or nothing; refuse to replace an existing file unless told to."""
    if not overwrite and exists(path):
        raise FileExistsError(f"{path} already exists")
    if is_uri(path):
        fs, p = filesystem(path)
        with fs.open_output_stream(p) as f:
            f.write(data)
        return
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, dest)
        else:
            os.link(tmp, dest)  # fails if dest appeared meanwhile: no silent overwrite
            os.unlink(tmp)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def list_files(folder: str, suffix: str) -> list[str]:
    fs, p = filesystem(folder)
    if fs.get_file_info(p).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=True))
    names = [i.path for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(suffix)]
    names = [n for n in names if not os.path.basename(n).startswith((".", "_"))]
    if is_uri(folder):
        scheme = folder.split("://", 1)[0]
        return sorted(f"{scheme}://{n}" for n in names)
    return sorted(names)


def upload_dir(local: str | Path, uri: str) -> None:
    """Copy a local folder to an object-store URI (which must not exist yet)."""
    if exists(uri):
        raise FileExistsError(f"{uri} already exists")
    fs, path = filesystem(uri)
    pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def write_folder_atomic(path: str | Path, fill: Callable[[Path], None], overwrite: bool = False) -> None:
    """Make folder `path` by calling `fill(tmp)` on an empty local folder, then one rename (or, for an
    object-store URI, one upload): all of it or nothing. An existing non-empty folder is refused unless
    `overwrite`."""
    path = str(path)
    if is_uri(path):
        with tempfile.TemporaryDirectory() as local:
            fill(Path(local))
            try:
                upload_dir(local, path)
            except FileExistsError:
                raise SafemaxError(f"{path} already exists; not overwriting it") from None
        return
    out = Path(path)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise SafemaxError(f"folder {out} already exists and is not empty; not overwriting it (choose another)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a model folder is for sharing
    try:
        fill(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
