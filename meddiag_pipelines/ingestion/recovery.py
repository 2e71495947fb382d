"""Recovery after a spec or an export was fixed: what ``meddiag requeue | reset`` do to the data root (the commands,
which first ask the Dagster instance whether a run of the task is in flight, are meddiag_pipelines/recover.py).

    requeue   move every file of a quarantined batch (from each of its quarantine folders) back to landing under
              its name, with a fresh _READY, and forget its ledger entry and records, so the next run reads it
              again
    reset     forget the task's warehouse state (ledger, raw records, label domain, asset tables and views);
              models, reports, landing and quarantine are left alone

A run that starts during a requeue cannot corrupt the ledger: the requeue adds an entry, and every entry is
created once (:class:`~meddiag_pipelines.ingestion.warehouse.Warehouse`), so the run's entries and the command's
are all kept, in order, and the newest wins. Reset deletes the task's ledger, state and asset values, which no run
can share: pause the task's sensor and schedule before it.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from pathlib import Path, PurePosixPath

from meddiag_pipelines.atomic import staging_dir
from meddiag_pipelines.ingestion.landing import READY_MARKER, display_name
from meddiag_pipelines.ingestion.quarantine import (
    FILES_DIR,
    KEPT_IN_LANDING,
    REASON_FILE,
    REASONS_DIR,
    free_name,
    is_folder,
)
from meddiag_pipelines.ingestion.warehouse import Warehouse
from meddiag_pipelines.storage import DataRoot

REQUEUED_DIR = (
    "_requeued"  # quarantine/<task>/_requeued/: the reasons of batches sent back (no batch name starts with '_')
)


class RecoveryError(Exception):
    """A request that cannot be carried out; the message says why and what to do."""


def check_plain_name(kind: str, name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name or name.startswith((".", "_")):
        raise RecoveryError(f"{kind} name must be a plain folder name")


def requeue(root: DataRoot, warehouse: Warehouse, task: str, batch: str) -> Path:
    """Bring every file of a quarantined batch back to ``landing/<task>/<batch>/``, each at the path it landed at,
    from all of the batch's quarantine folders (:func:`quarantine_folders`), with a fresh ``_READY``, and forget
    its ledger entry and records; returns the batch's landing folder. A batch of a shared landing folder, never
    moved (``kept_in_landing``), is only forgotten, to be read again. The quarantine's reasons are not data: they
    stay, in ``quarantine/<task>/_requeued/``. Refused (nothing changed) unless the ledger holds the batch as quarantined
    and quarantine holds its files, when landing already holds a folder of that name, or when two of its
    quarantine folders hold a file at the same path."""
    check_plain_name("task", task)
    check_plain_name("batch", batch)
    quarantine, target = root.quarantine(task), root.landing(task) / batch
    rows = warehouse.ledger(task).filter(batch_id=batch)
    status = rows["status"][0] if rows.height else None
    folders = quarantine_folders(quarantine, batch)
    if status != "quarantined" or not folders:
        found = f"its ledger state is {status!r}" if status else "the ledger does not know it"
        raise RecoveryError(
            f"batch {batch} of {task} is not quarantined ({found}; quarantine/{task}/{batch}/ "
            f"{'exists' if folders else 'does not exist'}); only a quarantined batch can be requeued"
        )
    kept = _kept_in_landing(quarantine / batch)
    if kept is not None:  # a batch of a shared landing folder never left it: this task reads it again
        _set_reasons_aside(quarantine, folders)
        warehouse.forget_batch(task, batch)
        return root.path(kept)
    if os.path.lexists(target):
        raise RecoveryError(f"landing/{task}/{batch} already exists; move it away or land the batch under a new name")
    files = _files_to_restore(task, [root.path(root.relative(f)) for f in folders])
    staging = staging_dir(target)  # hidden: no scan reads the batch until every file is back
    for rel, folder in files.items():
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(folder / FILES_DIR / rel), str(staging / rel))
    _set_reasons_aside(quarantine, folders)
    warehouse.forget_batch(task, batch)  # before the marker: a sensor tick finds the batch only once it is forgotten
    staging.rename(target)
    (target / READY_MARKER).touch()
    return target


def _set_reasons_aside(quarantine: Path, folders: list[Path]) -> None:
    kept = quarantine / REQUEUED_DIR
    kept.mkdir(exist_ok=True)
    for folder in folders:
        folder.rename(kept / free_name(folder.name, lambda n, at=kept: os.path.lexists(at / n)))


def _kept_in_landing(folder: Path) -> str | None:
    """Where a batch refused in a shared landing folder was left (relative to the data root), or ``None``."""
    try:
        kept = json.loads((folder / REASON_FILE).read_text(encoding="utf-8")).get(KEPT_IN_LANDING)
    except (OSError, ValueError, AttributeError):
        return None
    return kept if isinstance(kept, str) else None


def quarantine_folders(quarantine: Path, batch: str) -> list[Path]:
    """The quarantine folders of ``batch``: ``<batch>/`` and each ``<batch>.changed-<time>/`` whose reasons all
    name the batch (another batch's name may start with ``<batch>.changed-``)."""
    folders = [quarantine / batch] if is_folder(quarantine / batch) else []
    for folder in sorted(quarantine.glob(f"{glob.escape(batch)}.changed-*")):
        reasons = sorted((folder / REASONS_DIR).rglob(REASON_FILE)) if is_folder(folder) else []
        if reasons and all(_reason_batch(r) == batch for r in reasons):
            folders.append(folder)
    return folders


def _reason_batch(reason: Path) -> str | None:
    try:
        return json.loads(reason.read_text()).get("batch")
    except (OSError, ValueError, AttributeError):
        return None


def _files_to_restore(task: str, folders: list[Path]) -> dict[str, Path]:
    """Relative path -> the quarantine folder whose ``files/`` holds it. Refused when two folders hold the same
    path, or one a file where another has a folder (one would overwrite the other), or none holds anything."""
    found: dict[str, list[Path]] = {}
    for folder in folders:
        root = folder / FILES_DIR
        for entry in sorted(root.rglob("*")) if is_folder(root) else []:
            if not is_folder(entry):
                found.setdefault(entry.relative_to(root).as_posix(), []).append(folder)
    again = "; move one of them away and run requeue again"
    for rel, holders in found.items():
        if len(holders) > 1:
            raise RecoveryError(f"{display_name(rel)} is in {' and in '.join(_shown(task, f) for f in holders)}{again}")
        parent = next((p.as_posix() for p in PurePosixPath(rel).parents if p.as_posix() in found), None)
        if parent is not None:
            raise RecoveryError(
                f"{display_name(parent)} is a file in {_shown(task, found[parent][0])} and a folder in "
                f"{_shown(task, holders[0])}{again}"
            )
    if not found:
        raise RecoveryError(f"{_shown(task, folders[0])} holds no file to bring back")
    return {rel: holders[0] for rel, holders in found.items()}


def _shown(task: str, folder: Path) -> str:
    return f"quarantine/{task}/{display_name(folder.name)}/{FILES_DIR}/"


def reset(root: DataRoot, warehouse: Warehouse, task: str) -> None:
    """Forget everything the warehouse holds for ``task``; models, reports, landing and quarantine stay."""
    check_plain_name("task", task)
    warehouse.forget_task(task)
    for folder in root.asset_values(task):
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder)
