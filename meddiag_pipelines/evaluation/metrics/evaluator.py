"""The entry point: check an :class:`EvaluationInput`, compute every block, return ``metrics.json``'s content."""

from __future__ import annotations

from typing import Any

import numpy as np

from meddiag_pipelines.evaluation.metrics.binary import _binary
from meddiag_pipelines.evaluation.metrics.bootstrap import CONFIDENCE
from meddiag_pipelines.evaluation.metrics.inputs import EvaluationInput
from meddiag_pipelines.evaluation.metrics.jsonable import to_jsonable
from meddiag_pipelines.evaluation.metrics.multiclass import _multiclass
from meddiag_pipelines.evaluation.metrics.multilabel import _multilabel
from meddiag_pipelines.evaluation.metrics.subgroups import _subgroups
from meddiag_pipelines.specs import EvaluationSpec


def _check(inp: EvaluationInput) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    k = len(inp.classes)
    y = np.asarray(inp.y_true)
    P = np.asarray(inp.proba, dtype=float)
    B = None if inp.baseline_proba is None else np.asarray(inp.baseline_proba, dtype=float)
    if inp.kind not in ("binary", "multiclass", "multilabel"):
        raise ValueError(f"kind must be binary, multiclass or multilabel, got {inp.kind!r}")
    if y.shape[0] == 0:
        raise ValueError("no test rows to evaluate")
    if inp.kind == "binary":
        if k != 2:
            raise ValueError(f"binary tasks need classes [negative, positive], got {inp.classes}")
        if y.ndim != 1 or P.shape != y.shape:
            raise ValueError(f"binary: y_true and proba must both be (n,), got {y.shape} and {P.shape}")
    elif inp.kind == "multiclass":
        if y.ndim != 1 or P.shape != (y.shape[0], k):
            raise ValueError(f"multiclass: y_true (n,) and proba (n, {k}) expected, got {y.shape} and {P.shape}")
        if not np.allclose(P.sum(axis=1), 1.0, atol=1e-3):
            raise ValueError("multiclass: proba rows must sum to 1")
    else:
        if y.ndim != 2 or y.shape[1] != k or P.shape != y.shape:
            raise ValueError(f"multilabel: y_true and proba must both be (n, {k}), got {y.shape} and {P.shape}")
    if not np.all(np.isfinite(P)) or P.min() < 0 or P.max() > 1:
        raise ValueError("proba must be finite probabilities in [0, 1]")
    if inp.kind == "multiclass":
        if not np.all((y >= 0) & (y < k) & (y == np.round(y))):
            raise ValueError(f"multiclass: y_true must be class indices 0..{k - 1}")
    elif not np.all(np.isin(y, [0, 1])):
        raise ValueError("y_true must be 0/1")
    if B is not None:
        if B.shape != P.shape:
            raise ValueError(f"baseline_proba must have the shape of proba {P.shape}, got {B.shape}")
        if not np.all(np.isfinite(B)) or B.min() < 0 or B.max() > 1:
            raise ValueError("baseline_proba must be finite probabilities in [0, 1]")
    if (inp.val_y_true is None) != (inp.val_proba is None):
        raise ValueError("give both val_y_true and val_proba, or neither")
    if inp.val_proba is not None and np.asarray(inp.val_proba).shape[1:] != P.shape[1:]:
        raise ValueError("val_proba must have the per-row shape of proba")
    return y.astype(int), P, B


def evaluate(inp: EvaluationInput) -> dict:
    """All metrics for one model on its test set; the content of metrics.json (see the module docstring)."""
    s = inp.settings if isinstance(inp.settings, EvaluationSpec) else EvaluationSpec.model_validate(inp.settings)
    y, P, B = _check(inp)
    has_val = inp.val_y_true is not None and np.asarray(inp.val_y_true).shape[0] > 0
    head: dict[str, Any] = {
        "task": inp.task,
        "model_version": inp.model_version,
        "model_name": inp.model_name,
        "kind": inp.kind,
        "classes": list(inp.classes),
        "n_train": int(inp.n_train),
        "n_val": int(inp.n_val),
        "n_test": int(inp.n_test or y.shape[0]),
    }
    if inp.kind == "binary":
        val = (np.asarray(inp.val_y_true).astype(int), np.asarray(inp.val_proba, dtype=float)) if has_val else None
        block, base, comp = _binary(y, P, s, inp.classes, s.seed, val, B)
        block.pop("n")
        if base is not None:
            base = {"name": inp.baseline_name, **base}
        body = {**block, "baseline": base, "comparison": comp}
    elif inp.kind == "multiclass":
        body = _multiclass(inp, y, P, B, s)
    else:
        body = _multilabel(inp, y, P, B, s)
    settings = {
        **s.model_dump(),
        "confidence": CONFIDENCE,
        "ci_method": "stratified percentile bootstrap"
        if inp.kind != "multilabel"
        else "percentile bootstrap (per label stratified; macro figures resample rows)",
        "thresholds_chosen_on": "validation"
        if has_val and inp.kind != "multiclass"
        else ("argmax" if inp.kind == "multiclass" else "test"),
    }
    metrics = {
        **head,
        **body,
        "flow": dict(inp.flow),
        "missing_data": list(inp.missing_data),
        "shift": list(inp.shift),
        "subgroups": _subgroups(inp, inp.kind, y, P, body, s),
        "settings": settings,
    }
    return to_jsonable(metrics)
