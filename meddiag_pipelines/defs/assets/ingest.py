"""Wiring of ingestion shared by every modality: raw_records and validated_records are partitioned by batch
(:func:`batch_partitions`); one run may take many partitions (single-run backfill policy), each handled by the
pure per-batch functions of ``ingestion/batches.py``."""

from collections.abc import Callable

import dagster as dg
import polars as pl

from meddiag_pipelines.defs.assets.common import markdown_table, pool
from meddiag_pipelines.defs.partitions import batch_partitions
from meddiag_pipelines.defs.resources.storage import MeddiagStorage
from meddiag_pipelines.ingestion.batches import (
    IngestSummary,
    Reader,
    ValidationSummary,
    Validator,
    ingest_batches,
    reconcile,
    validate_batches,
    why_no_records,
)
from meddiag_pipelines.ingestion.landing import waiting_reason
from meddiag_pipelines.markup import escape_markdown
from meddiag_pipelines.specs import TaskSpec


def partitioned(spec: TaskSpec) -> dict:
    """The partitioning of every batch-level asset: one run may take many new batches."""
    return {"partitions_def": batch_partitions(spec), "backfill_policy": dg.BackfillPolicy.single_run()}


def ingest_partitions(
    context: dg.AssetExecutionContext, spec: TaskSpec, storage: MeddiagStorage, reader: Reader
) -> dg.MaterializeResult:
    """raw_records of the run's partitions: each batch read once (its records written once, content-named)."""
    summary = ingest_batches(spec, storage.root, storage.warehouse, reader, sorted(context.partition_keys))
    return ingest_result(context, spec, storage, summary)


# -- ingestion metadata ---------------------------------------------------------------------------------------
def ingest_result(context, spec: TaskSpec, storage: MeddiagStorage, summary: IngestSummary) -> dg.MaterializeResult:
    for q in summary.quarantined:
        context.log.warning(f"{spec.name}: batch {q['batch']} quarantined: {q['file']}: {q['problem']}")
    for c in summary.changed:
        context.log.warning(
            f"{spec.name}: batch {c['batch']} changed after it was ingested ({c['added']} files added, "
            f"{c['changed']} changed, {c['removed']} removed): set aside in quarantine, its rows "
            "already ingested stay; land the new rows as a new batch"
        )
    for batch in summary.labels:
        context.log.info(
            f"{spec.name}: batch {batch} holds only ids and labels: a labels batch for cases already "
            "scored (monitoring), not records"
        )
    waiting = [f"{b} {waiting_reason(spec.landing)}" for b in summary.waiting]
    for line in waiting:
        context.log.info(f"{spec.name}: batch {line}")
    counts = reconcile(spec, storage.warehouse)
    return dg.MaterializeResult(
        metadata={
            "new_batches": len(summary.ingested),
            "new_rows": summary.rows,
            "quarantined_now": len(summary.quarantined),
            "already_ingested": summary.skipped_known,
            "changed_batches": len(summary.changed),
            "waiting_batches": len(summary.waiting),
            "labels_batches_now": len(summary.labels),
            **counts,
            "quarantined": dg.MetadataValue.md(markdown_table(summary.quarantined)),
            "changed": dg.MetadataValue.md(markdown_table(summary.changed)),
            "waiting": dg.MetadataValue.md("\n".join(f"- {escape_markdown(line)}" for line in waiting) or "_none_"),
        }
    )


def log_validation(context, spec: TaskSpec, summary: ValidationSummary) -> None:
    for q in summary.quarantined:
        problems = "; ".join(f"{f['column'] or f['expectation']}: {f['problem']}" for f in q["failures"])
        context.log.warning(f"{spec.name}: batch {q['batch']} failed validation and was quarantined: {problems}")


def validation_metadata(
    spec: TaskSpec, storage: MeddiagStorage, records: pl.DataFrame, summary: ValidationSummary
) -> dict:
    counts = reconcile(spec, storage.warehouse)
    labelled = records.filter(pl.col(spec.label).is_not_null()).height if spec.label in records.columns else 0
    meta = {
        "labelled_rows": labelled,
        "unlabelled_rows": records.height - labelled,
        "validated_now": len(summary.validated),
        "quarantined_now": len(summary.quarantined),
        **counts,
    }
    if records.is_empty():
        meta["why_empty"] = why_no_records(spec, storage.root, storage.warehouse)
    return meta


def build_validated_records_asset(
    spec: TaskSpec, raw_records, tags: dict, description: str, make_validator: Callable[[MeddiagStorage], Validator]
):
    """The validated_records asset of any modality, per partition: validate the run's batches still to validate,
    quarantine failures, return their validated rows (one frame, split per partition by the IO manager; a
    quarantined batch has no rows). ``make_validator(storage)`` builds the modality's validator, which may look at
    earlier batches through the storage."""

    @dg.asset(
        key=[spec.name, "validated_records"],
        deps=[raw_records],
        io_manager_key="warehouse_io_manager",
        description=f"{spec.name}: {description}",
        kinds={"duckdb", "polars", "great_expectations"},
        pool=pool(spec),
        **partitioned(spec),
        **tags,
    )
    def validated_records(context: dg.AssetExecutionContext, storage: MeddiagStorage) -> pl.DataFrame:
        keys = sorted(context.partition_keys)
        summary = validate_batches(spec, storage.root, storage.warehouse, make_validator(storage), keys)
        log_validation(context, spec, summary)
        records = pl.concat([summary.records[k] for k in keys], how="diagonal_relaxed")
        for key in keys:
            context.log_event(
                dg.AssetObservation(
                    asset_key=context.asset_key, partition=key, metadata={"status": partition_status(summary, key)}
                )
            )
        meta = validation_metadata(spec, storage, records, summary)
        if "why_empty" in meta:
            context.log.warning(f"{spec.name}: {meta['why_empty']}")
        context.add_output_metadata(meta)
        return records

    return validated_records


def partition_status(summary: ValidationSummary, key: str) -> str:
    """validated or quarantined (a batch refused at read, or failing validation now or before)."""
    return "validated" if not summary.records[key].is_empty() else "quarantined"


def check_partitions(spec: TaskSpec) -> dict:
    """A check of a batch-level asset runs per partition, with that asset."""
    return {"partitions_def": batch_partitions(spec)}


def no_validated_rows_result(spec: TaskSpec, storage: MeddiagStorage) -> dg.AssetCheckResult:
    """The run's batches were all quarantined: a warning that says why (their reasons), not a failed run,
    since quarantine is how a bad batch is handled."""
    return dg.AssetCheckResult(
        passed=False,
        severity=dg.AssetCheckSeverity.WARN,
        description=why_no_records(spec, storage.root, storage.warehouse),
        metadata={"status": "quarantined"},
    )
