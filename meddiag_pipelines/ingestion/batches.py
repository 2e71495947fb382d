"""Batch bookkeeping shared by every modality: read new batches once, validate them, quarantine failures.

Each landed batch ends in exactly one ledger state: ``read`` (waiting for validation), ``validated`` or
``quarantined`` (moved to ``<data>/quarantine/<task>/`` with a ``reason.json``; in a landing folder that several
tasks share, ``landing.folder``, left in place with only the reason there, since the same batch may pass the
other tasks' checks: the ledger is each task's own), or ``labels``: a batch whose
every file is a CSV or Parquet file holding only the task's id and label columns gives the outcomes of cases
already scored (``monitoring.labels``); it holds no records, is never validated or trained on, and stays in
landing for the monitoring of the predictions to join. :func:`reconcile` proves that every landed batch is
accounted for.

The rule for a known batch whose files change after it was ingested (added, changed or removed): its rows
already ingested stay (and so do its unchanged files, which image tasks read their pixels from); each added or
changed file is set aside in ``quarantine/<task>/<batch>.changed-<time>/`` with the counts, so nothing is lost
and nothing unvalidated is trained on; new rows are landed as a new batch. FIFOs, sockets and devices are never opened: each is
moved to quarantine before any reader runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import duckdb
import polars as pl
from polars.exceptions import PanicException

from meddiag_pipelines.ingestion.errors import BatchRejected
from meddiag_pipelines.ingestion.labels_batch import (
    LabelsError,
    is_labels_files,
    read_labels_batch,
)
from meddiag_pipelines.ingestion.landing import (
    BatchKey,
    LandedBatch,
    batch_key,
    batch_key_problem,
    changed_since,
    check_landing_folder,
    data_files,
    describe_batch,
    file_digests,
    non_regular_files,
    ready_batch_dirs,
    waiting_batch_dirs,
    waiting_reason,
)
from meddiag_pipelines.ingestion.quarantine import is_folder, keep_in_landing, quarantine_batch, quarantine_file
from meddiag_pipelines.ingestion.warehouse import SchemaConflict, Warehouse, conform
from meddiag_pipelines.specs import BATCH_COLUMN, TaskSpec, canonical_label
from meddiag_pipelines.storage import DataRoot
from meddiag_pipelines.validation.suites import CheckFailure

log = logging.getLogger(__name__)
RAW_TABLE = "raw_records"
MAX_BATCH_NAME_BYTES = 200  # file names hold 255 bytes; outputs add a suffix of up to ~40 to the batch name
NOT_REGULAR = "is not a regular file (a FIFO, socket or device); only regular files are read"
NOT_READ = "was not read: not a file this task reads"
LABEL_DOMAIN_KEY = "label_domain"
LABELS_STATUS = "labels"  # a labels batch: ids and labels of cases already scored (monitoring, never training)


@dataclass
class ReadOutcome:
    """What a reader returns when one file, not the whole batch, is the unit of rejection (images, texts).

    ``files_read``: the batch files (relative, as in ``LandedBatch.files``) the reader actually read. When given,
    every other listed file that it did not reject either becomes a rejection (:data:`NOT_READ`), so nothing
    is counted as ingested that was not read."""

    records: pl.DataFrame
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (file relative to the batch, problem)
    files_read: list[str] | None = None
    moves_folders: bool = False  # a rejected folder goes to quarantine whole: no record read inside it (volumes)


def _rejection(batch: LandedBatch, rel: str, problem: str, folders: bool) -> dict:
    """A rejected entry as the ledger keeps it; ``folder_files`` marks a folder set aside whole (``folders``:
    :attr:`ReadOutcome.moves_folders`) with the count of its files, so that a run that finishes an interrupted
    one moves it too and :func:`reconcile` counts every file."""
    listed = set(batch.files)
    whole = folders and _movable_folder(batch.path, rel, listed)
    inside = sum(f.startswith(rel + "/") for f in listed) if whole else 0
    return {"batch": batch.batch_id, "file": rel, "problem": problem, **({"folder_files": inside} if whole else {})}


Reader = Callable[[LandedBatch, TaskSpec], pl.DataFrame | ReadOutcome]
Validator = Callable[[pl.DataFrame, TaskSpec, set[str]], list[CheckFailure]]


@dataclass
class IngestSummary:
    ingested: list[BatchKey] = field(default_factory=list)
    quarantined: list[dict] = field(default_factory=list)  # {batch, file, problem}: whole batches or single files
    changed: list[dict] = field(default_factory=list)  # {batch, added, changed, removed}: known batches that changed
    waiting: list[BatchKey] = field(default_factory=list)  # batches not ready yet (no _READY marker, or not quiet)
    rows: int = 0
    skipped_known: int = 0
    labels: list[BatchKey] = field(default_factory=list)  # labels batches: outcomes of cases already scored


def _reason(stage: str, batch: str, file: str, problem: str, **extra) -> dict:
    return {"stage": stage, "batch": batch, "file": file, "problem": problem, "at": time.time(), **extra}


def private_names(spec: TaskSpec) -> bool:
    """Whether the names of a batch's files stay out of the ledger, logs and messages: a DICOM series' slice files
    are named by the export (often after the patient), not by the user, who names only the series folder (in
    labels.csv). Each is then recorded under :func:`ledger_name`."""
    return spec.volume is not None and spec.volume.format == "dicom_series"


STAND_IN = re.compile(r"h[0-9a-f]{16}(/h[0-9a-f]{16})*")  # what :func:`ledger_name` writes


def ledger_name(batch_id: str, rel: str) -> str:
    """A name-free stand-in for the entry ``rel`` of batch ``batch_id``: each path part becomes 64 bits of a
    SHA-256 over the batch and the path up to it, so an entry under a folder stays under that folder's stand-in
    (a folder set aside takes its files with it) and the same file has the same stand-in on every scan."""
    parts = PurePosixPath(rel).parts
    return "/".join(
        "h" + hashlib.sha256(json.dumps([batch_id, *parts[: i + 1]]).encode()).hexdigest()[:16]
        for i in range(len(parts))
    )


def _ledger_row(
    batch: LandedBatch, status: str, n_rows: int, columns: list[str], reason: dict | None, private: bool = False
) -> dict:
    """The batch's ledger entry; ``private``: its files under their :func:`ledger_name` (:func:`private_names`)."""
    name = (lambda rel: ledger_name(batch.batch_id, rel)) if private else str
    return {
        "batch_id": batch.batch_id,
        "content_hash": batch.content_hash,
        "status": status,
        "n_rows": n_rows,
        "files": [name(f) for f in batch.files],
        "columns": columns,
        "reason": reason,
        "file_hashes": {name(f): d for f, d in batch.digests.items()},
    }


