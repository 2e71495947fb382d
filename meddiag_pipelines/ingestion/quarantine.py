"""Quarantine: a rejected batch (or file) is moved out of landing, never deleted, with a ``reason.json``.

On an object-store data root the quarantine is in the store: what is set aside is uploaded there (its reason
last), and only then removed from the local landing folder."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from meddiag_pipelines.atomic import atomic_write_json
from meddiag_pipelines.storage import DataRoot


def _free_name(name: str, taken: Callable[[str], bool]) -> str:
    """``name``, or a name with a unique suffix, cut so that it still fits a file name (255 bytes)."""
    if not taken(name):
        return name
    suffix = f".{time.strftime('%Y%m%dT%H%M%S')}.{os.getpid()}.{time.monotonic_ns() % 10**6}"
    return os.fsencode(name)[: 255 - len(suffix)].decode("utf-8", "ignore") + suffix


def _free_destination(dest: Path) -> Path:
    return dest.with_name(_free_name(dest.name, lambda n: (dest.parent / n).exists() or (dest.parent / n).is_symlink()))


def _free_key(store: DataRoot, rel: str) -> str:
    parent, name = PurePosixPath(rel).parent.as_posix(), PurePosixPath(rel).name
    return f"{parent}/{_free_name(name, lambda n: store.exists(f'{parent}/{n}'))}"


def quarantine_path(source: Path, quarantine_root: Path, reason: dict, name: str | None = None,
                    merge: bool = False, store: DataRoot | None = None) -> Path | str:  # fmt: skip
    """Move ``source`` (a batch folder or one file) under ``quarantine_root`` and write its reason.

    A batch folder keeps its name (or ``name``, a safe display name for a folder whose own name is not valid
    UTF-8) and gets ``reason.json`` inside; a single file, or a symbolic link (moved as the link, never
    followed), goes into a folder of its own name with the reason beside it. The move is one rename on the
    same file system; a source that is already gone (moved by an earlier, interrupted run) only gets its reason.
    ``merge``: a batch folder whose quarantine folder already holds some of its files (moved one by one before
    the batch as a whole was refused) joins that folder instead of being set apart under a new name.
    ``store``: an object-store data root (``quarantine_root`` is then its place in the local folder); returns
    the quarantine folder relative to the data root.
    """
    if store is not None:
        return _quarantine_in_store(source, store, store.relative(quarantine_root), reason, name or source.name, merge)
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



def _quarantine_in_store(source: Path, store: DataRoot, root: str, reason: dict, name: str, merge: bool) -> str:
    """:func:`quarantine_path` into an object store: upload, then the reason, then remove the local source. A
    symbolic link is removed without being followed (the store holds no links); the reason says what was set aside."""
    if source.is_dir() and not source.is_symlink():
        dest = f"{root}/{name}"
        if merge and store.exists(dest):
            for child in sorted(source.iterdir()):
                store.upload_tree(child, _free_key(store, f"{dest}/{child.name}"))
        else:
            dest = _free_key(store, dest)
            store.upload_tree(source, dest)
        store.write_json(f"{dest}/reason.json", reason)
        shutil.rmtree(source)
        return dest
    dest = _free_key(store, f"{root}/{name}")
    store.upload_tree(source, f"{dest}/{name}")
    store.write_json(f"{dest}/reason.json", reason)
    if source.exists() or source.is_symlink():
        source.unlink()
    return dest
