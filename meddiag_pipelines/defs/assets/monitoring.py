"""Watching the champion in use (issue 28), wired into the lifecycle of every modality: the work that the
``evaluation`` and ``predictions`` assets do with :mod:`meddiag_pipelines.monitoring`, and the checks they report.

* ``evaluation`` freezes the candidate's monitoring reference (its training rows' monitored features, its
  validation predictions and, where the modality embeds (``Modality.embed``), the model's own embeddings of a
  seeded sample of its validation rows) into its staging folder, so it is published with the version and never
  recomputed; each scored batch's embeddings (of a seeded sample of it) are tested against those. Validation
  rows, not training rows: a learned embedding sets the rows it was fitted to apart from new ones (the
  fastText-style text model's training rows drifted from unseen notes of the same chapters at p 0.002, its
  held-out rows did not), so only rows the model never trained on are a reference for new cases.
* ``predictions`` refuses a batch to score that lacks a column the champion was trained with (a blocking ERROR
  check: that batch is not scored with that champion), records the drift and the estimated performance of each
  batch it scores in ``reports/<task>/monitoring.json`` (drift: a WARN check), joins labels batches to the
  prediction files (realised performance; a breach of the gate's criteria: an ERROR check, no more scoring with
  that version, and a retrain requested by the task's breach sensor), and renders ``monitoring.html``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import dagster as dg
import polars as pl

from meddiag_pipelines.defs.resources.storage import MeddiagStorage
from meddiag_pipelines.ingestion.batches import LABELS_STATUS, RAW_TABLE
from meddiag_pipelines.ingestion.landing import BatchKey, display_name
from meddiag_pipelines.labels import task_kind
from meddiag_pipelines.modalities.base import Embedder, Explainer, PredictorFactory
from meddiag_pipelines.monitoring.change_control import (
    change_control_markdown,
    change_control_plan,
)
from meddiag_pipelines.monitoring.drift import SchemaError, batch_drift, check_schema
from meddiag_pipelines.monitoring.estimate import estimate_performance
from meddiag_pipelines.monitoring.labels import (
    LabelsError,
    breach_checks,
    read_labels_batch,
    realised_performance,
)
from meddiag_pipelines.monitoring.record import (
    MONITORING_HTML,
    append_entry,
    monitoring_entry,
    monitoring_rel,
    read_monitoring,
    record_realised,
    write_monitoring_report,
)
from meddiag_pipelines.monitoring.reference import (
    EMBEDDING_ROWS,
    REFERENCE_DIR,
    Reference,
    build_reference,
    freeze_reference,
    load_reference,
    sample_rows,
    task_feature_types,
)
from meddiag_pipelines.scoring import (
    ScoringSummary,
    prediction_frame,
    prediction_path,
    score_unlabelled,
)
from meddiag_pipelines.specs import BATCH_COLUMN, TaskSpec
from meddiag_pipelines.split import SPLIT_COLUMN
from meddiag_pipelines.storage import open_plan

log = logging.getLogger(__name__)
DRIFT_CHECK, SCHEMA_CHECK, REALISED_CHECK = "batch_drift", "batch_schema", "realised_performance"
# Scoring (and with it monitoring) is expected at least weekly; a feed that stopped shows as late, then overdue.
PREDICTIONS_FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=timedelta(days=7), warn_window=timedelta(days=2))


# -- the reference, frozen at evaluation ----------------------------------------------------------------------
def freeze_candidate_reference(
    spec: TaskSpec,
    storage: MeddiagStorage,
    split: pl.DataFrame,
    candidate: dict,
    val_rows: pl.DataFrame,
    val_proba,
    embed: Embedder | None = None,
) -> None:
    """Freeze the candidate's reference into its staging folder (before ``champion`` publishes it); a version
    already published, or a reference already frozen, is left as it is. What happened is logged, with its cost."""
    started = time.perf_counter()
    registry, version = storage.registry, candidate["version"]
    if registry.published(spec.name, version):
        note = "not rewritten: the version is published with it"
    else:
        train = split.filter(pl.col(SPLIT_COLUMN) == "train")
        reference = build_reference(
            spec.name,
            version,
            task_kind(spec),
            candidate["classes"],
            train,
            task_feature_types(spec, train),
            prediction_frame(spec, val_rows, val_proba, candidate["classes"]),
            embedded_sample(embed, Path(candidate["dir"]), candidate["plan"], val_rows, spec.evaluation.seed),
            seed=spec.evaluation.seed,
        )
        note = _frozen_note(registry.staging_dir(spec.name, version), reference)
    log.info("%s %s: monitoring reference %s (%.2f s)", spec.name, version, note, time.perf_counter() - started)


def _frozen_note(staged: Path, reference: Reference) -> str:
    """Freeze ``reference`` into ``staged``; what happened, in words (never a record's content)."""
    try:
        freeze_reference(staged, reference)
    except FileExistsError:
        return "not rewritten: frozen by an earlier evaluation of this candidate"
    embedded = "" if reference.embeddings is None else f", {reference.embeddings.shape[0]} validation embeddings"
    return (
        f"frozen: {len(reference.types)} monitored column(s), {reference.predictions.height} validation predictions"
        f"{embedded}"
    )


def embedded_sample(embed: Embedder | None, model_dir, plan: dict, rows: pl.DataFrame, seed: int):
    """The model's embeddings of a seeded sample of at most ``EMBEDDING_ROWS`` of ``rows`` (None: no ``embed``,
    or the modality does not embed)."""
    if embed is None or rows.is_empty():
        return None
    return embed(model_dir, plan, rows[sample_rows(rows.height, EMBEDDING_ROWS, seed)])


def card_with_plan(spec: TaskSpec, storage: MeddiagStorage, card: str) -> str:
    """The model card with its "Change-control plan" section (the gate's criteria, retrain data and triggers,
    the sequestered test data, monitoring, and the change log of the versions published before this one)."""
    plan = change_control_markdown(change_control_plan(spec, storage.registry), level=2)
    return f"{card.rstrip()}\n\n{plan}"


# -- per scored batch -----------------------------------------------------------------------------------------
@dataclass
class MonitoringOutcome:
    """What one run of ``predictions`` found: batches refused (schema), entries recorded, labels joined."""

    reference_note: str = ""
    refused: dict[BatchKey, str] = field(default_factory=dict)  # refused now: batch -> the problem (columns only)
    unscored: int = 0  # batches to score that the champion's schema refuses (now or before)
    drifted: list[BatchKey] = field(default_factory=list)
    recorded: list[BatchKey] = field(default_factory=list)
    realised: list[dict] = field(default_factory=list)  # {batch, model_version, metric, value, breach, reasons}
    labels_problems: list[str] = field(default_factory=list)


def champion_reference(storage: MeddiagStorage, task: str) -> tuple[str | None, Reference | None, str]:
    """(champion version, its frozen reference or None, a note on why none). A reference changed after freezing
    is refused (``ReferenceError``), never used."""
    pointer = storage.registry.champion(task)
    if pointer is None:
        return None, None, "no champion yet"
    version = pointer["version"]
    if not storage.root.exists(f"{storage.registry.version_rel(task, version)}/{REFERENCE_DIR}/reference.json"):
        return version, None, f"{version} was published without a monitoring reference: drift not computed"
    return version, load_reference(storage.registry.version_dir(task, version)), ""


def rows_to_check(
    spec: TaskSpec, storage: MeddiagStorage, rows: pl.DataFrame, batches: list[BatchKey], partitioned: bool
) -> dict[BatchKey, pl.DataFrame]:
    """Each batch's rows to score with only the batch's own columns, as the ledger recorded them at reading (the
    warehouse's table holds the union of every batch's columns, so a column one batch lacks reads there as
    empty): the validated ``batches`` from ``rows``, and the batches quarantined at validation (those among
    ``batches`` in a partitioned run, else all) from their records as read."""
    warehouse, task = storage.warehouse, spec.name
    found = {}
    for r in warehouse.ledger(task).iter_rows(named=True):
        batch, columns = r["batch_id"], json.loads(r["columns"] or "[]")
        if batch in batches and r["status"] == "validated":
            found[batch] = rows.filter(pl.col(BATCH_COLUMN) == batch).select([c for c in columns if c in rows.columns])
        elif (
            r["status"] == "quarantined"
            and (batch in batches or not partitioned)
            and json.loads(r["reason"] or "{}").get("stage") == "validate"
        ):
            raw = warehouse.read(task, RAW_TABLE, [batch])
            unlabelled = raw.filter(pl.col(spec.label).is_null()) if spec.label in raw.columns else raw
            found[batch] = unlabelled.select([c for c in columns if c in raw.columns])
    return {b: frame for b, frame in found.items() if not frame.is_empty()}


def batch_source(batch: BatchKey, files: list[str]) -> str:
    """A batch as an error names it: the batch and its files' names (as safe text)."""
    if not files:
        return f"batch {batch}"
    return f"batch {batch} ({'file' if len(files) == 1 else 'files'} {', '.join(display_name(f) for f in files)})"


def schema_problems(
    spec: TaskSpec, storage: MeddiagStorage, reference: Reference, version: str, to_check: dict[BatchKey, pl.DataFrame]
) -> tuple[set[BatchKey], dict[BatchKey, str]]:
    """(every batch the champion's reference refuses, :func:`drift.check_schema`; those refused for the first
    time by this version, with the problem). Each is reported once per version, so one bad batch does not fail
    every later run, while it stays unscored by that version."""
    refused, first = set(), {}
    files = {
        r["batch_id"]: json.loads(r["files"] or "[]") for r in storage.warehouse.ledger(spec.name).iter_rows(named=True)
    }
    for batch, frame in to_check.items():
        try:
            check_schema(reference, frame, batch_source(batch, files.get(batch, [])))
        except SchemaError as err:
            refused.add(batch)
            stamp = f"{time.time()}:{uuid.uuid4().hex}"
            if storage.warehouse.set_state_once(spec.name, f"schema_refused__{version}__{batch}", stamp) == stamp:
                first[batch] = str(err)
    return refused, first


def record_scored(
    spec: TaskSpec,
    storage: MeddiagStorage,
    reference: Reference,
    version: str,
    rows: pl.DataFrame,
    batches: list[BatchKey],
    outcome: MonitoringOutcome,
    embed: Embedder | None = None,
) -> None:
    """Drift and estimated performance of each batch ``version`` scored now, appended to ``monitoring.json``; the
    embeddings' drift too where the reference holds the model's embeddings."""
    root, kind, classes, seed = storage.root, task_kind(spec), reference.meta["classes"], spec.evaluation.seed
    embed = embed if reference.embeddings is not None else None  # nothing frozen to compare with: not embedded
    model_dir, plan = None, {}
    if embed is not None:
        registry = storage.registry
        plan = open_plan(root.read_json(f"{registry.version_rel(spec.name, version)}/plan.json"), root)
        model_dir = registry.version_dir(spec.name, version) / "model"
    for batch in batches:
        predictions = root.read_parquet(root.relative(prediction_path(root, spec.name, batch, version)))
        batch_rows = rows.filter(pl.col(BATCH_COLUMN) == batch)
        embeddings = embedded_sample(embed, model_dir, plan, batch_rows, seed)
        drift = batch_drift(reference, batch_rows, predictions, embeddings, f"batch {batch}", seed)
        estimated = estimate_performance(reference, predictions, kind, classes, seed=spec.evaluation.seed)
        entry = monitoring_entry(batch, version, drift, estimated)
        if append_entry(root, spec.name, entry):
            outcome.recorded.append(batch)
        if any(a["severity"] == "WARN" for a in entry["alerts"]):
            outcome.drifted.append(batch)


# -- labels that arrive later ---------------------------------------------------------------------------------
def landed_labels(spec: TaskSpec, storage: MeddiagStorage) -> pl.DataFrame | None:
    """``id`` and ``label`` of every labels batch landed so far (``None``: none landed)."""
    ledger = storage.warehouse.ledger(spec.name).filter(pl.col("status") == LABELS_STATUS)
    if ledger.is_empty():
        return None
    files = [
        storage.root.landing(spec.landing_folder) / r["batch_id"] / f
        for r in ledger.iter_rows(named=True)
        for f in json.loads(r["files"])
    ]
    return read_labels_batch(files, spec.id, spec.label)


def join_landed_labels(spec: TaskSpec, storage: MeddiagStorage, outcome: MonitoringOutcome) -> None:
    """Realised performance of every recorded batch that more labels now cover, judged by the gate's criteria
    against the version's own test metrics, into ``monitoring.json``."""
    try:
        labels = landed_labels(spec, storage)
    except LabelsError as err:
        outcome.labels_problems.append(str(err))
        return
    if labels is None:
        return
    root, registry = storage.root, storage.registry
    for entry in read_monitoring(root, spec.name):
        batch, version = entry["batch"], entry["model_version"]
        predictions = root.read_parquet(root.relative(prediction_path(root, spec.name, batch, version)))
        if predictions["id"].cast(pl.String).is_in(labels["id"]).sum() <= ((entry.get("realised") or {}).get("n") or 0):
            continue  # no label for this batch beyond those already joined
        manifest = registry.manifest(spec.name, version)
        threshold = (manifest.get("operating_threshold") or {}).get("value")
        try:
            realised = realised_performance(
                predictions, labels, task_kind(spec), manifest["model"]["classes"], spec.evaluation, threshold
            )
        except LabelsError as err:
            outcome.labels_problems.append(f"batch {batch}: {err}")
            continue
        realised["breach"] = breach_checks(
            realised, manifest["metrics"], spec.promotion, spec.evaluation.min_subgroup_n
        )
        record_realised(root, spec.name, batch, version, realised)
        metric = realised["metric"]
        outcome.realised.append(
            {
                "batch": batch,
                "model_version": version,
                "metric": metric,
                "value": realised[metric],
                "ci": realised["ci"],
                "n": realised["n"],
                **realised["breach"],
            }
        )


def breached_versions(storage: MeddiagStorage, task: str) -> dict[str, str]:
    """Versions whose realised performance breached the gate's criteria on some batch: version -> first reason."""
    out = {}
    for entry in read_monitoring(storage.root, task):
        breach = (entry.get("realised") or {}).get("breach") or {}
        if breach.get("breach"):
            out.setdefault(entry["model_version"], f"batch {entry['batch']}: {breach['reasons'][0]}")
    return out


def score_and_monitor(
    spec: TaskSpec,
    storage: MeddiagStorage,
    rows: pl.DataFrame,
    batches: list[BatchKey],
    partitioned: bool,
    predictor_factory: PredictorFactory,
    explain: Explainer | None,
    embed: Embedder | None = None,
) -> tuple[ScoringSummary, MonitoringOutcome, dict[str, str]]:
    """The ``predictions`` asset's work: join landed labels to the predictions; unless the champion's realised
    performance is then in breach, refuse the batches its schema refuses, score the others and record their
    drift (and join labels again, for the batches scored now).
    Returns the scoring summary, what monitoring found, and the breaches to report (version -> reason)."""
    outcome = MonitoringOutcome()
    version, reference, note = champion_reference(storage, spec.name)
    outcome.reference_note = note
    join_landed_labels(spec, storage, outcome)  # a breach found now stops this run's scoring too
    if version in breached_versions(storage, spec.name):
        summary = ScoringSummary(version)
    else:
        refused = set()
        if reference is not None:
            to_check = rows_to_check(spec, storage, rows, batches, partitioned)
            refused, outcome.refused = schema_problems(spec, storage, reference, version, to_check)
            outcome.unscored = len(refused)
        summary = score_unlabelled(
            spec,
            storage.root,
            storage.registry,
            rows,
            [b for b in batches if b not in refused],
            predictor_factory,
            explain,
        )
        if reference is not None and summary.written:
            record_scored(spec, storage, reference, version, rows, summary.written, outcome, embed)
            join_landed_labels(spec, storage, outcome)  # labels for the batches scored just now
    breached = breached_versions(storage, spec.name)
    found_now = {r["model_version"] for r in outcome.realised if r["breach"]}
    write_report(storage, spec.name)
    return summary, outcome, {v: r for v, r in breached.items() if v == version or v in found_now}


# -- the checks and metadata ----------------------------------------------------------------------------------
def check_specs(key: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(
            SCHEMA_CHECK,
            asset=key,
            blocking=True,
            description="Every batch to score holds the "
            "columns the champion was trained with, with numbers where it had numbers (ERROR: that "
            "batch is not scored with this champion).",
        ),
        dg.AssetCheckSpec(
            DRIFT_CHECK,
            asset=key,
            description="No batch scored now drifted from the champion's "
            "frozen reference (Evidently's defaults: a batch drifts when half its columns do; or its "
            "predictions drifted; or, for images and text, the model's embeddings, by a kernel MMD "
            "permutation test at p < 0.05): WARN.",
        ),
        dg.AssetCheckSpec(
            REALISED_CHECK,
            asset=key,
            blocking=True,
            description="Labels that arrived later show no breach of the "
            "promotion gate's criteria by the version that scored them (ERROR: scoring with it stops "
            "and the task's breach sensor requests a retrain).",
        ),
    ]


def check_results(outcome: MonitoringOutcome, breached: dict[str, str]) -> list[dg.AssetCheckResult]:
    schema = dg.AssetCheckResult(
        check_name=SCHEMA_CHECK,
        passed=not outcome.refused,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(outcome.refused.values()) or "every batch to score fits",
        metadata={"refused_batches": len(outcome.refused)},
    )
    drift = dg.AssetCheckResult(
        check_name=DRIFT_CHECK,
        passed=not outcome.drifted,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            f"drift in batch(es) {', '.join(outcome.drifted)}"
            if outcome.drifted
            else outcome.reference_note or "no drift in the batches scored now"
        ),
        metadata={"drifted_batches": len(outcome.drifted), "recorded_batches": len(outcome.recorded)},
    )
    problems = list(dict.fromkeys([f"{v}: {r}" for v, r in breached.items()] + outcome.labels_problems))
    unjudged = [f"batch {r['batch']}: {r['reasons'][0]}" for r in outcome.realised if not r["judged"]]
    realised = dg.AssetCheckResult(
        check_name=REALISED_CHECK,
        passed=not problems,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(problems or ["no breach of the gate's criteria", *unjudged]),
        metadata={"breached_versions": len(breached), "batches_joined_now": len(outcome.realised)},
    )
    return [schema, drift, realised]


def monitoring_metadata(storage: MeddiagStorage, task: str, outcome: MonitoringOutcome) -> dict:
    meta = {
        "monitoring": dg.MetadataValue.path(monitoring_rel(task)),
        "monitoring_report": dg.MetadataValue.path(monitoring_rel(task, MONITORING_HTML)),
        "batches_refused_by_schema": outcome.unscored,
        "batches_drifted": len(outcome.drifted),
    }
    for row in outcome.realised:
        meta[f"realised_{row['batch']}"] = dg.MetadataValue.json(
            {k: row[k] for k in ("model_version", "metric", "value", "ci", "n", "breach")}
        )
    return meta


def write_report(storage: MeddiagStorage, task: str) -> None:
    if storage.root.exists(monitoring_rel(task)):
        write_monitoring_report(storage.root, task)