def _quarantine(
    spec: TaskSpec, root: DataRoot, warehouse: Warehouse, batch: LandedBatch, reason: dict, *, new: bool = True
) -> bool:
    """Ledger first, then the move: a crash in between leaves a ledger entry whose folder is still in landing,
    and the next run finishes the move (:func:`_finish_interrupted`). ``False`` if another run recorded the
    batch first (then it is theirs to move). Files of the batch already set aside one by one are joined
    (:func:`~meddiag_pipelines.ingestion.quarantine.quarantine_batch`)."""
    if new:
        if not warehouse.add_batch(spec.name, _ledger_row(batch, "quarantined", 0, [], reason, private_names(spec))):
            return False
    else:
        warehouse.set_status(spec.name, batch.batch_id, "quarantined", reason)
    if spec.landing.shared:  # the other tasks of the folder may read the batch (or have): it stays
        keep_in_landing(root, root.quarantine(spec.name), reason, batch.batch_id, batch.path)
    else:
        quarantine_batch(batch.path, root.quarantine(spec.name), reason, batch.batch_id, store=root.object_store())
    log.warning("task %s: batch %s quarantined: %s: %s", spec.name, batch.batch_id, reason["file"], reason["problem"])
    return True


def _quarantine_files(spec: TaskSpec, root: DataRoot, batch: LandedBatch, rejected: list[dict]) -> None:
    """Move each rejected file (not its batch) to ``quarantine/<task>/<batch>/files/<file>`` with its reason;
    a rejected folder marked ``folder_files`` (:func:`_rejection`) goes there whole.

    A rejection's ``file`` comes from data (a labels.csv row may name ``../../warehouse/x`` or an absolute
    path): only an entry this batch's own listing found (a listed file, or a folder holding listed files), still
    inside the batch, is ever moved; any other name stays a rejected row with its reason, never a file
    operation."""
    listed = set(batch.files)
    for item in rejected:
        rel = item["file"]
        if (rel in listed and _movable(batch.path, rel)) or (
            item.get("folder_files") and _movable_folder(batch.path, rel, listed)
        ):
            reason = _reason("read", batch.batch_id, rel, item["problem"])
            quarantine_file(batch.path, rel, root.quarantine(spec.name) / batch.batch_id, reason, root.object_store())
        log.warning("task %s: batch %s: file %s quarantined: %s", spec.name, batch.batch_id, rel, item["problem"])


