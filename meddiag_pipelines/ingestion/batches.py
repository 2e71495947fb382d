"""Batch bookkeeping shared by every modality: read new batches once, validate them, quarantine failures.

Each landed batch ends in exactly one ledger state: ``read`` (waiting for validation), ``validated`` or
``quarantined`` (moved to ``<data>/quarantine/<task>/`` with a ``reason.json``). :func:`reconcile` proves
that every landed batch is accounted for.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import polars as pl

from meddiag_pipelines.ingestion.errors import BatchRejected
from meddiag_pipelines.ingestion.landing import BATCH_COLUMN, LandedBatch, describe_batch, ready_batch_dirs
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
                n_rows: int, columns: list[str]) -> None:  # fmt: skip
    quarantine_path(batch.path, layout.quarantine(spec.name), reason)
    warehouse.set_batch_status(spec.name, batch.batch_id, batch.content_hash, "quarantined", n_rows,
                               list(batch.files), columns, reason)  # fmt: skip
    log.warning("task %s: batch %s quarantined: %s: %s", spec.name, batch.batch_id, reason["file"], reason["problem"])


def _quarantine_files(spec: TaskSpec, layout: DataLayout, batch: LandedBatch, rejected: list[tuple[str, str]]) -> list[dict]:
    """Move each rejected file (not its batch) to ``quarantine/<task>/<batch>/<file>/`` with its reason."""
    moved = []
    for rel, problem in rejected:
        source = batch.path / rel
        if source.exists() or source.is_symlink():
            reason = _reason("read", batch.batch_id, rel, problem)
            quarantine_path(source, layout.quarantine(spec.name) / batch.batch_id / Path(rel).parent, reason)
        log.warning("task %s: batch %s: file %s quarantined: %s", spec.name, batch.batch_id, rel, problem)
        moved.append({"batch": batch.batch_id, "file": rel, "problem": problem})
    return moved


def ingest_new_batches(spec: TaskSpec, layout: DataLayout, warehouse: Warehouse, reader: Reader) -> IngestSummary:
    """Read every ready batch not yet in the ledger, append it to the raw table, or quarantine it."""
    known = set(warehouse.ledger(spec.name)["batch_id"].to_list())
    summary = IngestSummary()
    for batch_dir in ready_batch_dirs(layout.landing(spec.name), spec.landing):
        if batch_dir.name in known:
            summary.skipped_known += 1
            continue
        batch = describe_batch(spec.name, batch_dir)
        try:
            outcome = reader(batch, spec)
            outcome = outcome if isinstance(outcome, ReadOutcome) else ReadOutcome(outcome)
            if outcome.records.is_empty():
                raise BatchRejected(batch.batch_id, "holds no readable records", {"rejected_files": outcome.rejected})
            frame = outcome.records.with_columns(pl.lit(batch.batch_id).alias(BATCH_COLUMN))
            warehouse.append(spec.name, RAW_TABLE, frame)
        except BatchRejected as exc:
            reason = _reason("read", batch.batch_id, exc.file, exc.problem, **exc.details)
            _quarantine(spec, layout, warehouse, batch, reason, 0, [])
            summary.quarantined.append({"batch": batch.batch_id, "file": exc.file, "problem": exc.problem})
            continue
        except (SchemaConflict, duckdb.Error) as exc:
            # DuckDB's own message may quote a value; only our SchemaConflict text is safe to keep.
            detail = str(exc) if isinstance(exc, SchemaConflict) else type(exc).__name__
            problem = f"does not match the columns of earlier batches of this task: {detail}"
            _quarantine(spec, layout, warehouse, batch, _reason("read", batch.batch_id, batch.batch_id, problem), 0, [])
            summary.quarantined.append({"batch": batch.batch_id, "file": batch.batch_id, "problem": problem})
            continue
        rejected = _quarantine_files(spec, layout, batch, outcome.rejected)
        summary.quarantined += rejected
        columns = [c for c in frame.columns if c != BATCH_COLUMN]
        warehouse.set_batch_status(spec.name, batch.batch_id, batch.content_hash, "read", frame.height,
                                   list(batch.files), columns, {"rejected_files": rejected} if rejected else None)  # fmt: skip
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
        failures = validator(frame, spec, known_ids)
        files = json.loads(row["files"])
        if failures:
            batch = LandedBatch(spec.name, batch_id, layout.landing(spec.name) / batch_id, tuple(files), row["content_hash"], 0)
            reason = _reason("validate", batch_id, batch_id, "failed validation", failures=[f.as_dict() for f in failures])
            _quarantine(spec, layout, warehouse, batch, reason, row["n_rows"], columns)
            summary.quarantined.append({"batch": batch_id, "failures": [f.as_dict() for f in failures]})
            continue
        warehouse.set_batch_status(spec.name, batch_id, row["content_hash"], "validated", row["n_rows"], files, columns, None)
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
