"""Quarantine: a rejected batch (or file) is moved out of landing, never deleted, with a ``reason.json``."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from meddiag_pipelines.atomic import atomic_write_json


def _free_destination(dest: Path) -> Path:
    """``dest``, or beside it a name with a unique suffix, cut so that it still fits a file name (255 bytes)."""
    if not dest.exists() and not dest.is_symlink():
        return dest
    suffix = f".{time.strftime('%Y%m%dT%H%M%S')}.{os.getpid()}.{time.monotonic_ns() % 10**6}"
    stem = os.fsencode(dest.name)[: 255 - len(suffix)].decode("utf-8", "ignore")
    return dest.with_name(stem + suffix)


def quarantine_path(source: Path, quarantine_root: Path, reason: dict, name: str | None = None,
                    merge: bool = False) -> Path:  # fmt: skip
    """Move ``source`` (a batch folder or one file) under ``quarantine_root`` and write its reason.

    A batch folder keeps its name (or ``name``, a safe display name for a folder whose own name is not valid
    UTF-8) and gets ``reason.json`` inside; a single file, or a symbolic link (moved as the link, never
    followed), goes into a folder of its own name with the reason beside it. The move is one rename on the
    same file system; a source that is already gone (moved by an earlier, interrupted run) only gets its reason.
    ``merge``: a batch folder whose quarantine folder already holds some of its files (moved one by one before
    the batch as a whole was refused) joins that folder instead of being set apart under a new name.
    """
    quarantine_root.mkdir(parents=True, exist_ok=True)
    name = name or source.name
    if source.is_dir() and not source.is_symlink():
        existing = quarantine_root / name
        if merge and existing.is_dir() and not existing.is_symlink():
            for child in sorted(source.iterdir()):
                shutil.move(str(child), str(_free_destination(existing / child.name)))
            source.rmdir()
            atomic_write_json(existing / "reason.json", reason)
            return existing
        dest = _free_destination(quarantine_root / name)
        shutil.move(str(source), str(dest))
        atomic_write_json(dest / "reason.json", reason)
        return dest
    dest_dir = _free_destination(quarantine_root / name)
    dest_dir.mkdir(parents=True)
    if source.exists() or source.is_symlink():
        shutil.move(str(source), str(dest_dir / name))  # a link is moved as a link
    atomic_write_json(dest_dir / "reason.json", reason)
    return dest_dir