def _movable_folder(batch_dir: Path, rel: str, listed: set[str]) -> bool:
    """``rel`` is a real folder of the batch (no link on the way) that holds files of its listing."""
    if not rel or rel.endswith("/") or not any(f.startswith(rel + "/") for f in listed):
        return False
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or "\\" in rel or "\x00" in rel:
        return False
    folder = batch_dir
    for part in pure.parts:
        folder = folder / part
        if not is_folder(folder):
            return False
    return True


def _movable(batch_dir: Path, rel: str) -> bool:
    """``rel`` (a name from the batch's own listing) is an entry of the batch (a file, a link, or a FIFO,
    socket or device; never a folder) whose parent folders are real folders of the batch: it is moved as the
    entry, never opened or followed. :func:`confined_file` refuses all but regular files, so it cannot
    decide this."""
    pure = PurePosixPath(rel)
    if not rel or pure.is_absolute() or ".." in pure.parts or "\\" in rel or "\x00" in rel:
        return False
    parent = batch_dir
    for part in pure.parts[:-1]:
        parent = parent / part
        if parent.is_symlink() or not parent.is_dir():
            return False
    try:
        return not stat.S_ISDIR((parent / pure.name).lstat().st_mode)
    except OSError:
        return False


def _finish_interrupted(spec: TaskSpec, root: DataRoot, batch_dir: Path, row: dict, summary: IngestSummary) -> None:
    """A known batch still in landing: finish what a crashed run began (moving a quarantined batch or its
    rejected files), or quarantine a different export re-landed under the name of a quarantined batch."""
    reason = json.loads(row["reason"]) if row["reason"] else {}
    if row["status"] == "quarantined" and spec.landing.shared:
        return  # kept in its shared landing folder on purpose (_quarantine): nothing to finish
    if row["status"] == "quarantined":
        batch = describe_batch(spec.name, batch_dir)
        if batch.content_hash != row["content_hash"]:
            reason = _reason(
                "read",
                batch.batch_id,
                batch.batch_id,
                "was landed again, with different content, under "
                "the name of a batch already quarantined; land the corrected export under a new name, "
                "or requeue the quarantined one (meddiag requeue)",
            )
            summary.quarantined.append({"batch": batch.batch_id, "file": batch.batch_id, "problem": reason["problem"]})
        quarantine_batch(batch_dir, root.quarantine(spec.name), reason, row["batch_id"], store=root.object_store())
        log.warning("task %s: batch %s moved to quarantine: %s", spec.name, row["batch_id"], reason.get("problem"))
        return
    # The batch's own listing, not the ledger's (which may hold stand-ins, :func:`ledger_name`), says what exists.
    listed = tuple(str(f) for f in data_files(batch_dir))
    pending = [
        r
        for r in reason.get("rejected_files", [])
        if _movable(batch_dir, r["file"])
        or (r.get("folder_files") and _movable_folder(batch_dir, r["file"], set(listed)))
    ]
    if pending:
        batch = LandedBatch(spec.name, row["batch_id"], batch_dir, listed, row["content_hash"], 0)
        _quarantine_files(spec, root, batch, pending)


def batch_changes(batch_dir: Path, row: dict, private: bool = False) -> dict[str, int] | None:
    """How a known, not quarantined batch differs from what was ingested: ``{added, changed, removed}`` file
    counts and the ``files`` added or changed, or ``None`` when it is unchanged (or was recorded before per-file
    digests were kept). Files (and folders) rejected at read were moved out on purpose and do not count.
    ``private``: the ledger holds the files under :func:`ledger_name`. Nothing is hashed while no entry of the
    folder is newer than the ledger's last word on the batch (``updated_at``)."""
    if not row.get("file_hashes") or not changed_since(batch_dir, row["updated_at"]):
        return None
    reason = json.loads(row["reason"]) if row["reason"] else {}
    hashes = json.loads(row["file_hashes"])
    private = private and all(STAND_IN.fullmatch(f) for f in hashes)  # entries written before stand-ins: names
    name = (lambda rel: ledger_name(row["batch_id"], rel)) if private else str
    moved = {r["file"] for r in reason.get("rejected_files", [])}
    moved |= {name(m) for m in moved}

    def kept(key: str) -> bool:
        return not any(key == m or key.startswith(m + "/") for m in moved)

    recorded = {f: d for f, d in hashes.items() if kept(f)}
    real = {name(f): f for f in map(str, data_files(batch_dir))}
    current = {name(f): d for f, d in file_digests(batch_dir, [Path(f) for f in real.values()]).items()}
    current = {k: d for k, d in current.items() if kept(k)}
    added = sorted(current.keys() - recorded.keys())
    changed = sorted(f for f in current.keys() & recorded.keys() if current[f] != recorded[f])
    counts = {"added": len(added), "removed": len(recorded.keys() - current.keys()), "changed": len(changed)}
    return {**counts, "files": sorted(real[k] for k in added + changed)} if any(counts.values()) else None


