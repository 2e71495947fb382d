"""Quarantine: a rejected batch (or file) is moved out of landing, never deleted, with a ``reason.json``."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from meddiag_pipelines.atomic import atomic_write_json


def _free_destination(dest: Path) -> Path:
    if not dest.exists():
        return dest
    return dest.with_name(f"{dest.name}.{time.strftime('%Y%m%dT%H%M%S')}.{os.getpid()}")


def quarantine_path(source: Path, quarantine_root: Path, reason: dict) -> Path:
    """Move ``source`` (a batch folder or one file) under ``quarantine_root`` and write its reason.

    A batch folder keeps its name and gets ``reason.json`` inside; a single file goes into a folder of its
    own name with the reason beside it. The move is one rename on the same file system.
    """
    quarantine_root.mkdir(parents=True, exist_ok=True)
    if source.is_dir() and not source.is_symlink():
        dest = _free_destination(quarantine_root / source.name)
        shutil.move(str(source), str(dest))
        atomic_write_json(dest / "reason.json", reason)
        return dest
    dest_dir = _free_destination(quarantine_root / source.name)
    dest_dir.mkdir(parents=True)
    shutil.move(str(source), str(dest_dir / source.name))
    atomic_write_json(dest_dir / "reason.json", reason)
    return dest_dir
