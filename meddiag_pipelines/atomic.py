"""Atomic writes: a reader sees the old file or the new one, never half of either.

A process killed mid-write leaves at most hidden leftovers (``.<name>.*.tmp`` files and folders, ``.lnk``
links) and, for :func:`publish_dir`, an unreferenced ``<name>.<hex>`` folder; readers never look at them, and
the next write of the same target removes those older than :data:`STALE_AFTER_S` (younger ones may belong to a
concurrent writer).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
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


STALE_AFTER_S = 3600.0


def sweep_stale(final: Path, keep: Path | None = None, older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove leftovers of interrupted writes of ``final``: hidden ``.<name>.*.tmp``/``.lnk`` entries and
    (for published folders) ``<name>.<12 hex>`` folders other than ``keep``, when older than ``older_than_s``."""
    folder, name = final.parent, final.name
    pattern = re.compile(rf"(\.{re.escape(name)}\..+\.(tmp|lnk)|{re.escape(name)}\.[0-9a-f]{{12}})")
    removed = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for entry in folder.iterdir():
        if not pattern.fullmatch(entry.name) or (keep is not None and entry.name == keep.name):
            continue
        try:
            if now - entry.lstat().st_mtime < older_than_s:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
        except OSError:
            continue
    return removed


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
    sweep_stale(path)
    return path


def atomic_create(path: Path, data: bytes) -> bool:
    """Create ``path`` holding ``data`` unless it exists (False then, nothing changed): a complete temporary
    file beside it, hard-linked to the name, which fails if the name exists."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp_name, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp_name)
    _fsync_dir(path.parent)
    return True


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
    sweep_stale(final, keep=target)
    return final


def publish_new_dir(staging: Path, final: Path) -> Path:
    """Publish a folder that must never change once written (a model version): refuses to overwrite."""
    if final.exists():
        raise FileExistsError(f"{final}: already exists and is immutable")
    os.rename(staging, final)
    _fsync_dir(final.parent)
    return final
