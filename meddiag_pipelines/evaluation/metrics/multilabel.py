"""The multilabel block of ``metrics.json``: one binary block per label, macro figures by a row bootstrap."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from meddiag_pipelines.evaluation.metrics.binary import _binary
from meddiag_pipelines.evaluation.metrics.bootstrap import _bootstrap, _Scores, percentile_ci
from meddiag_pipelines.evaluation.metrics.inputs import EvaluationInput
from meddiag_pipelines.specs import EvaluationSpec


def _multilabel(inp: EvaluationInput, Y: np.ndarray, P: np.ndarray, B: np.ndarray | None, s: EvaluationSpec) -> dict:
    n, k = Y.shape
    per_label, baselines = [], []
    preds = np.zeros_like(Y)
    b_preds = np.zeros_like(Y)
    val_Y = None if inp.val_y_true is None else np.asarray(inp.val_y_true).astype(int)
    val_P = None if inp.val_proba is None else np.asarray(inp.val_proba, dtype=float)
    for j, label in enumerate(inp.classes):
        val = (val_Y[:, j], val_P[:, j]) if val_Y is not None and val_P is not None else None
        block, base, _ = _binary(
            Y[:, j], P[:, j], s, ["absent", "present"], [s.seed, j], val, None if B is None else B[:, j]
        )
        preds[:, j] = P[:, j] >= block["operating_threshold"]["value"]
        row = {"label": label, **block}
        if base is not None:
            b_preds[:, j] = B[:, j] >= base["threshold"]
            row["baseline_auroc"] = base["auroc"]
            baselines.append(base)
        per_label.append(row)
    present = [j for j in range(k) if 0 < Y[:, j].sum() < n]
    auroc = float(np.mean([per_label[j]["auroc"] for j in present])) if present else float("nan")
    auprc = float(np.mean([per_label[j]["auprc"] for j in present])) if present else float("nan")

    res = _multilabel_bootstrap(Y, P, B, present, s)
    cm = sum(np.asarray(r["confusion_matrix"]["matrix"]) for r in per_label)
    macro_f1 = float(f1_score(Y, preds, average="macro", zero_division=0))
    out = {
        "auroc": auroc,
        "auroc_ci": percentile_ci(res["auc"]) if res else None,
        "auprc": auprc,
        "auprc_ci": percentile_ci(res["ap"]) if res else None,
        "brier": float(np.mean([r["brier"] for r in per_label])),
        "accuracy": float(accuracy_score(Y, preds)),
        "macro_f1": macro_f1,
        "per_label": per_label,
        "confusion_matrix": {"labels": ["absent", "present"], "matrix": cm.tolist(), "threshold": None},
        "baseline": None,
        "comparison": None,
    }
    if B is not None:
        b_auroc = float(np.mean([baselines[j]["auroc"] for j in present])) if present else float("nan")
        out["baseline"] = {
            "name": inp.baseline_name,
            "auroc": b_auroc,
            "auroc_ci": percentile_ci(res["b_auc"]) if res else None,
            "auprc": float(np.mean([baselines[j]["auprc"] for j in present])) if present else None,
            "macro_f1": float(f1_score(Y, b_preds, average="macro", zero_division=0)),
            "brier": float(np.mean([b["brier"] for b in baselines])),
        }
        diff_ci = percentile_ci(res["diff"]) if res else None
        out["comparison"] = {
            "metric": "macro_auroc",
            "model": auroc,
            "baseline": b_auroc,
            "difference": auroc - b_auroc,
            "ci": diff_ci,
            "auroc_difference": auroc - b_auroc,
            "auroc_difference_ci": diff_ci,
        }
    return out


def _multilabel_bootstrap(
    Y: np.ndarray, P: np.ndarray, B: np.ndarray | None, present: list[int], s: EvaluationSpec
) -> dict:
    """Row bootstrap (unstratified: labels co-occur), paired for model and baseline, of the macro AUROC and AUPRC
    over the labels with both outcomes present; empty when there is none."""
    n, k = Y.shape
    sc = [_Scores(P[:, j]) for j in present]
    bsc = [_Scores(B[:, j]) for j in present] if B is not None else None

    def stat(idx: np.ndarray, order: np.ndarray) -> dict:
        aucs, aps, b_aucs = [], [], []
        for i, j in enumerate(present):
            a, ap = sc[i].auc_ap(idx, None, Y[:, j])
            aucs.append(a)
            aps.append(ap)
            if bsc is not None:
                b_aucs.append(bsc[i].auc_ap(idx, None, Y[:, j])[0])
        out = {"auc": np.nanmean(np.stack(aucs, 1), 1), "ap": np.nanmean(np.stack(aps, 1), 1)}
        if bsc is not None:
            out["b_auc"] = np.nanmean(np.stack(b_aucs, 1), 1)
            out["diff"] = out["auc"] - out["b_auc"]
        return out

    res: dict = {}
    if present:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = _bootstrap(np.zeros(n, dtype=int), s.n_bootstrap, [s.seed, k], stat)
    return res