def _set_aside_changed(
    spec: TaskSpec, root: DataRoot, batch_dir: Path, batch_id: BatchKey, counts: dict, summary: IngestSummary
) -> None:
    """The documented rule for a batch that changed after it was ingested: its rows and unchanged files stay;
    each added or changed file goes to ``quarantine/<task>/<batch>.changed-<time>/files/<file>``, so nothing is lost."""
    files = counts.pop("files")
    problem = (
        f"changed after it was ingested: {counts['added']} files added, {counts['changed']} changed, "
        f"{counts['removed']} removed; its rows already ingested stay; land the new rows as a new batch"
    )
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = root.quarantine(spec.name) / f"{batch_id}.changed-{stamp}"
    for rel in files:
        if _movable(batch_dir, rel):
            reason = _reason("read", batch_id, rel, problem, **counts)
            quarantine_file(batch_dir, rel, aside, reason, root.object_store())
    summary.changed.append({"batch": batch_id, **counts})
    log.warning("task %s: batch %s %s", spec.name, batch_id, problem)


def _known_batch(
    spec: TaskSpec, root: DataRoot, warehouse: Warehouse, batch_dir: Path, row: dict, summary: IngestSummary
) -> None:
    summary.skipped_known += 1
    _finish_interrupted(spec, root, batch_dir, row, summary)
    if row["status"] != "quarantined" and batch_dir.is_dir() and not batch_dir.is_symlink():
        counts = batch_changes(batch_dir, row, private_names(spec))
        if counts:
            _set_aside_changed(spec, root, batch_dir, row["batch_id"], counts, summary)
            # the folder is as ingested again: a later look needs no hashing until something else changes
            warehouse.set_status(
                spec.name, row["batch_id"], row["status"], json.loads(row["reason"]) if row["reason"] else None
            )


def _describe(spec: TaskSpec, root: DataRoot, batch_dir: Path) -> LandedBatch:
    """Describe a landed batch, or refuse it (as a batch without files) when its folder is unsafe to read."""
    if batch_dir.is_symlink():
        raise _Refused(
            describe_batch(spec.name, batch_dir),
            "is a symbolic link; a batch must be a real folder in the landing area (links are never followed)",
        )
    digest = hashlib.sha256(os.fsencode(batch_dir.name)).hexdigest()
    bare = LandedBatch(spec.name, batch_key(batch_dir), batch_dir, (), digest, 0)
    if problem := batch_key_problem(batch_dir):
        raise _Refused(bare, problem)
    if len(os.fsencode(batch_dir.name)) > MAX_BATCH_NAME_BYTES:
        raise _Refused(
            bare,
            f"has a folder name over {MAX_BATCH_NAME_BYTES} bytes; outputs named after the batch "
            "(predictions, quarantine) would not fit a file name: rename it",
        )
    root.confined(batch_dir)
    try:
        return describe_batch(spec.name, batch_dir)
    except OSError as exc:
        raise _Refused(bare, f"cannot be listed or hashed: {type(exc).__name__} on one of its files") from exc


class _Refused(Exception):
    def __init__(self, batch: LandedBatch, problem: str):
        super().__init__(problem)
        self.batch, self.problem = batch, problem


def _read(reader: Reader, batch: LandedBatch, spec: TaskSpec) -> ReadOutcome:
    """Run a reader; whatever it raises (short of the process being stopped) becomes a rejection of this batch
    only, so one hostile batch never stops the others."""
    try:
        outcome = reader(batch, spec)
    except BatchRejected:
        raise
    except (Exception, PanicException) as exc:
        raise BatchRejected(
            batch.batch_id,
            f"could not be read: the reader stopped on an error it does not "
            f"describe ({type(exc).__name__}; its message is not kept, as it may quote the data)",
        ) from exc
    return outcome if isinstance(outcome, ReadOutcome) else ReadOutcome(outcome)


