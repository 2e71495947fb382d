"""Operating points of binary risks: threshold rules, the counts and rates at a threshold, decision curves."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, roc_curve

DECISION_THRESHOLDS = np.round(np.arange(1, 100) / 100.0, 2)


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den > 0 else None


def net_benefit(y_true: np.ndarray, proba: np.ndarray, thresholds: np.ndarray = DECISION_THRESHOLDS) -> np.ndarray:
    """Net benefit TP/n - FP/n * t/(1-t) at each threshold t (rows with p >= t treated)."""
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(proba, dtype=float)
    t = np.asarray(thresholds, dtype=float)
    n = y.size
    pos_sorted = np.sort(p[y])
    neg_sorted = np.sort(p[~y])
    tp = pos_sorted.size - np.searchsorted(pos_sorted, t, side="left")
    fp = neg_sorted.size - np.searchsorted(neg_sorted, t, side="left")
    return tp / n - fp / n * t / (1.0 - t)


def decision_curve(y_true: np.ndarray, proba: np.ndarray, baseline: np.ndarray | None = None) -> dict:
    y = np.asarray(y_true).astype(int)
    prev = float(y.mean())
    t = DECISION_THRESHOLDS
    return {
        "thresholds": t.tolist(),
        "model": net_benefit(y, proba, t).tolist(),
        "treat_all": (prev - (1.0 - prev) * t / (1.0 - t)).tolist(),
        "treat_none": [0.0] * t.size,
        "baseline": None if baseline is None else net_benefit(y, baseline, t).tolist(),
    }


def choose_threshold(
    y_true: np.ndarray, proba: np.ndarray, rule: str | float, target_sensitivity: float = 0.9
) -> float:
    """The threshold a rule gives: "0.5", a number, "youden" or "target_sensitivity" (highest threshold whose
    sensitivity >= target). Data-driven rules fall back to 0.5 when y has one class only."""
    if not isinstance(rule, str):
        return float(rule)
    if rule == "0.5":
        return 0.5
    y = np.asarray(y_true).astype(int)
    if y.size == 0 or y.min() == y.max():
        return 0.5
    fpr, tpr, thr = roc_curve(y, proba, drop_intermediate=False)  # thresholds decreasing
    finite = np.isfinite(thr)
    fpr, tpr, thr = fpr[finite], tpr[finite], thr[finite]
    if rule == "youden":
        return float(thr[int(np.argmax(tpr - fpr))])
    if rule == "target_sensitivity":
        ok = np.flatnonzero(tpr >= target_sensitivity - 1e-12)
        return float(thr[ok[0]]) if ok.size else float(thr[-1])
    raise ValueError(f"unknown threshold rule {rule!r}")


def threshold_row(name: str, threshold: float, y_true: np.ndarray, proba: np.ndarray, chosen_on: str) -> dict:
    y = np.asarray(y_true).astype(int)
    pred = (np.asarray(proba) >= threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, pred, labels=[0, 1]).ravel())
    return {
        "name": name,
        "threshold": float(threshold),
        "chosen_on": chosen_on,
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": float(f1_score(y, pred, labels=[0, 1], zero_division=0)),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }
