"""Quarantine: a rejected batch (or file) is moved out of landing, never deleted, with a ``reason.json``.

Layout of one quarantine folder, ``quarantine/<task>/<folder>/`` (``<folder>``: the batch's name, or
``<batch>.changed-<time>`` for files changed after ingestion)::

    reason.json                  why the whole batch was set aside (only when it was)
    files/<path>                 every entry set aside, at the path it had in the batch (markers included)
    reasons/<path>/reason.json   why the single file <path> was set aside

What landed lives under ``files/`` only, so no landed name (a ``reason.json``, a name like the temporary files
of an atomic write) can meet the quarantine's own files, and the sweep of those temporary files
(:func:`~meddiag_pipelines.atomic.sweep_stale`) only ever sees what the quarantine wrote. A batch whose files
were set aside one by one and which is then refused as a whole joins the same folder: every file of a batch
is under one ``files/`` tree, at its own path (``requeue`` brings them back from there).

On an object-store data root the quarantine is in the store: what is set aside is uploaded there (its reason
last), and only then removed from the local landing folder. A batch of a landing folder that several tasks share
is never moved: the task that refuses it writes only its ``reason.json`` (:func:`keep_in_landing`)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from meddiag_pipelines.atomic import atomic_write_json
from meddiag_pipelines.storage import DataRoot

REASON_FILE = "reason.json"
FILES_DIR = "files"
REASONS_DIR = "reasons"
KEPT_IN_LANDING = "kept_in_landing"  # a batch of a shared landing folder refused but left there: where it is


def file_reason(folder: Path, rel: str) -> Path:
    """Where the reason of the single file ``rel`` set aside in quarantine folder ``folder`` is."""
    return folder / REASONS_DIR / rel / REASON_FILE


def free_name(name: str, taken: Callable[[str], bool]) -> str:
    """``name``, or a name with a unique suffix, cut so that it still fits a file name (255 bytes)."""
    if not taken(name):
        return name
    suffix = f".{time.strftime('%Y%m%dT%H%M%S')}.{os.getpid()}.{time.monotonic_ns() % 10**6}"
    return os.fsencode(name)[: 255 - len(suffix)].decode("utf-8", "ignore") + suffix


def _taken(path: Path) -> bool:
    return os.path.lexists(path)


def is_folder(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _free_place(root: Path, rel: str) -> Path:
    """``root/rel``, a part renamed (:func:`free_name`) where its name is taken: by a file where a folder is
    needed, or by an entry already set aside under that path. Never an existing entry."""
    place = root
    parts = PurePosixPath(rel).parts
    for part in parts[:-1]:
        folder = place / part
        if _taken(folder) and not is_folder(folder):
            folder = place / free_name(part, lambda n, at=place: _taken(at / n))
        place = folder
    return place / free_name(parts[-1], lambda n: _taken(place / n))


def _merge_tree(source: Path, dest: Path) -> None:
    """Move every entry of folder ``source`` into folder ``dest`` at its own relative path (one rename each;
    folders present on both sides are merged; a name already taken gets a unique suffix), then remove ``source``."""
    dest.mkdir(parents=True, exist_ok=True)
    for child in sorted(source.iterdir()):
        target = dest / child.name
        if is_folder(child) and is_folder(target):
            _merge_tree(child, target)
        else:
            shutil.move(str(child), str(_free_place(dest, child.name)))
    source.rmdir()


def quarantine_batch(
    source: Path, quarantine_root: Path, reason: dict, name: str, store: DataRoot | None = None
) -> Path | str:
    """Move the batch folder ``source`` into ``quarantine_root/<name>/files/`` and write its ``reason.json``.

    ``name``: the batch's safe display name (its own name may not be valid UTF-8). The folder joins a quarantine
    folder of that name that holds only single files of the batch (no whole-batch reason yet); a folder that
    already holds a whole batch (another export landed under the same name) leaves it alone: the new one gets a
    name with a unique suffix. A source that is already gone (moved by an earlier, interrupted run) only gets its
    reason. ``store``: an object-store data root (``quarantine_root`` is then its place in the local folder);
    returns the quarantine folder relative to the data root."""
    if store is not None:
        return _batch_to_store(source, store, store.relative(quarantine_root), reason, name)
    quarantine_root.mkdir(parents=True, exist_ok=True)
    dest = quarantine_root / free_name(
        name,
        lambda n: (
            _taken(quarantine_root / n / REASON_FILE)
            or (_taken(quarantine_root / n) and not is_folder(quarantine_root / n))
        ),
    )
    dest.mkdir(exist_ok=True)
    if is_folder(source) and is_folder(dest / FILES_DIR):
        _merge_tree(source, dest / FILES_DIR)
    elif _taken(source):  # the folder, or a link in place of it (moved as the link, never followed)
        shutil.move(str(source), str(_free_place(dest, FILES_DIR)))
    atomic_write_json(dest / REASON_FILE, reason)
    return dest


def keep_in_landing(root: DataRoot, quarantine_root: Path, reason: dict, name: str, landed: Path) -> str:
    """The quarantine of a batch of a shared landing folder (``landing.folder``: other tasks read it): the batch
    stays where it landed, ``landed``; ``quarantine/<task>/<name>/reason.json`` says why this task refused it and
    where it is (``kept_in_landing``). Returns that folder relative to the data root."""
    rel = root.relative(quarantine_root)
    dest = f"{rel}/{free_name(name, lambda n: root.exists(f'{rel}/{n}/{REASON_FILE}'))}"
    root.write_json(f"{dest}/{REASON_FILE}", {**reason, KEPT_IN_LANDING: root.relative(landed)})
    return dest


def quarantine_file(batch_dir: Path, rel: str, folder: Path, reason: dict, store: DataRoot | None = None) -> Path | str:
    """Move the entry ``rel`` of ``batch_dir`` (a file, a folder, or a link or FIFO moved as itself, never opened) to
    ``folder/files/rel`` and write its reason at :func:`file_reason`. An entry already set aside under that path
    is kept: the new one gets a unique suffix, and its reason the same path. Returns where the entry went."""
    source = batch_dir / rel
    if store is not None:
        return _file_to_store(source, rel, store, store.relative(folder), reason)
    dest = _free_place(folder / FILES_DIR, rel)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(source), str(dest))
    atomic_write_json(file_reason(folder, dest.relative_to(folder / FILES_DIR).as_posix()), reason)
    return dest


def _free_key(store: DataRoot, key: str) -> str:
    parent, name = PurePosixPath(key).parent.as_posix(), PurePosixPath(key).name
    return f"{parent}/{free_name(name, lambda n: store.exists(f'{parent}/{n}'))}"


def _batch_to_store(source: Path, store: DataRoot, root: str, reason: dict, name: str) -> str:
    """:func:`quarantine_batch` into an object store: upload each file, then the reason, then remove the local
    source. A symbolic link is removed without being followed (the store holds no links); the reason says what
    was set aside."""
    dest = f"{root}/{free_name(name, lambda n: store.exists(f'{root}/{n}/{REASON_FILE}'))}"
    if is_folder(source):
        joining = store.exists(f"{dest}/{FILES_DIR}")  # single files of the batch are there: keep each of them
        for file in sorted(source.rglob("*")):
            if file.is_file() and not file.is_symlink():
                key = f"{dest}/{FILES_DIR}/{file.relative_to(source).as_posix()}"
                store.upload_tree(file, _free_key(store, key) if joining else key)
    store.write_json(f"{dest}/{REASON_FILE}", reason)
    if is_folder(source):
        shutil.rmtree(source)
    elif source.is_symlink():
        source.unlink()
    return dest


def _file_to_store(source: Path, rel: str, store: DataRoot, folder: str, reason: dict) -> str:
    dest = _free_key(store, f"{folder}/{FILES_DIR}/{rel}")
    store.upload_tree(source, dest)
    store.write_json(f"{folder}/{REASONS_DIR}/{dest.removeprefix(f'{folder}/{FILES_DIR}/')}/{REASON_FILE}", reason)
    if is_folder(source):  # a refused DICOM series folder, set aside whole
        shutil.rmtree(source)
    elif _taken(source):
        source.unlink()
    return dest
