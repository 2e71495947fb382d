"""Scoring with a published model version: prediction frames, risk bands and the per-batch prediction files.

Each batch scored by a version gets its own file, ``predictions/<task>/<batch>/<version>.parquet``, which
records both the version and the batch (as columns and as Parquet file metadata); a file once written is never
replaced, so a re-score by a new champion adds a file beside the old one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import polars as pl

from meddiag_pipelines.ingestion.landing import BatchKey
from meddiag_pipelines.labels import task_kind
from meddiag_pipelines.modalities.base import Explainer, PredictorFactory
from meddiag_pipelines.registry.store import ModelRegistry
from meddiag_pipelines.specs import BATCH_COLUMN, TaskSpec
from meddiag_pipelines.storage import DataRoot, open_plan


def prediction_frame(spec: TaskSpec, rows: pl.DataFrame, proba: np.ndarray, classes: list[str]) -> pl.DataFrame:
    """``id``, ``label`` and the probabilities (binary: ``probability``; else ``p_<class>``, plus ``predicted``
    for multi-class tasks)."""
    base = rows.select(pl.col(spec.id).cast(pl.String).alias("id"), pl.col(spec.label).alias("label"))
    if proba.ndim == 1:
        return base.with_columns(pl.Series("probability", proba.astype(np.float64)))
    cols = [pl.Series(f"p_{c}", proba[:, i].astype(np.float64)) for i, c in enumerate(classes)]
    if task_kind(spec) == "multilabel":  # one probability per finding; no single predicted class
        return base.with_columns(*cols)
    return base.with_columns(*cols, pl.Series("predicted", [classes[i] for i in proba.argmax(axis=1)]))


def risk_bands(proba: np.ndarray, manifest: dict) -> list[str | None]:
    """Binary: 'high' at or above the operating threshold, 'intermediate' at or above the threshold that
    reaches the target sensitivity, else 'low'. Multi-class and multi-label tasks have no bands."""
    if proba.ndim > 1:
        return [None] * len(proba)
    rows = {r["name"]: r["threshold"] for r in manifest.get("thresholds") or []}
    high = (manifest.get("operating_threshold") or {}).get("value", 0.5)
    sensitive = min(rows.get("target_sensitivity", high), high)
    return ["high" if p >= high else "intermediate" if p >= sensitive else "low" for p in proba]


def prediction_path(root: DataRoot, task: str, batch: BatchKey, version: str) -> Path:
    """Where ``version``'s scores of ``batch`` live. The batch name comes from data (a landing folder's name, a
    partition key): refused unless it is one folder name, and the path must stay inside the data root."""
    if batch in ("", ".", "..") or PurePosixPath(batch).name != batch or "\\" in batch or "\x00" in batch:
        raise ValueError("a batch name must be a single folder name")
    path = root.predictions(task) / batch / f"{version}.parquet"
    root.confined(path)
    return path


@dataclass
class ScoringSummary:
    version: str | None
    scored_rows: int = 0
    written: list[BatchKey] = field(default_factory=list)  # batches scored now
    kept: list[BatchKey] = field(default_factory=list)  # batches this version had already scored
    empty: list[BatchKey] = field(default_factory=list)  # batches without unlabelled rows

    def as_metadata(self) -> dict:
        return {
            "champion": self.version or "none",
            "scored_rows": self.scored_rows,
            "batches_written": len(self.written),
            "batches_already_scored": len(self.kept),
            "batches_without_rows_to_score": len(self.empty),
        }


def score_unlabelled(
    spec: TaskSpec,
    root: DataRoot,
    registry: ModelRegistry,
    rows: pl.DataFrame,
    batches: list[BatchKey],
    predictor_factory: PredictorFactory,
    explain: Explainer | None = None,
) -> ScoringSummary:
    """Score the unlabelled ``rows`` of each of ``batches`` with the champion, one new file per batch that this
    champion has not scored yet; files of earlier champions stay where they are."""
    pointer = registry.champion(spec.name)
    if pointer is None:
        return ScoringSummary(None)
    version = pointer["version"]
    manifest = registry.manifest(spec.name, version)
    plan = open_plan(root.read_json(f"{registry.version_rel(spec.name, version)}/plan.json"), root)
    model_dir = None  # fetched (from an object store) only when a batch needs scoring
    summary = ScoringSummary(version)
    for batch in batches:
        batch_rows = rows.filter(pl.col(BATCH_COLUMN) == batch)
        target = root.relative(prediction_path(root, spec.name, batch, version))
        if batch_rows.is_empty():
            summary.empty.append(batch)
        elif root.exists(target):
            summary.kept.append(batch)  # never rewritten
        else:
            model_dir = model_dir or registry.version_dir(spec.name, version) / "model"
            frame = _batch_predictions(
                spec, version, manifest, plan, model_dir, batch, batch_rows, predictor_factory, explain
            )
            root.write_parquet(target, frame, metadata={"model_version": version, "batch": batch, "task": spec.name})
            summary.written.append(batch)
            summary.scored_rows += batch_rows.height
    return summary


def _batch_predictions(
    spec: TaskSpec,
    version: str,
    manifest: dict,
    plan: dict,
    model_dir: Path,
    batch: BatchKey,
    rows: pl.DataFrame,
    predictor_factory: PredictorFactory,
    explain: Explainer | None,
) -> pl.DataFrame:
    proba = predictor_factory(plan)(model_dir, rows)
    frame = prediction_frame(
        spec, rows.with_columns(pl.lit(None).alias(spec.label)), proba, manifest["model"]["classes"]
    ).drop("label")
    frame = frame.with_columns(
        pl.Series("risk_band", risk_bands(proba, manifest), dtype=pl.String),
        pl.lit(version).alias("model_version"),
        pl.lit(batch).alias("batch"),
    )
    if explain is not None:
        top = explain(model_dir, rows, plan)
        frame = frame.with_columns(pl.Series("top_features", ["; ".join(f"{n} {v:+.3f}" for n, v in r) for r in top]))
    return frame
