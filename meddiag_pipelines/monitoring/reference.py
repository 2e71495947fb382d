"""The monitoring reference of a model version: what its training data, its predictions on held-out rows and (for
images and text) its embeddings looked like, frozen once with the version and never recomputed.

A reference is a folder, ``monitoring_reference/``, inside the version's folder (written into the staging folder
before the version is published, so it is published with it), created whole by one rename and refused if it
exists:

* ``reference.json``: task, version, kind, classes, the feature types, per-feature statistics over **all** the
  training rows (numeric: count, missing share, mean, sd, min, max, quantiles and a 20-bin histogram;
  categorical: missing share and the frequencies of the 50 most common values), the same of the predictions,
  the embedding's size and per-dimension means, and the SHA-256 of each file below;
* ``features.parquet``: a uniform sample of at most :data:`SAMPLE_ROWS` training rows of the feature columns (no
  id, patient id, label or text): what Evidently's tests compare a batch with;
* ``predictions.parquet``: the model's predictions on its validation rows (the prediction columns and the
  label; no id): the reference of prediction drift and the calibration the estimate without labels relies on;
* ``embeddings.npy`` (images and text): the model's own embeddings (``Modality.embed``) of a seeded sample of at
  most :data:`EMBEDDING_ROWS` validation rows (never trained on), a (rows, dimensions) float32 array written and
  read by numpy without pickle.

The sample keeps more than 1,000 rows whenever the training data have more, so Evidently chooses the test it
would choose on the full data (its rule switches at 1,000 reference rows).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from meddiag_pipelines.atomic import publish_new_dir, staging_dir
from meddiag_pipelines.evaluation.metrics.jsonable import to_jsonable
from meddiag_pipelines.specs import TaskSpec
from meddiag_pipelines.validation.suites import feature_columns

REFERENCE_DIR = "monitoring_reference"
SAMPLE_ROWS = 5_000
EMBEDDING_ROWS = 1_000
EMBEDDINGS_FILE = "embeddings.npy"
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
HISTOGRAM_BINS = 20
TOP_VALUES = 50
MAX_CATEGORIES = 100  # a string column with more distinct values is an identifier or free text, not a category
NUMERIC, CATEGORICAL = "numeric", "categorical"
PREDICTION_ROWS = "validation"
FROZEN = "the monitoring reference of this version is frozen; it is never recomputed"


class ReferenceError(ValueError):
    pass


@dataclass
class Reference:
    meta: dict
    features: pl.DataFrame
    predictions: pl.DataFrame | None = None
    embeddings: np.ndarray | None = None

    @property
    def types(self) -> dict[str, str]:
        return self.meta["feature_types"]


def feature_types(
    frame: pl.DataFrame, features: Sequence[str], numeric: Sequence[str] = (), categorical: Sequence[str] = ()
) -> dict[str, str]:
    """``{column: "numeric" | "categorical"}`` for the monitored ``features``: the declared ones as declared, the
    others by type (numbers and booleans numeric, strings categorical); string columns with more than
    :data:`MAX_CATEGORIES` distinct values (identifiers, free text) and other types (images, lists) are left out."""
    types = {}
    for column in features:
        dtype = frame.schema[column]
        if column in categorical:
            types[column] = CATEGORICAL
        elif column in numeric or dtype.is_numeric() or dtype == pl.Boolean:
            types[column] = NUMERIC
        elif dtype in (pl.String, pl.Categorical, pl.Enum) and frame[column].n_unique() <= MAX_CATEGORIES:
            types[column] = CATEGORICAL
    return types


def task_feature_types(spec: TaskSpec, frame: pl.DataFrame) -> dict[str, str]:
    """:func:`feature_types` of a task's rows: its model inputs (``validation.suites.feature_columns``) with the
    spec's declared types; the text column and an image's file column are watched through embeddings instead."""
    skip = {spec.text, spec.image.file_column if spec.image else None}
    features = [c for c in feature_columns(spec, frame.columns) if c not in skip]
    return feature_types(frame, features, spec.numeric, spec.categorical)


def monitored_frame(frame: pl.DataFrame, types: dict[str, str]) -> pl.DataFrame:
    """The monitored columns as drift compares them: numeric as Float64, categorical as strings."""
    return frame.select(
        [
            pl.col(c).cast(pl.Float64).fill_nan(None) if t == NUMERIC else pl.col(c).cast(pl.String)
            for c, t in types.items()
        ]
    )


def prediction_columns(frame: pl.DataFrame) -> dict[str, str]:
    """The prediction columns drift compares: binary ``probability`` (numeric); multi-class ``predicted`` (the
    class, categorical); multi-label every ``p_<finding>`` (numeric)."""
    if "probability" in frame.columns:
        return {"probability": NUMERIC}
    if "predicted" in frame.columns:
        return {"predicted": CATEGORICAL}
    return {c: NUMERIC for c in frame.columns if c.startswith("p_")}


def _numeric_stats(values: pl.Series) -> dict:
    x = values.cast(pl.Float64).to_numpy()
    finite = x[np.isfinite(x)]
    out = {"type": NUMERIC, "n": int(x.size), "missing_share": float(1 - finite.size / x.size) if x.size else None}
    if finite.size:
        counts, edges = np.histogram(finite, bins=HISTOGRAM_BINS)
        out.update(
            mean=finite.mean(),
            sd=finite.std(ddof=1) if finite.size > 1 else None,
            min=finite.min(),
            max=finite.max(),
            quantiles=dict(zip(map(str, QUANTILES), np.quantile(finite, QUANTILES), strict=False)),
            histogram={"edges": edges, "counts": counts},
        )
    return out


def _categorical_stats(values: pl.Series) -> dict:
    values = values.cast(pl.String)
    n, present = values.len(), values.drop_nulls()
    counts = present.value_counts(sort=True, name="count").head(TOP_VALUES)
    return {
        "type": CATEGORICAL,
        "n": n,
        "missing_share": (n - present.len()) / n if n else None,
        "n_values": present.n_unique(),
        "frequencies": {str(v): c / n for v, c in counts.iter_rows()},
    }


def column_stats(frame: pl.DataFrame, types: dict[str, str]) -> dict[str, dict]:
    return {c: _numeric_stats(frame[c]) if t == NUMERIC else _categorical_stats(frame[c]) for c, t in types.items()}


def sample_rows(n: int, cap: int, seed: int) -> np.ndarray:
    """Sorted indices of a uniform sample of at most ``cap`` of ``n`` rows (all of them when ``n <= cap``)."""
    rows = np.arange(n)
    return rows if n <= cap else np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))


def build_reference(
    task: str,
    model_version: str,
    kind: str,
    classes: list[str],
    train: pl.DataFrame,
    types: dict[str, str],
    validation_predictions: pl.DataFrame | None = None,
    embeddings: np.ndarray | None = None,
    seed: int = 0,
) -> Reference:
    """The reference of ``model_version``. ``train``: its training rows (``types``: :func:`feature_types`);
    ``validation_predictions``: its predictions on its validation rows (``scoring.prediction_frame``: the id is
    dropped here); ``embeddings``: (n, d) the model's embeddings of held-out (validation) rows (images, text)."""
    if train.is_empty():
        raise ReferenceError(f"{task} {model_version}: no training rows to build a monitoring reference from")
    missing = [c for c in types if c not in train.columns]
    if missing:
        raise ReferenceError(f"{task} {model_version}: the training rows lack the monitored column(s) {missing}")
    features = monitored_frame(train, types)
    unmonitored = [c for c in types if features[c].drop_nulls().is_empty()]  # nothing to compare a batch with
    types = {c: t for c, t in types.items() if c not in unmonitored}
    features = features.select(list(types))
    meta = {
        "task": task,
        "model_version": model_version,
        "kind": kind,
        "classes": list(classes),
        "created_at": time.time(),
        "n_train": train.height,
        "seed": seed,
        "sample_rows": min(train.height, SAMPLE_ROWS),
        "feature_types": dict(types),
        "features": column_stats(features, types),
        "predictions": None,
        "unmonitored": {c: "no value in the training rows" for c in unmonitored},
        "embeddings": None,
    }
    predictions = None
    if validation_predictions is not None:
        cols = prediction_columns(validation_predictions)
        keep = [*cols, *[c for c in validation_predictions.columns if c.startswith("p_") and c not in cols], "label"]
        present = validation_predictions.columns
        predictions = validation_predictions.select([c for c in dict.fromkeys(keep) if c in present])
        meta["predictions"] = {
            "rows": PREDICTION_ROWS,
            "n": predictions.height,
            "types": cols,
            "stats": column_stats(predictions, cols),
        }
    if embeddings is not None:
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or not np.isfinite(embeddings).all():
            raise ReferenceError(f"{task} {model_version}: embeddings must be a finite (rows, dimensions) array")
        meta["embeddings"] = {"n": embeddings.shape[0], "dim": embeddings.shape[1], "mean": embeddings.mean(axis=0)}
        embeddings = embeddings[sample_rows(embeddings.shape[0], EMBEDDING_ROWS, seed)]
        meta["embeddings"]["sample_rows"] = embeddings.shape[0]
    sample = features[sample_rows(features.height, SAMPLE_ROWS, seed)]
    return Reference(to_jsonable(meta), sample, predictions, embeddings)