def _unread(outcome: ReadOutcome, batch: LandedBatch) -> list[tuple[str, str]]:
    """Listed files the reader neither read nor rejected (only known when it says what it read)."""
    if outcome.files_read is None:
        return []
    accounted = set(outcome.files_read) | {f for f, _ in outcome.rejected}
    return [(f, NOT_READ) for f in batch.files if f not in accounted]


def ingest_new_batches(spec: TaskSpec, root: DataRoot, warehouse: Warehouse, reader: Reader) -> IngestSummary:
    """:func:`ingest_batches` over every ready batch of the landing folder."""
    names = [d.name for d in ready_batch_dirs(root.landing(spec.landing_folder), spec.landing)]
    return ingest_batches(spec, root, warehouse, reader, names)


def ingest_batches(
    spec: TaskSpec, root: DataRoot, warehouse: Warehouse, reader: Reader, names: list[str]
) -> IngestSummary:
    """Read each named batch folder (one partition each) not yet in the ledger, write its records to the
    warehouse, or quarantine it; a known batch only gets its changes set aside (or an interrupted move finished).

    One step at a time per task (the task's Dagster pool, instance-wide); without it, a batch is still ingested
    once even if two runs race or one is killed half-way: its ledger entry is created once, by one of them
    (:meth:`Warehouse.add_batch`), and names its records file."""
    task_landing = root.landing(spec.landing_folder)
    if task_landing.exists():
        root.confined(task_landing)  # a landing folder that is a link out of the data root is a setup error
    check_landing_folder(task_landing)  # so is a link inside it, or a file: either would read as "nothing landed"
    known = {r["batch_id"]: r for r in warehouse.ledger(spec.name).iter_rows(named=True)}
    summary = IngestSummary(waiting=[batch_key(d) for d in waiting_batch_dirs(task_landing, spec.landing)])
    for name in names:
        batch_dir = task_landing / name
        if batch_dir.is_dir() or batch_dir.is_symlink():
            ingest_batch(spec, root, warehouse, reader, batch_dir, known.get(batch_key(batch_dir)), summary)
    return summary


def ingest_batch(
    spec: TaskSpec,
    root: DataRoot,
    warehouse: Warehouse,
    reader: Reader,
    batch_dir: Path,
    known: dict | None,
    summary: IngestSummary,
) -> None:
    """One batch folder (``known``: its ledger row, if any); what happened is added to ``summary``."""
    if known is not None:
        _known_batch(spec, root, warehouse, batch_dir, known, summary)
        return
    try:
        batch = _describe(spec, root, batch_dir)
    except _Refused as exc:
        refuse_batch(spec, root, warehouse, exc.batch, exc.problem, summary)
        return
    _ingest_batch(spec, root, warehouse, reader, batch, summary)


def refuse_batch(
    spec: TaskSpec, root: DataRoot, warehouse: Warehouse, batch: LandedBatch, problem: str, summary: IngestSummary
) -> None:
    """Quarantine a whole batch before reading it (``problem``: why, in plain words)."""
    reason = _reason("read", batch.batch_id, batch.batch_id, problem)
    if _quarantine(spec, root, warehouse, batch, reason):
        summary.quarantined.append({"batch": batch.batch_id, "file": batch.batch_id, "problem": problem})


def _set_aside_non_regular(spec: TaskSpec, root: DataRoot, batch: LandedBatch) -> tuple[LandedBatch, list[dict]]:
    """Move FIFOs, sockets and devices to quarantine before any reader runs (a FIFO would block it for ever);
    the reader gets the batch without them."""
    special = non_regular_files(batch)
    if not special:
        return batch, []
    for rel in (f for f in special if _movable(batch.path, f)):
        reason = _reason("read", batch.batch_id, rel, NOT_REGULAR)
        quarantine_file(batch.path, rel, root.quarantine(spec.name) / batch.batch_id, reason, root.object_store())
    # named in the ledger and logs as the ledger lists them (:func:`private_names`)
    shown = [ledger_name(batch.batch_id, f) if private_names(spec) else f for f in special]
    rejected = [{"batch": batch.batch_id, "file": f, "problem": NOT_REGULAR} for f in shown]
    for item in rejected:
        log.warning("task %s: batch %s: file %s quarantined: %s", spec.name, batch.batch_id, item["file"], NOT_REGULAR)
    return replace(batch, files=tuple(f for f in batch.files if f not in special)), rejected


