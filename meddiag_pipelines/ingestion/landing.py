"""The landing folder: ``<data>/landing/<task>/<batch>/`` holds the files of one export.

A batch counts once it is complete: it holds a ``_READY`` marker (the default), or, with
``landing.ready: quiet``, its files have not changed for ``landing.quiet_seconds``.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path, PurePath, PurePosixPath
from typing import NewType

from meddiag_pipelines.specs import LandingSpec

READY_MARKER = "_READY"
_CHUNK = 1 << 20

BatchKey = NewType("BatchKey", str)
"""A batch's one name, from :func:`batch_key`: its landing folder's name as safe text. The same string is its
Dagster partition key, its ``batch_id`` in the ledger, the value of :data:`BATCH_COLUMN` in its records, and the
name of its quarantine and predictions folders (the ledger files it under a hash of it, which fits any store)."""


def batch_key(folder: PurePath) -> BatchKey:
    """The key of the batch landed in ``folder``: the folder's name as safe text (:func:`display_name`), equal to
    the name exactly when the name is safe; a batch whose name is not (:func:`batch_key_problem`) is refused."""
    return BatchKey(display_name(folder.name))


def batch_key_problem(folder: PurePath) -> str | None:
    """Why ``folder``'s name cannot be a batch key, in plain words (``None``: it can)."""
    if batch_key(folder) != folder.name:
        return "has a folder name that is not valid UTF-8 or holds control characters; rename it"
    return None


@dataclass(frozen=True)
class LandedBatch:
    task: str
    batch_id: BatchKey
    path: Path
    files: tuple[str, ...]  # data files, relative to ``path``, sorted
    content_hash: str
    total_bytes: int
    digests: dict[str, str] = field(default_factory=dict, compare=False)  # file -> :func:`file_digest`


def display_name(name: str) -> str:
    """A file or folder name as safe text: bytes that are not UTF-8 (Linux names are bytes) and control
    characters are shown as ``\\xNN`` escapes. Equal to ``name`` exactly when the name is safe."""
    text = os.fsencode(name).decode("utf-8", "backslashreplace")
    return "".join(f"\\x{ord(ch):02x}" if unicodedata.category(ch) in ("Cc", "Cs") else ch for ch in text)


class LandingFolderError(ValueError):
    """The task's landing folder cannot be scanned: scanning it anyway would find no batch, silently."""


def check_landing_folder(task_landing: Path) -> None:
    """Refuse ``landing/<task>`` when it is a symbolic link (never followed, even to a folder inside the data root:
    the same rule as for batches and files) or not a folder. A missing one is only a task with nothing landed."""
    where = f"landing/{display_name(task_landing.name)}"
    if task_landing.is_symlink():
        raise LandingFolderError(
            f"{where} is a symbolic link, and links are never followed (one could lead outside "
            "the data root): replace it with the folder itself"
        )
    if task_landing.exists() and not task_landing.is_dir():
        raise LandingFolderError(f"{where} is not a folder: its batches cannot be read")


class UnsafePath(ValueError):
    """A path named by data (a labels.csv row, a reader's rejection) that must not be used as a file path."""


def confined_path(batch_dir: Path, rel: str) -> Path:
    """The entry ``rel`` inside ``batch_dir`` (a file or a folder), checked before any read, stat or listing.

    ``rel`` comes from data, so it is refused (:class:`UnsafePath`, a message that never repeats it) if it is
    absolute, climbs with ``..``, passes through a symbolic link, resolves outside the batch or does not exist."""
    if not rel or rel.strip() != rel:
        raise UnsafePath("empty file name or file name with surrounding spaces")
    if "\\" in rel or "\x00" in rel:
        raise UnsafePath("file name contains a backslash or a NUL byte")
    pure = PurePosixPath(rel)
    if pure.is_absolute():
        raise UnsafePath("absolute path: files must be named relative to the batch folder")
    if any(part == ".." for part in pure.parts):
        raise UnsafePath("path escapes the batch folder ('..')")
    current = Path(batch_dir)
    for part in pure.parts:
        current = current / part
        if current.is_symlink():
            raise UnsafePath("symbolic link refused (links are never followed)")
    if not current.resolve().is_relative_to(Path(batch_dir).resolve()):
        raise UnsafePath("path escapes the batch folder")
    if not os.path.lexists(current):
        raise UnsafePath("file listed but not found")
    return current


def confined_file(batch_dir: Path, rel: str) -> Path:
    """The regular file ``rel`` inside ``batch_dir`` (:func:`confined_path`), and nothing but a regular file: a
    FIFO would block its reader for ever, a device could be anything."""
    current = confined_path(batch_dir, rel)
    try:
        mode = current.lstat().st_mode
    except FileNotFoundError:
        raise UnsafePath("file listed but not found") from None
    if not stat.S_ISREG(mode):
        raise UnsafePath("not a regular file (a folder, FIFO, socket or device is never read)")
    return current


def is_data_file(rel: Path) -> bool:
    """Markers and hidden files (``_READY``, ``.DS_Store``, partial uploads) are not data."""
    return not any(part.startswith(("_", ".")) for part in rel.parts)


