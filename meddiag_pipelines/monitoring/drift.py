"""Drift of one scored batch against a version's frozen reference, decided by Evidently 0.7 itself.

Features: the decisions of Evidently's ``DataDriftPreset`` with its defaults (its per-column call, made directly:
see ``_run_preset``), on the reference sample and the batch: per column Evidently's own choice of test (a reference of up to 1,000 rows: Kolmogorov-Smirnov for numeric columns,
chi-square for categorical ones, a Z-test for two values; beyond 1,000 rows: Wasserstein distance and
Jensen-Shannon divergence) at its default threshold, and the batch drifts when at least half its columns do
(``drift_share`` 0.5). The one decision made here, outside Evidently: a monitored column with no value at all in the
batch counts as drifted (``method`` "no values in the batch"); Evidently refuses an empty column.

Predictions: the same preset on the prediction columns (``reference.prediction_columns``) against the version's
predictions on its validation rows.

Embeddings (images and text: the model's own, ``Modality.embed``): a kernel two-sample test, the unbiased MMD\u00b2
with an RBF kernel whose bandwidth is the median heuristic (``gamma`` = 1 / the median squared distance between
the pooled rows), its p-value from :data:`PERMUTATIONS` seeded permutations of the pooled rows, drifted below
:data:`EMBEDDING_ALPHA` (at most :data:`~meddiag_pipelines.monitoring.reference.EMBEDDING_ROWS` seeded rows of
each side). Not Evidently's: its default embedding method (a domain classifier's ROC AUC above 0.55, or above the
95th percentile of random AUROCs) fired on 8-10% of same-distribution batches of 100 rows (``bench/README.md``),
and its ``mmd`` method compares MMD\u00b2 with a fixed 0.015 or its bootstrap's 5th percentile, no test level;
the permutation test holds its 5% level on any embedding.

A batch that lacks a monitored column, or holds text where the reference holds numbers, is refused
(:class:`SchemaError`, naming the columns, never their values): the caller's blocking check.
"""

from __future__ import annotations

import warnings

import numpy as np
import polars as pl

import meddiag_pipelines.monitoring  # noqa: F401  (sets the telemetry switches before evidently is imported)
from meddiag_pipelines.monitoring.reference import (
    EMBEDDING_ROWS,
    NUMERIC,
    Reference,
    monitored_frame,
    prediction_columns,
    sample_rows,
)

DRIFT_SHARE = 0.5
NO_VALUES = "no values in the batch"
EMBEDDING_ALPHA = 0.05
PERMUTATIONS = 500
MMD_METHOD = "kernel MMD permutation test (unbiased MMD\u00b2, RBF kernel, median-heuristic bandwidth)"


class SchemaError(ValueError):
    pass


def _evidently():
    import evidently

    return evidently


def check_schema(reference: Reference, batch: pl.DataFrame, source: str) -> None:
    """Refuse a batch without every monitored column, or with text in a numeric one (``source`` names it)."""
    missing = [c for c in reference.types if c not in batch.columns]
    if missing:
        raise SchemaError(
            f"{source}: missing column(s) {missing} that model version "
            f"{reference.meta['model_version']} was trained with"
        )
    textual = [
        c
        for c, t in reference.types.items()
        if t == NUMERIC
        and batch.schema[c] in (pl.String, pl.Categorical)
        and batch[c].cast(pl.Float64, strict=False).null_count() > batch[c].null_count()
    ]
    if textual:
        raise SchemaError(
            f"{source}: column(s) {textual} hold values that are not numbers, where the training data held numbers"
        )


def evidently_drift(reference: pl.DataFrame, current: pl.DataFrame, types: dict[str, str]) -> dict:
    """Evidently's ``DataDriftPreset`` (defaults) on two frames holding the columns of ``types``:
    ``{dataset_drift, share, n_columns, n_drifted, columns: {col: {type, method, threshold, score, drifted}}}``."""
    empty = [c for c in types if current[c].drop_nulls().is_empty()]
    tested = {c: t for c, t in types.items() if c not in empty}
    columns = {
        c: {"type": types[c], "method": NO_VALUES, "threshold": None, "score": None, "drifted": True} for c in empty
    }
    if tested:
        columns.update(_run_preset(reference, current, tested))
    n_drifted = sum(r["drifted"] for r in columns.values())
    share = n_drifted / len(columns) if columns else 0.0
    ordered = {c: columns[c] for c in types}
    return {
        "dataset_drift": bool(columns) and share >= DRIFT_SHARE,
        "share": share,
        "drift_share": DRIFT_SHARE,
        "n_columns": len(columns),
        "n_drifted": n_drifted,
        "columns": ordered,
    }