def _labels_batch(
    spec: TaskSpec, root: DataRoot, warehouse: Warehouse, batch: LandedBatch, summary: IngestSummary
) -> bool:
    """Record a labels batch (every file holds only the id and label columns) in the ledger as ``labels``: no
    records, never validated or trained on; the monitoring of the predictions joins it to the cases scored. One
    that does not read as labels (blank or conflicting ones) is quarantined whole; one without any row is left
    to the reader (False), which says so as for any batch."""
    try:
        labels = read_labels_batch([batch.path / f for f in batch.files], spec.id, spec.label)
    except LabelsError as exc:
        refuse_batch(
            spec,
            root,
            warehouse,
            batch,
            f"a labels batch (only {spec.id!r} and {spec.label!r}) that cannot be used: {exc}",
            summary,
        )
        return True
    if labels.is_empty():
        return False
    if warehouse.add_batch(spec.name, _ledger_row(batch, LABELS_STATUS, labels.height, [spec.id, spec.label], None)):
        summary.labels.append(batch.batch_id)
    else:
        summary.skipped_known += 1
    return True


def _ingest_batch(
    spec: TaskSpec, root: DataRoot, warehouse: Warehouse, reader: Reader, batch: LandedBatch, summary: IngestSummary
) -> None:
    readable, set_aside = _set_aside_non_regular(spec, root, batch)
    if (
        not set_aside
        and is_labels_files([batch.path / f for f in batch.files], spec.id, spec.label)
        and _labels_batch(spec, root, warehouse, batch, summary)
    ):
        return
    try:
        if set_aside and not readable.files:
            raise BatchRejected(
                batch.batch_id, "holds no regular files (only FIFOs, sockets or devices)", {"rejected_files": set_aside}
            )
        outcome = _read(reader, readable, spec)
        found = [*outcome.rejected, *_unread(outcome, readable)]
        rejected = [*set_aside, *(_rejection(readable, f, p, outcome.moves_folders) for f, p in found)]
        if outcome.records.is_empty():
            raise BatchRejected(batch.batch_id, "holds no readable records", {"rejected_files": rejected})
        frame = outcome.records.with_columns(pl.lit(batch.batch_id).alias(BATCH_COLUMN))
        columns = [c for c in frame.columns if c != BATCH_COLUMN]
        reason = {"rejected_files": rejected} if rejected else None
        row = _ledger_row(batch, "read", frame.height, columns, reason, private_names(spec))
        appended = warehouse.append(spec.name, RAW_TABLE, frame, row)
    except BatchRejected as exc:
        reason = _reason("read", batch.batch_id, exc.file, exc.problem, **exc.details)
        if _quarantine(spec, root, warehouse, batch, reason):
            summary.quarantined += [*set_aside, {"batch": batch.batch_id, "file": exc.file, "problem": exc.problem}]
        return
    except (duckdb.IOException, OSError):
        raise  # the warehouse is unavailable (locked, disk full): fail the run, keep the batch for the next one
    except (duckdb.Error, Exception, PanicException) as exc:
        # A library's own message may quote a value: name the batch and the kind of failure only.
        problem = f"its records could not be stored in the warehouse ({type(exc).__name__}); nothing of it was kept"
        if _quarantine(spec, root, warehouse, batch, _reason("read", batch.batch_id, batch.batch_id, problem)):
            summary.quarantined.append({"batch": batch.batch_id, "file": batch.batch_id, "problem": problem})
        return
    if not appended:
        summary.skipped_known += 1  # another run took this batch between our ledger read and now
        return
    _quarantine_files(spec, root, batch, rejected[len(set_aside) :])
    summary.quarantined += rejected
    summary.ingested.append(batch.batch_id)
    summary.rows += frame.height


@dataclass
class ValidationSummary:
    validated: list[BatchKey] = field(default_factory=list)
    quarantined: list[dict] = field(default_factory=list)  # {batch, failures}
    records: dict[str, pl.DataFrame] = field(default_factory=dict)  # batch -> its validated rows (empty if none)


def label_domain_failures(
    domain: list[str] | None, spec: TaskSpec, frame: pl.DataFrame
) -> tuple[list[CheckFailure], list[str] | None]:
    """Labels of one batch outside the task's label domain, and the domain in force afterwards.

    The domain is ``spec.classes`` if given, else ``domain`` (recorded from the first validated batch), else
    fixed from this batch: a binary task needs ``positive`` plus exactly one other value. Values are compared
    through :func:`canonical_label`; a failure gives counts and the declared classes, never a value found in the
    data (a label outside the domain may be a name or date shifted in from another column).
    Multi-label tasks (``'|'``-joined finding indices) are checked by their own validator."""
    if spec.label not in frame.columns or (spec.image is not None and spec.image.multi_label):
        return [], domain
    counts: dict[str, int] = {}  # canonical label -> rows; distinct values are few, rows may be millions
    for value, n in frame[spec.label].drop_nulls().value_counts().iter_rows():
        label = canonical_label(value)
        if label is not None:
            counts[label] = counts.get(label, 0) + n
    seen = sorted(counts)
    fixed = [canonical_label(c) for c in spec.classes] if spec.classes else domain
    if fixed is None:
        return _first_domain(spec, seen)
    outside = [v for v in seen if v not in fixed]
    if not outside:
        return [], fixed
    count = sum(counts[v] for v in outside)
    source = "declared" if spec.classes else "fixed by the task's first validated batch"
    problem = (
        f"{count} rows hold labels outside the task's classes ({source}: {', '.join(fixed)}): "
        f"{len(outside)} distinct values"
    )
    return [CheckFailure("label_domain", spec.label, problem, count)], fixed


