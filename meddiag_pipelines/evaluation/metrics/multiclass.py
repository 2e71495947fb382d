"""The multiclass block of ``metrics.json``: macro one-vs-rest AUROC/AUPRC, F1, per-class rows, the baseline."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from meddiag_pipelines.evaluation.metrics.binary import _ap_or_nan, _auc_or_nan
from meddiag_pipelines.evaluation.metrics.bootstrap import _bootstrap, _bucket_counts, _Scores, percentile_ci
from meddiag_pipelines.evaluation.metrics.inputs import EvaluationInput
from meddiag_pipelines.specs import EvaluationSpec


def multiclass_brier(y: np.ndarray, proba: np.ndarray) -> float:
    """Mean over rows of the sum over classes of (one-hot - p)^2 (range 0..2)."""
    onehot = np.eye(proba.shape[1])[y]
    return float(np.mean(np.sum((onehot - proba) ** 2, axis=1)))


def _macro_f1_from_codes(codes: np.ndarray, k: int) -> np.ndarray:
    """codes (b, n) = y * k + pred -> macro F1 per resample over classes present in y or pred."""
    cm = _bucket_counts(codes, k * k).reshape(-1, k, k)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    den = cm.sum(axis=2) + cm.sum(axis=1)  # support + predicted = 2tp + fp + fn
    f1 = np.divide(2 * tp, den, out=np.zeros_like(tp), where=den > 0)
    present = den > 0
    return f1.sum(axis=1) / np.maximum(present.sum(axis=1), 1)


def macro_f1_ci(y: np.ndarray, pred: np.ndarray, k: int, n_bootstrap: int, seed) -> list[float] | None:
    """Stratified percentile bootstrap 95% CI of the macro-F1 of class indices ``pred`` against ``y`` (the
    evaluator's resampling: each class resampled separately)."""
    y, pred = np.asarray(y).astype(int), np.asarray(pred).astype(int)
    res = _bootstrap(
        y, n_bootstrap, seed, lambda idx, order: {"f1": _macro_f1_from_codes(y[order][None, :] * k + pred[idx], k)}
    )
    return percentile_ci(res["f1"])


def _multiclass(inp: EvaluationInput, y: np.ndarray, P: np.ndarray, B: np.ndarray | None, s: EvaluationSpec) -> dict:
    k = len(inp.classes)
    pred = P.argmax(axis=1)
    present = [c for c in range(k) if 0 < np.sum(y == c) < y.size]
    per_auc = [_auc_or_nan((y == c).astype(int), P[:, c]) for c in range(k)]
    per_ap = [_ap_or_nan((y == c).astype(int), P[:, c]) for c in range(k)]
    auroc = float(np.mean([per_auc[c] for c in present])) if present else float("nan")
    auprc = float(np.mean([per_ap[c] for c in present])) if present else float("nan")
    macro_f1 = float(f1_score(y, pred, average="macro", zero_division=0))

    b_pred = B.argmax(axis=1) if B is not None else None
    res = _multiclass_bootstrap(y, P, B, pred, b_pred, present, s)
    prec, rec, f1s, sup = precision_recall_fscore_support(y, pred, labels=list(range(k)), zero_division=0)
    per_class = [
        {
            "class": inp.classes[c],
            "precision": prec[c],
            "recall": rec[c],
            "f1": f1s[c],
            "support": int(sup[c]),
            "auroc": per_auc[c],
            "auroc_ci": percentile_ci(res["auc_c"][:, c]),
            "auprc": per_ap[c],
        }
        for c in range(k)
    ]
    out = {
        "auroc": auroc,
        "auroc_ci": percentile_ci(res["auc"]),
        "auprc": auprc,
        "auprc_ci": percentile_ci(res["ap"]),
        "brier": multiclass_brier(y, P),
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": macro_f1,
        "weighted_f1": float(f1_score(y, pred, average="weighted", zero_division=0)),
        "per_class": per_class,
        "confusion_matrix": {
            "labels": list(inp.classes),
            "matrix": confusion_matrix(y, pred, labels=list(range(k))).tolist(),
            "threshold": None,
        },
        "baseline": None,
        "comparison": None,
    }
    if B is not None:
        b_auc = [_auc_or_nan((y == c).astype(int), B[:, c]) for c in present]
        b_ap = [_ap_or_nan((y == c).astype(int), B[:, c]) for c in present]
        b_auroc = float(np.mean(b_auc)) if present else float("nan")
        b_f1 = float(f1_score(y, b_pred, average="macro", zero_division=0))
        out["baseline"] = {
            "name": inp.baseline_name,
            "auroc": b_auroc,
            "auroc_ci": percentile_ci(res["b_auc"]),
            "auprc": float(np.mean(b_ap)) if present else None,
            "macro_f1": b_f1,
            "brier": multiclass_brier(y, B),
        }
        out["comparison"] = {
            "metric": "macro_f1",
            "model": macro_f1,
            "baseline": b_f1,
            "difference": macro_f1 - b_f1,
            "ci": percentile_ci(res["f1_diff"]),
            "auroc_difference": auroc - b_auroc,
            "auroc_difference_ci": percentile_ci(res["auc_diff"]),
        }
    return out


def _multiclass_bootstrap(
    y: np.ndarray,
    P: np.ndarray,
    B: np.ndarray | None,
    pred: np.ndarray,
    b_pred: np.ndarray | None,
    present: list[int],
    s: EvaluationSpec,
) -> dict:
    """Per-class stratified bootstrap, paired for model and baseline: per-class and macro AUROC, macro AUPRC and,
    with a baseline, its macro AUROC and the AUROC and macro-F1 differences."""
    k = P.shape[1]
    scores = [_Scores(P[:, c]) for c in range(k)]
    b_scores = [_Scores(B[:, c]) for c in range(k)] if B is not None else None

    def stat(idx: np.ndarray, order: np.ndarray) -> dict:
        y_cols = y[order]
        out: dict[str, np.ndarray] = {}
        aucs, aps = [], []
        for c in range(k):
            a, ap = scores[c].auc_ap(idx, y_cols == c)
            aucs.append(a)
            aps.append(ap)
        out["auc_c"] = np.stack(aucs, axis=1)
        out["ap"] = np.nanmean(np.stack(aps, axis=1)[:, present], axis=1) if present else np.full(idx.shape[0], np.nan)
        out["auc"] = np.nanmean(out["auc_c"][:, present], axis=1) if present else np.full(idx.shape[0], np.nan)
        f1 = _macro_f1_from_codes(y_cols[None, :] * k + pred[idx], k)
        if b_scores is not None:
            b_auc = np.stack([b_scores[c].auc_ap(idx, y_cols == c)[0] for c in range(k)], axis=1)
            out["b_auc"] = np.nanmean(b_auc[:, present], axis=1) if present else np.full(idx.shape[0], np.nan)
            out["auc_diff"] = out["auc"] - out["b_auc"]
            out["f1_diff"] = f1 - _macro_f1_from_codes(y_cols[None, :] * k + b_pred[idx], k)
        return out

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of all-NaN slices
        res = _bootstrap(y, s.n_bootstrap, s.seed, stat)
    return res