def _run_preset(reference: pl.DataFrame, current: pl.DataFrame, types: dict[str, str]) -> dict[str, dict]:
    """Per column, the decision of Evidently's ``DataDriftPreset`` (defaults): its ``ValueDrift`` metric's own
    call, ``get_one_column_drift``, with the test and threshold it chooses itself. Called directly because a
    ``Report`` also renders plotly widgets for every column, which are discarded here and cost ten times the
    decision (about 1 s for 11 columns); a test holds the decisions equal to a ``Report``'s."""
    from evidently.legacy.calculations.data_drift import get_one_column_drift
    from evidently.legacy.core import ColumnType
    from evidently.legacy.metric_results import DatasetColumns, DatasetUtilityColumns
    from evidently.legacy.options.data_drift import DataDriftOptions

    names = list(types)
    cur, ref = current.select(names).to_pandas(), reference.select(names).to_pandas()
    out = {}
    for column in names:
        numeric = types[column] == NUMERIC
        columns = DatasetColumns(
            utility_columns=DatasetUtilityColumns(date=None, id=None, target=None, prediction=None),
            target_type=None,
            task=None,
            num_feature_names=[column] if numeric else [],
            cat_feature_names=[] if numeric else [column],
            text_feature_names=[],
            datetime_feature_names=[],
            target_names=None,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pandas / scipy chatter on small samples
            drift = get_one_column_drift(
                current_data=cur,
                reference_data=ref,
                column_name=column,
                options=DataDriftOptions(),
                dataset_columns=columns,
                agg_data=True,
                column_type=ColumnType.Numerical if numeric else ColumnType.Categorical,
            )
        out[column] = {
            "type": types[column],
            "method": drift.stattest_name,
            "threshold": drift.stattest_threshold,
            "score": float(drift.drift_score),
            "drifted": bool(drift.drift_detected),
        }
    return out


def _mmd2(kernel: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Unbiased MMD\u00b2 of each split of the pooled rows: ``kernel`` (N, N) with a zero diagonal, ``reference``
    (P, N) True for the rows taken as reference (m per split). With b = 1 - a the batch's indicator,
    b'Kb = 1'K1 - 2a'K1 + a'Ka and a'Kb = a'K1 - a'Ka, so one product per split gives all three sums."""
    a = reference.astype(np.float64)
    m = a[0].sum()
    n = a.shape[1] - m
    s_xx = ((a @ kernel) * a).sum(axis=1)
    s_x = a @ kernel.sum(axis=1)
    s_yy = kernel.sum() - 2 * s_x + s_xx
    return s_xx / (m * (m - 1)) + s_yy / (n * (n - 1)) - 2 * (s_x - s_xx) / (m * n)


def embedding_drift(reference: np.ndarray, current: np.ndarray, seed: int = 0) -> dict:
    """The kernel MMD permutation test of the batch's embeddings against the reference's (module docstring):
    ``{method, statistic, p_value, threshold, drifted, n_reference, n_batch, permutations, gamma}``."""
    from sklearn.metrics.pairwise import euclidean_distances

    if current.ndim != 2 or current.shape[1] != reference.shape[1]:
        raise SchemaError(
            f"embeddings of the batch have shape {current.shape}; the reference's have {reference.shape[1]} dimensions"
        )
    x, y = (z[sample_rows(len(z), EMBEDDING_ROWS, seed)].astype(np.float64) for z in (reference, current))
    out = {
        "method": MMD_METHOD,
        "threshold": EMBEDDING_ALPHA,
        "n_reference": len(x),
        "n_batch": len(y),
        "permutations": PERMUTATIONS,
    }
    if len(x) < 2 or len(y) < 2:
        return {**out, "statistic": None, "p_value": None, "gamma": None, "drifted": False}
    distances = euclidean_distances(np.vstack([x, y]), squared=True)
    median = float(np.median(distances[np.triu_indices(len(distances), 1)]))
    gamma = 1.0 / median if median > 0 else 1.0  # identical rows: any bandwidth gives MMD 0
    kernel = np.exp(-gamma * distances)
    np.fill_diagonal(kernel, 0.0)
    observed = _mmd2(kernel, (np.arange(len(kernel)) < len(x))[None, :])[0]
    ranks = np.random.default_rng(seed).random((PERMUTATIONS, len(kernel))).argsort(axis=1)
    splits = ranks < len(x)  # uniform random subsets of the pooled rows, of the reference's size
    p_value = (1 + int((_mmd2(kernel, splits) >= observed).sum())) / (1 + PERMUTATIONS)
    return {
        **out,
        "statistic": float(observed),
        "p_value": p_value,
        "gamma": gamma,
        "drifted": p_value < EMBEDDING_ALPHA,
    }


def prediction_drift(reference: Reference, predictions: pl.DataFrame) -> dict | None:
    """Drift of the batch's predictions against the version's predictions on its validation rows."""
    if reference.predictions is None:
        return None
    types = prediction_columns(reference.predictions)
    missing = [c for c in types if c not in predictions.columns]
    if missing:
        raise SchemaError(f"the predictions lack column(s) {missing} that the reference holds")
    return evidently_drift(monitored_frame(reference.predictions, types), monitored_frame(predictions, types), types)


def batch_drift(
    reference: Reference,
    batch: pl.DataFrame,
    predictions: pl.DataFrame | None = None,
    embeddings: np.ndarray | None = None,
    source: str = "batch",
    seed: int = 0,
) -> dict:
    """Drift of one scored batch: ``{dataset_drift, share, drift_share, n_columns, n_drifted, columns, n_rows,
    n_reference, prediction, embeddings, engine}`` (``prediction`` and ``embeddings`` ``None`` when not given or
    not in the reference). ``batch``: the scored rows (features as read); ``embeddings``: the model's embeddings
    of (a sample of) them; ``source``: how errors name it; ``seed``: the permutations'."""
    if batch.is_empty():
        raise SchemaError(f"{source}: no rows to compare with the reference")
    check_schema(reference, batch, source)
    types = reference.types
    out = evidently_drift(reference.features, monitored_frame(batch, types), types)
    evidently = _evidently()
    prediction = None if predictions is None else prediction_drift(reference, predictions)
    out.update(
        n_rows=batch.height,
        n_reference=reference.features.height,
        engine=f"evidently {evidently.__version__}",
        prediction=prediction,
        embeddings=None,
    )
    if embeddings is not None and reference.embeddings is not None:
        out["embeddings"] = embedding_drift(reference.embeddings, np.asarray(embeddings, dtype=np.float32), seed)
    return out