def _parquet(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return buffer.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def freeze_reference(version_dir: Path, reference: Reference) -> Path:
    """Write ``reference`` into ``version_dir/monitoring_reference/``, created whole by one rename; a reference
    that exists is never recomputed or replaced (FileExistsError)."""
    final = Path(version_dir) / REFERENCE_DIR
    if final.exists():
        raise FileExistsError(f"{final}: {FROZEN}")
    files = {"features.parquet": _parquet(reference.features)}
    if reference.predictions is not None:
        files["predictions.parquet"] = _parquet(reference.predictions)
    if reference.embeddings is not None:
        files[EMBEDDINGS_FILE] = _npy(reference.embeddings)
    meta = {**reference.meta, "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}}
    staged = staging_dir(final)
    for name, data in files.items():
        (staged / name).write_bytes(data)
    (staged / "reference.json").write_text(json.dumps(meta, indent=2, sort_keys=True, allow_nan=False) + "\n")
    try:
        return publish_new_dir(staged, final)
    except OSError as err:  # another writer froze it first
        shutil.rmtree(staged, ignore_errors=True)
        raise FileExistsError(f"{final}: {FROZEN}") from err


def load_reference(version_dir: Path) -> Reference:
    """The frozen reference of a version; each file is checked against the digest ``reference.json`` gives."""
    folder = Path(version_dir) / REFERENCE_DIR
    try:
        meta = json.loads((folder / "reference.json").read_text())
    except FileNotFoundError:
        raise ReferenceError(f"{folder}: this version has no monitoring reference") from None
    loaded = {}
    for name, digest in meta["files"].items():
        data = (folder / name).read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise ReferenceError(
                f"{folder / name}: does not match its digest in reference.json (changed after freezing)"
            )
        loaded[name] = (
            np.load(io.BytesIO(data), allow_pickle=False)
            if name == EMBEDDINGS_FILE
            else pl.read_parquet(io.BytesIO(data))
        )
    return Reference(meta, loaded["features.parquet"], loaded.get("predictions.parquet"), loaded.get(EMBEDDINGS_FILE))
