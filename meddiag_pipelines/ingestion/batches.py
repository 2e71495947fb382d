"""Batch bookkeeping shared by every modality: read new batches once, validate them, quarantine failures.

Each landed batch ends in exactly one ledger state: ``read`` (waiting for validation), ``validated`` or
``quarantined`` (moved to ``<data>/quarantine/<task>/`` with a ``reason.json``). :func:`reconcile` proves
that every landed batch is accounted for.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import duckdb
import polars as pl
from polars.exceptions import PanicException

from meddiag_pipelines.ingestion.errors import BatchRejected
from meddiag_pipelines.ingestion.landing import (
    BATCH_COLUMN,
    INGESTED_MARKER,
    LandedBatch,
    UnsafePath,
    confined_file,
    describe_batch,
    display_name,
    ready_batch_dirs,
)
from meddiag_pipelines.ingestion.quarantine import quarantine_path
from meddiag_pipelines.ingestion.warehouse import SchemaConflict, Warehouse
from meddiag_pipelines.layout import DataLayout
from meddiag_pipelines.specs import TaskSpec
from meddiag_pipelines.validation.suites import CheckFailure

log = logging.getLogger(__name__)
RAW_TABLE = "raw_records"



@dataclass
class ReadOutcome:
    """What a reader returns when one file, not the whole batch, is the unit of rejection (images, texts)."""

    records: pl.DataFrame
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (file relative to the batch, problem)


Reader = Callable[[LandedBatch, TaskSpec], pl.DataFrame | ReadOutcome]
Validator = Callable[[pl.DataFrame, TaskSpec, set[str]], list[CheckFailure]]


@dataclass
class IngestSummary:
    ingested: list[str] = field(default_factory=list)
    quarantined: list[dict] = field(default_factory=list)  # {batch, file, problem}: whole batches or single files
    rows: int = 0
    skipped_known: int = 0


def _reason(stage: str, batch: str, file: str, problem: str, **extra) -> dict:
    return {"stage": stage, "batch": batch, "file": file, "problem": problem, "at": time.time(), **extra}


def _quarantine(spec: TaskSpec, layout: DataLayout, warehouse: Warehouse, batch: LandedBatch, reason: dict,
                n_rows: int, columns: list[str], *, new: bool = True) -> bool:  # fmt: skip
    """Ledger first, then the move: a crash in between leaves a ledger entry whose folder is still in landing,
    and the next run finishes the move (:func:`_finish_interrupted`). ``False`` if another run recorded the
    batch first (then it is theirs to move)."""
    args = (spec.name, batch.batch_id, batch.content_hash, "quarantined", n_rows, list(batch.files), columns, reason)
    if new:
        if not warehouse.add_batch(*args):
            return False
    else:
        warehouse.set_batch_status(*args)
    quarantine_path(batch.path, layout.quarantine(spec.name), reason, name=batch.batch_id)
    log.warning("task %s: batch %s quarantined: %s: %s", spec.name, batch.batch_id, reason["file"], reason["problem"])
    return True


def _quarantine_files(spec: TaskSpec, layout: DataLayout, batch: LandedBatch, rejected: list[dict]) -> None:
    """Move each rejected file (not its batch) to ``quarantine/<task>/<batch>/<file>/`` with its reason.

    A rejection's ``file`` comes from data (a labels.csv row may name ``../../warehouse/x`` or an absolute
    path): only a file this batch's own listing found, still a regular file inside the batch, is ever moved;
    any other name stays a rejected row with its reason, never a file operation."""
    listed = set(batch.files)
    for item in rejected:
        rel = item["file"]
        if rel in listed and _movable(batch.path, rel):
            reason = _reason("read", batch.batch_id, rel, item["problem"])
            quarantine_path(batch.path / rel, layout.quarantine(spec.name) / batch.batch_id / Path(rel).parent, reason)
        log.warning("task %s: batch %s: file %s quarantined: %s", spec.name, batch.batch_id, rel, item["problem"])


def _movable(batch_dir: Path, rel: str) -> bool:
    """``rel`` is a confined regular file, or a link whose parent folders are real folders of the batch (a
    link is moved as the link, never followed)."""
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts:
        return False
    parent = batch_dir
    for part in pure.parts[:-1]:
        parent = parent / part
        if parent.is_symlink() or not parent.is_dir():
            return False
    if (parent / pure.name).is_symlink():
        return True
    try:
        confined_file(batch_dir, rel)
    except UnsafePath:
        return False
    return True


def _finish_interrupted(spec: TaskSpec, layout: DataLayout, batch_dir: Path, row: dict, summary: IngestSummary) -> None:
    """A known batch still in landing: finish what a crashed run began (moving a quarantined batch or its
    rejected files), or quarantine a different export re-landed under the name of a quarantined batch."""
    reason = json.loads(row["reason"]) if row["reason"] else {}
    if row["status"] == "quarantined":
        batch = describe_batch(spec.name, batch_dir)
        if batch.content_hash != row["content_hash"]:
            reason = _reason("read", batch.batch_id, batch.batch_id, "was landed again, with different content, under "
                             "the name of a batch already quarantined; land the corrected export under a new name")  # fmt: skip
            summary.quarantined.append({"batch": batch.batch_id, "file": batch.batch_id, "problem": reason["problem"]})
        quarantine_path(batch_dir, layout.quarantine(spec.name), reason, name=row["batch_id"])
        log.warning("task %s: batch %s moved to quarantine: %s", spec.name, row["batch_id"], reason.get("problem"))
        return
    pending = [r for r in reason.get("rejected_files", []) if _movable(batch_dir, r["file"])]
    if pending:
        batch = LandedBatch(spec.name, row["batch_id"], batch_dir, tuple(json.loads(row["files"])), row["content_hash"], 0)
        _quarantine_files(spec, layout, batch, pending)


def _describe(spec: TaskSpec, layout: DataLayout, batch_dir: Path) -> LandedBatch:
    """Describe a landed batch, or refuse it (as a batch without files) when its folder is unsafe to read."""
    if batch_dir.is_symlink():
        raise _Refused(describe_batch(spec.name, batch_dir), "is a symbolic link; a batch must be a real folder "
                       "in the landing area (links are never followed)")  # fmt: skip
    shown = display_name(batch_dir.name)
    if shown != batch_dir.name:
        bare = LandedBatch(spec.name, shown, batch_dir, (), hashlib.sha256(os.fsencode(batch_dir.name)).hexdigest(), 0)
        raise _Refused(bare, "has a folder name that is not valid UTF-8 or holds control characters; rename it")
    layout.confine(batch_dir)
    try:
        return describe_batch(spec.name, batch_dir)
    except OSError as exc:
        bare = LandedBatch(spec.name, shown, batch_dir, (), hashlib.sha256(os.fsencode(batch_dir.name)).hexdigest(), 0)
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
        raise BatchRejected(batch.batch_id, f"could not be read: the reader failed with {type(exc).__name__}") from exc
    return outcome if isinstance(outcome, ReadOutcome) else ReadOutcome(outcome)


def ingest_new_batches(spec: TaskSpec, layout: DataLayout, warehouse: Warehouse, reader: Reader) -> IngestSummary:
    """Read every ready batch not yet in the ledger, append it to the raw table, or quarantine it.

    One run at a time per task (:meth:`Warehouse.task_lock`); a batch's rows and its ledger entry are written in
    one transaction, so a batch is appended once even if two runs race or one is killed half-way."""
    task_landing = layout.landing(spec.name)
    if task_landing.exists():
        layout.confine(task_landing)  # a landing folder that is a link out of the data root is a setup error
    with warehouse.task_lock(spec.name):
        return _ingest(spec, layout, warehouse, reader)


def _mark_ingested(batch_dir: Path) -> None:
    """A marker beside ``_READY`` (not data: names starting with '_' are never read or hashed) that tells the
    landing sensor, without opening the warehouse, that this batch needs no run."""
    if batch_dir.is_dir() and not batch_dir.is_symlink():
        (batch_dir / INGESTED_MARKER).touch()


def _ingest(spec: TaskSpec, layout: DataLayout, warehouse: Warehouse, reader: Reader) -> IngestSummary:
    known = {r["batch_id"]: r for r in warehouse.ledger(spec.name).iter_rows(named=True)}
    summary = IngestSummary()
    for batch_dir in ready_batch_dirs(layout.landing(spec.name), spec.landing):
        shown = display_name(batch_dir.name)
        if shown in known:
            summary.skipped_known += 1
            _finish_interrupted(spec, layout, batch_dir, known[shown], summary)
            _mark_ingested(batch_dir)
            continue
        try:
            batch = _describe(spec, layout, batch_dir)
        except _Refused as exc:
            reason = _reason("read", exc.batch.batch_id, exc.batch.batch_id, exc.problem)
            if _quarantine(spec, layout, warehouse, exc.batch, reason, 0, []):
                summary.quarantined.append({"batch": exc.batch.batch_id, "file": exc.batch.batch_id, "problem": exc.problem})
            continue
        try:
            outcome = _read(reader, batch, spec)
            if outcome.records.is_empty():
                raise BatchRejected(batch.batch_id, "holds no readable records",
                                    {"rejected_files": [{"file": f, "problem": p} for f, p in outcome.rejected]})  # fmt: skip
            frame = outcome.records.with_columns(pl.lit(batch.batch_id).alias(BATCH_COLUMN))
            rejected = [{"batch": batch.batch_id, "file": f, "problem": p} for f, p in outcome.rejected]
            columns = [c for c in frame.columns if c != BATCH_COLUMN]
            ledger_row = {"batch_id": batch.batch_id, "content_hash": batch.content_hash, "status": "read",
                          "n_rows": frame.height, "files": list(batch.files), "columns": columns,
                          "reason": {"rejected_files": rejected} if rejected else None}  # fmt: skip
            appended = warehouse.append(spec.name, RAW_TABLE, frame, ledger_row)
        except BatchRejected as exc:
            reason = _reason("read", batch.batch_id, exc.file, exc.problem, **exc.details)
            if _quarantine(spec, layout, warehouse, batch, reason, 0, []):
                summary.quarantined.append({"batch": batch.batch_id, "file": exc.file, "problem": exc.problem})
            continue
        except duckdb.IOException:
            raise  # the warehouse is unavailable (locked, disk): fail the run, keep the batch for the next one
        except (SchemaConflict, duckdb.Error, Exception, PanicException) as exc:
            # DuckDB's own message may quote a value; only our SchemaConflict text is safe to keep.
            detail = str(exc) if isinstance(exc, SchemaConflict) else type(exc).__name__
            problem = f"does not match the columns of earlier batches of this task: {detail}"
            if _quarantine(spec, layout, warehouse, batch, _reason("read", batch.batch_id, batch.batch_id, problem), 0, []):
                summary.quarantined.append({"batch": batch.batch_id, "file": batch.batch_id, "problem": problem})
            continue
        if not appended:
            summary.skipped_known += 1  # another run took this batch between our ledger read and now
            continue
        _quarantine_files(spec, layout, batch, rejected)
        _mark_ingested(batch_dir)
        summary.quarantined += rejected
        summary.ingested.append(batch.batch_id)
        summary.rows += frame.height
    return summary


@dataclass
class ValidationSummary:
    validated: list[str] = field(default_factory=list)
    quarantined: list[dict] = field(default_factory=list)  # {batch, failures}


def validate_pending_batches(spec: TaskSpec, layout: DataLayout, warehouse: Warehouse, validator: Validator
                             ) -> tuple[pl.DataFrame, ValidationSummary]:  # fmt: skip
    """Validate batches in state ``read``; return every validated row (all batches) and what happened."""
    with warehouse.task_lock(spec.name):
        return _validate(spec, layout, warehouse, validator)


def _validate(spec: TaskSpec, layout: DataLayout, warehouse: Warehouse, validator: Validator
              ) -> tuple[pl.DataFrame, ValidationSummary]:  # fmt: skip
    ledger = warehouse.ledger(spec.name)
    validated = ledger.filter(pl.col("status") == "validated")["batch_id"].to_list()
    known_ids: set[str] = set()
    if validated:
        known_ids = set(warehouse.read(spec.name, RAW_TABLE, validated)[spec.id].cast(pl.String).to_list())
    summary = ValidationSummary()
    for row in ledger.filter(pl.col("status") == "read").iter_rows(named=True):
        batch_id = row["batch_id"]
        # The raw table is the union of every batch's columns: look at this batch's own columns only.
        columns = json.loads(row["columns"])
        frame = warehouse.read(spec.name, RAW_TABLE, [batch_id]).select(columns)
        try:
            failures = validator(frame, spec, known_ids)
        except Exception as exc:  # a validator that chokes on hostile values fails this batch, not the run
            failures = [CheckFailure("validator", None, f"could not be evaluated: {type(exc).__name__}")]
        files = json.loads(row["files"])
        if failures:
            batch = LandedBatch(spec.name, batch_id, layout.landing(spec.name) / batch_id, tuple(files), row["content_hash"], 0)
            reason = _reason("validate", batch_id, batch_id, "failed validation", failures=[f.as_dict() for f in failures])
            _quarantine(spec, layout, warehouse, batch, reason, row["n_rows"], columns, new=False)
            summary.quarantined.append({"batch": batch_id, "failures": [f.as_dict() for f in failures]})
            continue
        kept = json.loads(row["reason"]) if row["reason"] else None  # files rejected at read stay counted
        warehouse.set_batch_status(spec.name, batch_id, row["content_hash"], "validated", row["n_rows"], files, columns, kept)
        known_ids |= set(frame[spec.id].cast(pl.String).to_list())
        summary.validated.append(batch_id)
        validated.append(batch_id)
    records = warehouse.read(spec.name, RAW_TABLE, validated) if validated else pl.DataFrame()
    return records, summary


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
            quarantined_files += len(json.loads(row["reason"]).get("rejected_files", []))
    counts.update(landed_files=landed_files, quarantined_files=quarantined_files,
                  ingested_files=landed_files - quarantined_files)  # fmt: skip
    for status in ("read", "validated", "quarantined"):
        part = ledger.filter(pl.col("status") == status)
        counts[f"{status}_batches"] = part.height
        counts[f"{status}_rows"] = int(part["n_rows"].sum() or 0)
    return counts
