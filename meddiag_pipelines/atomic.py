"""Atomic writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def staging_dir(final: Path) -> Path:
    """A fresh hidden folder beside ``final`` in which to build a whole folder before publishing it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{final.name}.{uuid.uuid4().hex}.tmp"
    staging.mkdir()
    return staging


def publish_dir(staging: Path, final: Path) -> Path:
    """Publish a completed folder: the first time by rename; afterwards by swapping a symbolic link.

    ``final`` is a link to a versioned folder, so replacing it is one atomic rename of a link and a
    reader never sees a mix of two versions.
    """
    target = final.parent / f"{final.name}.{uuid.uuid4().hex[:12]}"
    os.replace(staging, target)
    link_tmp = final.parent / f".{final.name}.{uuid.uuid4().hex}.lnk"
    os.symlink(target.name, link_tmp)
    previous = final.resolve() if final.is_symlink() else None
    if final.exists() and not final.is_symlink():
        shutil.rmtree(final)
    os.replace(link_tmp, final)
    _fsync_dir(final.parent)
    if previous is not None and previous != target and previous.exists():
        shutil.rmtree(previous, ignore_errors=True)
    return final


def publish_new_dir(staging: Path, final: Path) -> Path:
    """Publish a folder that must never change once written (a model version): refuses to overwrite."""
    if final.exists():
        raise FileExistsError(f"{final}: already exists and is immutable")
    os.rename(staging, final)
    _fsync_dir(final.parent)
    return final
