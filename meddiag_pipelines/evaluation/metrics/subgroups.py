"""Per-subgroup rows of ``metrics.json`` for each subgroup column, for every kind of task."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from meddiag_pipelines.evaluation.metrics.binary import _auc_or_nan
from meddiag_pipelines.evaluation.metrics.bootstrap import bootstrap_auroc_ci
from meddiag_pipelines.evaluation.metrics.inputs import EvaluationInput
from meddiag_pipelines.evaluation.metrics.thresholds import threshold_row
from meddiag_pipelines.specs import EvaluationSpec

TOO_FEW = "too few to judge"
MISSING = "missing"


def subgroup_values(values: np.ndarray) -> np.ndarray:
    """Values as strings; None, NaN and empty strings become "missing"."""
    out = []
    for v in np.asarray(values, dtype=object).ravel():
        if (
            v is None
            or (isinstance(v, (float, np.floating)) and math.isnan(v))
            or (isinstance(v, str) and not v.strip())
        ):
            out.append(MISSING)
        else:
            out.append(str(v))
    return np.asarray(out, dtype=object)


def _subgroups(inp: EvaluationInput, kind: str, y: np.ndarray, P: np.ndarray, overall: dict, s: EvaluationSpec) -> dict:
    result: dict[str, list[dict]] = {}
    for ci, (column, raw) in enumerate(sorted(inp.subgroups.items())):
        vals = subgroup_values(raw)
        if vals.size != y.shape[0]:
            raise ValueError(f"subgroup column {column!r} has {vals.size} values for {y.shape[0]} test rows")
        rows = []
        for vi, value in enumerate(sorted(set(vals.tolist()))):
            mask = vals == value
            n = int(mask.sum())
            row: dict[str, Any] = {"value": value, "n": n}
            too_few = n < s.min_subgroup_n
            if kind == "binary":
                row.update(_binary_subgroup(y[mask], P[mask], overall, s, [s.seed, ci, vi], too_few))
            elif kind == "multiclass":
                pred = P[mask].argmax(axis=1)
                row["accuracy"] = None if too_few else float(accuracy_score(y[mask], pred))
                row["macro_f1"] = None if too_few else float(f1_score(y[mask], pred, average="macro", zero_division=0))
                row["status"] = TOO_FEW if too_few else "ok"
                if too_few:
                    row["reason"] = f"n < {s.min_subgroup_n}"
            else:
                ys, ps = y[mask], P[mask]
                aucs = [_auc_or_nan(ys[:, j], ps[:, j]) for j in range(ys.shape[1]) if 0 < ys[:, j].sum() < n]
                ok = not too_few and bool(aucs)
                row["auroc"] = float(np.mean(aucs)) if ok else None
                row["status"] = "ok" if ok else TOO_FEW
                if not ok:
                    row["reason"] = f"n < {s.min_subgroup_n}" if too_few else "no label with both outcomes"
            rows.append(row)
        result[column] = rows
    return result


def _binary_subgroup(y: np.ndarray, p: np.ndarray, overall: dict, s: EvaluationSpec, seed: Any, too_few: bool) -> dict:
    n = y.size
    n_pos = int(y.sum())
    row: dict[str, Any] = {"n_positive": n_pos, "prevalence": n_pos / n if n else None}
    one_class = n_pos == 0 or n_pos == n
    if too_few or one_class:
        row.update(
            auroc=None,
            auroc_ci=None,
            auroc_difference=None,
            calibration_in_the_large=None,
            sensitivity=None,
            specificity=None,
            flag_below=False,
            status=TOO_FEW,
            reason=f"n < {s.min_subgroup_n}" if too_few else "only one outcome present",
        )
        return row
    auc = float(roc_auc_score(y, p))
    ci = bootstrap_auroc_ci(y, p, s.n_bootstrap, seed)
    thr = overall["operating_threshold"]["value"]
    t = threshold_row("operating", thr, y, p, "fixed")
    overall_auc = overall["auroc"]
    row.update(
        auroc=auc,
        auroc_ci=ci,
        auroc_difference=auc - overall_auc if overall_auc is not None and math.isfinite(overall_auc) else None,
        calibration_in_the_large=float(y.mean() - p.mean()),
        sensitivity=t["sensitivity"],
        specificity=t["specificity"],
        flag_below=bool(ci is not None and overall_auc is not None and ci[1] < overall_auc),
        status="ok",
    )
    return row