def data_files(batch_dir: Path) -> list[Path]:
    """Every data entry under the batch that is not a folder, relative to it: regular files, links (readers
    refuse them) and FIFOs, sockets or devices (ingestion rejects them). Only ``lstat`` is used: nothing is
    opened, so a FIFO never blocks the listing."""
    found = []
    for p in sorted(batch_dir.rglob("*")):
        rel = p.relative_to(batch_dir)
        if not stat.S_ISDIR(p.lstat().st_mode) and is_data_file(rel):
            found.append(rel)
    return found


def is_regular(path: Path) -> bool:
    """A regular file itself (not a link, folder, FIFO, socket or device): the only kind ever opened."""
    return stat.S_ISREG(path.lstat().st_mode)


def non_regular_files(batch: LandedBatch) -> list[str]:
    """The batch's data entries that are neither regular files nor links: FIFOs, sockets, devices."""
    return [rel for rel in batch.files if not (batch.path / rel).is_symlink() and not is_regular(batch.path / rel)]


def file_digest(path: Path) -> str:
    """SHA-256 of one entry's bytes; a link or a FIFO, socket or device is never opened and gets a fixed tag."""
    if path.is_symlink():
        return "<symlink>"
    if not is_regular(path):
        return "<not a regular file>"
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_digests(batch_dir: Path, files: list[Path]) -> dict[str, str]:
    return {str(rel): file_digest(batch_dir / rel) for rel in files}


def content_hash(batch_dir: Path, files: list[Path], digests: dict[str, str] | None = None) -> str:
    """SHA-256 over every file's name and digest: the same export hashes the same wherever it lands."""
    digests = file_digests(batch_dir, files) if digests is None else digests
    combined = hashlib.sha256()
    for rel in files:
        combined.update(str(rel).encode("utf-8", "surrogateescape") + b"\0" + digests[str(rel)].encode() + b"\n")
    return combined.hexdigest()


def is_ready(batch_dir: Path, landing: LandingSpec, now: float | None = None) -> bool:
    if landing.ready == "marker":
        return (batch_dir / READY_MARKER).exists()
    now = time.time() if now is None else now
    newest = max((p.lstat().st_mtime for p in batch_dir.rglob("*")), default=batch_dir.stat().st_mtime)
    return now - newest >= landing.quiet_seconds


def waiting_batch_dirs(task_landing: Path, landing: LandingSpec, now: float | None = None) -> list[Path]:
    """Batch folders that are not complete yet (no ``_READY`` marker, or files still changing)."""
    if not task_landing.is_dir() or task_landing.is_symlink():
        return []
    return [
        d
        for d in sorted(task_landing.iterdir())
        if not d.name.startswith((".", "_")) and not d.is_symlink() and d.is_dir() and not is_ready(d, landing, now)
    ]


def waiting_reason(landing: LandingSpec) -> str:
    if landing.ready == "marker":
        return f"has no {READY_MARKER} marker (add an empty {READY_MARKER} file once the batch is complete)"
    return f"is still changing (counted once its files are unchanged for {landing.quiet_seconds} s)"


def changed_since(batch_dir: Path, since: float) -> bool:
    """Whether any entry of the batch (files and folders, by ``lstat``, nothing opened) changed after ``since``
    (seconds since the epoch): the cheap test before a known batch is hashed again."""
    limit = int(since * 1e9)
    return any(p.lstat().st_mtime_ns > limit for p in (batch_dir, *batch_dir.rglob("*")))


def ready_batch_dirs(task_landing: Path, landing: LandingSpec, now: float | None = None) -> list[Path]:
    """Complete batch folders of one task, oldest name first; hidden folders are in-flight copies. A symbolic
    link in place of a batch folder is listed at once (never followed) so that ingestion can refuse it."""
    if not task_landing.is_dir() or task_landing.is_symlink():
        return []
    return [
        d
        for d in sorted(task_landing.iterdir())
        if not d.name.startswith((".", "_")) and (d.is_symlink() or (d.is_dir() and is_ready(d, landing, now)))
    ]


def describe_batch(task: str, batch_dir: Path) -> LandedBatch:
    """The batch's files and content hash; ``batch_id`` is the folder's :func:`batch_key`. A link in
    place of the folder is described without following it (no files)."""
    if batch_dir.is_symlink():
        digest = hashlib.sha256(b"<symlink>" + os.fsencode(batch_dir.name)).hexdigest()
        return LandedBatch(task, batch_key(batch_dir), batch_dir, (), digest, 0)
    files = data_files(batch_dir)
    digests = file_digests(batch_dir, files)
    total = sum((batch_dir / f).lstat().st_size for f in files if is_regular(batch_dir / f))
    return LandedBatch(
        task=task,
        batch_id=batch_key(batch_dir),
        path=batch_dir,
        files=tuple(str(f) for f in files),
        content_hash=content_hash(batch_dir, files, digests),
        total_bytes=total,
        digests=digests,
    )
