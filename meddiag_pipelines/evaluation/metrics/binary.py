"""The binary block of ``metrics.json`` (also each label of a multilabel task), with its baseline comparison."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    roc_auc_score,
)

from meddiag_pipelines.evaluation.metrics.bootstrap import _bootstrap, _Scores, percentile_ci
from meddiag_pipelines.evaluation.metrics.calibration import (
    calibration_curve_bins,
    calibration_intercept_slope,
    calibration_slope_ci,
    smooth_calibration,
)
from meddiag_pipelines.evaluation.metrics.thresholds import choose_threshold, decision_curve, threshold_row
from meddiag_pipelines.specs import EvaluationSpec


def _auc_or_nan(y: np.ndarray, s: np.ndarray) -> float:
    return float(roc_auc_score(y, s)) if 0 < y.sum() < y.size else float("nan")


def _ap_or_nan(y: np.ndarray, s: np.ndarray) -> float:
    return float(average_precision_score(y, s)) if y.sum() > 0 else float("nan")


def _binary(
    y: np.ndarray,
    p: np.ndarray,
    settings: EvaluationSpec,
    classes: list[str],
    seed: Any,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    base: np.ndarray | None = None,
) -> tuple[dict, dict | None, dict | None]:
    """(binary block, baseline block, comparison) for one outcome."""
    n = y.size
    n_pos = int(y.sum())
    prev = n_pos / n if n else float("nan")
    two_classes = 0 < n_pos < n
    auroc = _auc_or_nan(y, p)
    auprc = _ap_or_nan(y, p)
    brier = float(brier_score_loss(y, p, labels=[0, 1]))
    auroc_ci = auprc_ci = b_ci = diff_ci = None
    if two_classes:
        auroc_ci, auprc_ci, b_ci, diff_ci = _binary_cis(y, p, base, settings, seed)
    rows, op_name, op_row = _threshold_rows(y, p, settings, val)
    op_value = op_row["threshold"]
    pred = (p >= op_value).astype(int)

    intercept, slope = calibration_intercept_slope(y, p)
    block = {
        "n": n,
        "n_positive": n_pos,
        "prevalence": prev,
        "auroc": auroc,
        "auroc_ci": auroc_ci,
        "auprc": auprc,
        "auprc_ci": auprc_ci,
        "brier": brier,
        "scaled_brier": 1.0 - brier / (prev * (1.0 - prev)) if two_classes else None,
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, labels=[0, 1], average="macro", zero_division=0)),
        "sensitivity": op_row["sensitivity"],
        "specificity": op_row["specificity"],
        "calibration_intercept": intercept,
        "calibration_slope": slope,
        "calibration_slope_ci": calibration_slope_ci(y, p, settings.n_bootstrap, seed),
        "calibration_curve": {
            "bins": calibration_curve_bins(y, p),
            "smooth": smooth_calibration(y, p),
            "method": "10 equal-width bins; smooth = logistic regression on a cubic B-spline of logit(p)",
        },
        "decision_curve": decision_curve(y, p, base),
        "thresholds": rows,
        "operating_threshold": {"name": op_name, "value": op_value, "chosen_on": op_row["chosen_on"]},
        "confusion_matrix": {
            "labels": list(classes),
            "matrix": confusion_matrix(y, pred, labels=[0, 1]).tolist(),
            "threshold": op_value,
        },
    }
    if base is None:
        return block, None, None
    baseline, comparison = _binary_baseline(y, base, settings, auroc, b_ci, diff_ci)
    return block, baseline, comparison


def _binary_cis(y: np.ndarray, p: np.ndarray, base: np.ndarray | None, settings: EvaluationSpec, seed: Any) -> tuple:
    """(AUROC CI, AUPRC CI, baseline AUROC CI, AUROC difference CI) of an outcome with both classes present.

    Bootstrap: stratified, shared by model and baseline (paired)."""
    b_ci = diff_ci = None
    sc = _Scores(p)
    bs = _Scores(base) if base is not None else None
    pos_cols = np.sort(y) == 1

    def stat(idx: np.ndarray, order: np.ndarray) -> dict:
        auc, ap = sc.auc_ap(idx, pos_cols)
        out = {"auc": auc, "ap": ap}
        if bs is not None:
            b_auc, _ = bs.auc_ap(idx, pos_cols)
            out["b_auc"] = b_auc
            out["diff"] = auc - b_auc
        return out

    res = _bootstrap(y, settings.n_bootstrap, seed, stat)
    auroc_ci, auprc_ci = percentile_ci(res["auc"]), percentile_ci(res["ap"])
    if bs is not None:
        b_ci, diff_ci = percentile_ci(res["b_auc"]), percentile_ci(res["diff"])
    return auroc_ci, auprc_ci, b_ci, diff_ci


def _threshold_rows(
    y: np.ndarray, p: np.ndarray, settings: EvaluationSpec, val: tuple[np.ndarray, np.ndarray] | None
) -> tuple[list[dict], str, dict]:
    """(every rule's row on the test set, the operating rule's name, its row); data-driven rules chosen on
    validation when given."""
    if val is not None and val[0].size > 0:
        vy, vp, chosen_on = val[0], val[1], "validation"
    else:
        vy, vp, chosen_on = y, p, "test"
    tgt = settings.target_sensitivity
    rules: list[tuple[str, str | float, str]] = [
        ("0.5", "0.5", "fixed"),
        ("youden", "youden", chosen_on),
        ("target_sensitivity", "target_sensitivity", chosen_on),
    ]
    op_rule = settings.operating_threshold
    if not isinstance(op_rule, str):
        rules.append(("fixed", float(op_rule), "fixed"))
    rows = [threshold_row(name, choose_threshold(vy, vp, rule, tgt), y, p, on) for name, rule, on in rules]
    op_name = op_rule if isinstance(op_rule, str) else "fixed"
    op_row = next(r for r in rows if r["name"] == op_name)
    return rows, op_name, op_row


def _binary_baseline(
    y: np.ndarray, base: np.ndarray, settings: EvaluationSpec, auroc: float, b_ci: list | None, diff_ci: list | None
) -> tuple[dict, dict]:
    """(baseline block, comparison): the baseline at the operating rule chosen on the test set."""
    tgt = settings.target_sensitivity
    op_rule = settings.operating_threshold
    b_thr = choose_threshold(y, base, op_rule if isinstance(op_rule, str) else float(op_rule), tgt)
    b_pred = (base >= b_thr).astype(int)
    b_auc = _auc_or_nan(y, base)
    baseline = {
        "auroc": b_auc,
        "auroc_ci": b_ci,
        "auprc": _ap_or_nan(y, base),
        "macro_f1": float(f1_score(y, b_pred, labels=[0, 1], average="macro", zero_division=0)),
        "brier": float(brier_score_loss(y, base, labels=[0, 1])),
        "threshold": b_thr,
    }
    comparison = {
        "metric": "auroc",
        "model": auroc,
        "baseline": b_auc,
        "difference": auroc - b_auc,
        "ci": diff_ci,
        "auroc_difference": auroc - b_auc,
        "auroc_difference_ci": diff_ci,
    }
    return baseline, comparison
