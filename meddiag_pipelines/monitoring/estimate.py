"""Performance without labels, until they arrive: a confidence-based estimate in the manner of NannyML's CBPE.

If the model's probabilities, once calibrated on the version's validation rows, are the true probabilities of
each batch case (no concept drift: P(label | prediction) unchanged since training), then the batch's labels are
draws from them. The estimate is the mean of the metric over :data:`DRAWS` such label draws, and its interval
the 2.5th and 97.5th percentiles of those draws: the spread the realised figure would show on this batch if the
assumption held.

* Binary: AUROC of the model's probabilities, labels drawn from the probabilities recalibrated by a logistic
  regression on their logit over the reference's validation predictions (when they hold both outcomes; otherwise
  as they are).
* Multi-class: macro-F1 of the arg-max class, labels drawn from the predicted class probabilities as they are.
* Multi-label: not estimated (``None``).
"""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy.stats import rankdata
from sklearn.linear_model import LogisticRegression

from meddiag_pipelines.evaluation.metrics.bootstrap import percentile_ci
from meddiag_pipelines.evaluation.metrics.multiclass import _macro_f1_from_codes
from meddiag_pipelines.monitoring.labels import probability_matrix
from meddiag_pipelines.monitoring.reference import Reference
from meddiag_pipelines.probability import logit

DRAWS = 500
ASSUMES = "no concept drift: P(label | prediction) as on the version's validation rows"
_CHUNK_CELLS = 5_000_000  # draws x rows per chunk (bounds memory on large batches)


def _calibrator(reference: Reference, classes: list[str]) -> LogisticRegression | None:
    """Logistic recalibration on logit(p) (Platt): smooth, so it keeps the ranking's detail, which an
    isotonic step function on a few hundred validation rows flattens (and the estimate with it)."""
    ref = reference.predictions
    if ref is None or "probability" not in ref.columns or "label" not in ref.columns:
        return None
    y = (ref["label"].cast(pl.String) == classes[-1]).to_numpy().astype(float)
    if y.min(initial=1) == y.max(initial=0):
        return None
    return LogisticRegression(C=1e6).fit(logit(ref["probability"].to_numpy())[:, None], y)


def _chunks(n_rows: int, draws: int) -> list[int]:
    per = max(1, _CHUNK_CELLS // max(n_rows, 1))
    return [min(per, draws - done) for done in range(0, draws, per)]


def expected_auroc_draws(score: np.ndarray, p_true: np.ndarray, draws: int, seed: int) -> np.ndarray:
    """AUROC of ``score`` for each of ``draws`` label vectors drawn from ``p_true`` (Mann-Whitney on mid-ranks:
    one matrix product per chunk); NaN for a draw with one outcome only."""
    rng = np.random.default_rng(seed)
    ranks = rankdata(score)
    out = []
    for b in _chunks(score.size, draws):
        y = rng.random((b, score.size)) < p_true
        n1 = y.sum(axis=1).astype(float)
        n0 = score.size - n1
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append((y @ ranks - n1 * (n1 + 1) / 2) / (n1 * n0))
    return np.concatenate(out)


def expected_macro_f1_draws(proba: np.ndarray, draws: int, seed: int) -> np.ndarray:
    """Macro-F1 of the arg-max class for each of ``draws`` label vectors drawn from the rows of ``proba``."""
    rng = np.random.default_rng(seed)
    k = proba.shape[1]
    pred = proba.argmax(axis=1)
    cumulative = np.cumsum(proba, axis=1)
    cumulative[:, -1] = 1.0
    out = []
    for b in _chunks(proba.shape[0], draws):
        u = rng.random((b, proba.shape[0], 1))
        y = (u > cumulative[None, :, :]).sum(axis=2)
        out.append(_macro_f1_from_codes(y * k + pred[None, :], k))
    return np.concatenate(out)


def estimate_performance(
    reference: Reference, predictions: pl.DataFrame, kind: str, classes: list[str], draws: int = DRAWS, seed: int = 0
) -> dict | None:
    """``{metric, <metric>, ci, n, method, assumes}`` for one batch's predictions; ``None`` for multi-label tasks
    or an empty batch."""
    if kind == "multilabel" or predictions.is_empty():
        return None
    proba = probability_matrix(predictions, classes)
    if kind == "binary":
        calibrator = _calibrator(reference, classes)
        p_true = calibrator.predict_proba(logit(proba)[:, None])[:, 1] if calibrator is not None else proba
        values = expected_auroc_draws(proba, p_true, draws, seed)
        metric = "auroc"
        how = " recalibrated (logistic, on logit p) on the version's validation rows" if calibrator else " as they are"
        method = "CBPE-like: mean AUROC over labels drawn from the probabilities" + how
    else:
        values = expected_macro_f1_draws(proba, draws, seed)
        metric, method = "macro_f1", "CBPE-like: mean macro-F1 over labels drawn from the class probabilities"
    finite = values[np.isfinite(values)]
    value = float(finite.mean()) if finite.size else None
    return {
        "metric": metric,
        metric: value,
        "ci": percentile_ci(values),
        "n": predictions.height,
        "draws": draws,
        "method": method,
        "assumes": ASSUMES,
        "label": "estimated (assumes no concept drift)",
    }