def _first_domain(spec: TaskSpec, seen: list[str]) -> tuple[list[CheckFailure], list[str] | None]:
    """Fix the domain from the first batch to validate; a binary task must bring its positive class and exactly
    one other value."""
    if not spec.is_binary:
        return (
            ([], seen)
            if len(seen) >= 2
            else (
                [
                    CheckFailure(
                        "label_domain",
                        spec.label,
                        f"the first batch must bring at least two label classes to fix the task's domain; found "
                        f"{len(seen)}; or declare 'classes' in the spec",
                    )
                ],
                None,
            )
        )
    positive = canonical_label(spec.positive)
    others = [v for v in seen if v != positive]
    if positive in seen and len(others) == 1:
        return [], sorted([positive, others[0]])
    found = f"it holds {'the positive class and ' if positive in seen else 'no positive class and '}{len(others)} other"
    problem = (
        f"a binary task needs its positive class {positive!r} and exactly one other label in the first "
        f"batch to fix its domain; {found} distinct values; or declare 'classes' in the spec"
    )
    return [CheckFailure("label_domain", spec.label, problem)], None


def validate_pending_batches(
    spec: TaskSpec, root: DataRoot, warehouse: Warehouse, validator: Validator
) -> tuple[pl.DataFrame, ValidationSummary]:
    """Validate every batch in state ``read``; return every validated row (all batches) and what happened."""
    pending = warehouse.ledger(spec.name).filter(pl.col("status") == "read")["batch_id"].to_list()
    summary = validate_batches(spec, root, warehouse, validator, pending)
    validated = warehouse.ledger(spec.name).filter(pl.col("status") == "validated")["batch_id"].to_list()
    return (warehouse.read(spec.name, RAW_TABLE, validated) if validated else pl.DataFrame()), summary


def _type_failures(frame: pl.DataFrame, reference: dict) -> list[CheckFailure]:
    """Column types follow the task's validated batches (the first good batch fixes an undeclared column)."""
    try:
        conform(frame, reference)
    except SchemaConflict as exc:
        return [CheckFailure("column_type", exc.column, str(exc))]
    return []


def _batch_failures(
    validator: Validator,
    frame: pl.DataFrame,
    spec: TaskSpec,
    known_ids: set[str],
    reference: dict,
    domain: list[str] | None,
) -> tuple[list[CheckFailure], list[str] | None]:
    failures = _type_failures(frame, reference)
    labels, domain_after = label_domain_failures(domain, spec, frame)
    try:
        failures += validator(frame, spec, known_ids)
    except Exception as exc:  # a validator that chokes on hostile values fails this batch, not the run
        failures.append(
            CheckFailure("validator", None, f"could not be evaluated: the checks failed with {type(exc).__name__}")
        )
    return failures + labels, domain_after


def validate_batches(
    spec: TaskSpec, root: DataRoot, warehouse: Warehouse, validator: Validator, batch_ids: list[BatchKey]
) -> ValidationSummary:
    """Validate the listed batches (one partition each) that are in state ``read``, in order, against what the
    task's batches validated before recorded (ids, column types, label domain); quarantine the failures.
    ``summary.records[b]``: batch ``b``'s validated rows, empty (no rows) when it is quarantined or unknown.
    One step at a time per task (its pool): validation reads what the earlier batches recorded."""
    ledger = warehouse.ledger(spec.name)
    rows = {r["batch_id"]: r for r in ledger.iter_rows(named=True)}
    validated = ledger.filter(pl.col("status") == "validated")["batch_id"].to_list()
    records = warehouse.read(spec.name, RAW_TABLE, validated) if validated else pl.DataFrame()
    known_ids = set(records[spec.id].cast(pl.String).to_list()) if spec.id in records.columns else set()
    reference = dict(records.schema)  # the column types of the validated batches; the earliest batch wins
    recorded = warehouse.state(spec.name, LABEL_DOMAIN_KEY)
    domain = json.loads(recorded) if recorded else None
    summary = ValidationSummary()
    for batch_id in batch_ids:
        row = rows.get(batch_id)
        summary.records[batch_id] = pl.DataFrame(schema=records.schema)
        if row is None or row["status"] in ("quarantined", LABELS_STATUS):
            continue
        stored = warehouse.read(spec.name, RAW_TABLE, [batch_id])  # its columns and the batch column
        if row["status"] == "validated":
            summary.records[batch_id] = stored
            continue
        frame = stored.select(json.loads(row["columns"]))
        failures, domain_after = _batch_failures(validator, frame, spec, known_ids, reference, domain)
        if failures:
            batch = LandedBatch(
                spec.name,
                batch_id,
                root.landing(spec.landing_folder) / batch_id,
                tuple(json.loads(row["files"])),
                row["content_hash"],
                0,
            )
            reason = _reason(
                "validate", batch_id, batch_id, "failed validation", failures=[f.as_dict() for f in failures]
            )
            _quarantine(spec, root, warehouse, batch, reason, new=False)
            summary.quarantined.append({"batch": batch_id, "failures": [f.as_dict() for f in failures]})
            continue
        if domain is None and domain_after is not None and not spec.classes:
            domain = json.loads(warehouse.set_state_once(spec.name, LABEL_DOMAIN_KEY, json.dumps(domain_after)))
        kept = json.loads(row["reason"]) if row["reason"] else None  # files rejected at read stay counted
        warehouse.set_status(spec.name, batch_id, "validated", kept)
        known_ids |= set(frame[spec.id].cast(pl.String).to_list())
        reference = {**dict(frame.schema), **reference}
        summary.validated.append(batch_id)
        summary.records[batch_id] = stored
    return summary


def why_no_records(spec: TaskSpec, root: DataRoot, warehouse: Warehouse) -> str:
    """Why a task has no validated rows, in plain words: batches waiting for their marker, quarantined batches
    with their reasons (file and problem, never record content), or an empty landing folder."""
    parts = [
        f"{batch_key(d)} {waiting_reason(spec.landing)}"
        for d in waiting_batch_dirs(root.landing(spec.landing_folder), spec.landing)
    ]
    for row in warehouse.ledger(spec.name).filter(pl.col("status") == "quarantined").iter_rows(named=True):
        parts.append(
            f"{row['batch_id']} was quarantined: {_reason_text(json.loads(row['reason']) if row['reason'] else {})}"
        )
    for batch_id in warehouse.ledger(spec.name).filter(pl.col("status") == LABELS_STATUS)["batch_id"].to_list():
        parts.append(f"{batch_id} is a labels batch (ids and labels of cases already scored), not records")
    if not parts:
        parts.append(f"no complete batch has landed in landing/{spec.landing_folder}/ yet")
    return "no validated rows: " + "; ".join(parts)


def _reason_text(reason: dict) -> str:
    failures = reason.get("failures") or []
    if failures:
        return ", ".join(f"{f.get('column') or f.get('expectation')}: {f.get('problem')}" for f in failures[:5])
    return f"{reason.get('file')}: {reason.get('problem')}"


def reconcile(spec: TaskSpec, warehouse: Warehouse) -> dict[str, int]:
    """Counts by ledger state: every landed batch is in exactly one, and every landed file was either
    ingested or quarantined (``landed_files == ingested_files + quarantined_files``)."""
    ledger = warehouse.ledger(spec.name)
    counts = {"landed_batches": ledger.height, "landed_rows": int(ledger["n_rows"].sum() or 0)}
    landed_files = quarantined_files = 0
    for row in ledger.iter_rows(named=True):
        files = len(json.loads(row["files"]))
        landed_files += files
        if row["status"] == "quarantined":
            quarantined_files += files
        elif row["reason"]:
            rejected = json.loads(row["reason"]).get("rejected_files", [])
            quarantined_files += sum(r.get("folder_files", 1) for r in rejected)  # a series folder: its files
    counts.update(
        landed_files=landed_files, quarantined_files=quarantined_files, ingested_files=landed_files - quarantined_files
    )
    for status in ("read", "validated", "quarantined", LABELS_STATUS):
        part = ledger.filter(pl.col("status") == status)
        counts[f"{status}_batches"] = part.height
        counts[f"{status}_rows"] = int(part["n_rows"].sum() or 0)
    return counts
