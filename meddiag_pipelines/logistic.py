"""The standardised L2 logistic regression, the baseline of the tabular and image tasks (the image baseline reads
pooled pixels), saved as JSON coefficients in ``model.json``; the validation AUROC that chooses its ``C`` (and
the tabular models); and the logistic recalibration a probability may be given on validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from meddiag_pipelines.atomic import atomic_write_json
from meddiag_pipelines.probability import logit, softmax

BASELINE_C_GRID = (0.01, 0.1, 1.0, 10.0)


def validation_score(y: np.ndarray, proba: np.ndarray) -> float:
    """AUROC for binary tasks, macro one-vs-rest AUROC for multi-class over the classes the validation split
    holds (as the evaluator does: a rare class absent from it is skipped); NaN when it is undefined."""
    if proba.ndim == 1:
        return float(roc_auc_score(y, proba)) if 0 < y.sum() < y.size else float("nan")
    present = [c for c in range(proba.shape[1]) if 0 < (y == c).sum() < y.size]
    if not present:
        return float(np.mean(proba.argmax(1) == y))
    return float(np.mean([roc_auc_score(y == c, proba[:, c]) for c in present]))


def fit_recalibration(y_val: np.ndarray, p_val: np.ndarray) -> dict:
    """Logistic recalibration (Platt scaling on the logit) fitted on validation: boosted trees stopped early
    tend to give too moderate probabilities, which the calibration-slope gate would rightly refuse."""
    model = LogisticRegression(C=1e4, max_iter=1000).fit(logit(p_val).reshape(-1, 1), y_val)
    return {"a": float(model.intercept_[0]), "b": float(model.coef_[0, 0])}


def apply_recalibration(p: np.ndarray, recalibration: dict | None) -> np.ndarray:
    """``p`` through :func:`fit_recalibration`'s fit, sigmoid(a + b * logit(p)); ``p`` as it is without one."""
    if not recalibration:
        return p
    return 1.0 / (1.0 + np.exp(-(recalibration["a"] + recalibration["b"] * logit(p))))


def standardiser(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and standard deviations (1 for a constant column)."""
    scale = X.std(axis=0)
    scale[scale == 0] = 1.0
    return X.mean(axis=0), scale


def train_logistic(
    X_train, y_train, X_val, y_val, n_classes: int, out_dir: Path, feature_names: list[str], recalibrate: bool = False
) -> dict:
    """Standardised L2 logistic regression, C chosen on validation; saved as JSON coefficients. Computed in
    float64: float32 features near the top of their range would overflow a float32 mean or variance.
    ``recalibrate`` (binary): logistic recalibration on validation, as for XGBoost, for a model that may become
    the candidate: a strongly regularised C chosen for its AUROC gives probabilities far too moderate."""
    X_train, X_val = np.asarray(X_train, dtype=np.float64), np.asarray(X_val, dtype=np.float64)
    mean, scale = standardiser(X_train)
    best = None
    for c in BASELINE_C_GRID:
        model = LogisticRegression(C=c, max_iter=2000).fit((X_train - mean) / scale, y_train)
        proba = model.predict_proba((X_val - mean) / scale)
        score = validation_score(y_val, proba[:, 1] if n_classes == 2 else proba)
        if best is None or score > best[0]:
            best = (score, c, model)
    score, c, model = best
    recalibration = None
    if recalibrate and n_classes == 2:
        recalibration = fit_recalibration(y_val, model.predict_proba((X_val - mean) / scale)[:, 1])
    meta = {
        "name": "logistic_regression",
        "n_classes": n_classes,
        "feature_names": feature_names,
        "params": {"C": c, "penalty": "l2"},
        "val_score": score,
        "recalibration": recalibration,
    }
    return save_logistic(out_dir, model, mean, scale, meta)


def save_logistic(out_dir: Path, model: LogisticRegression, mean: np.ndarray, scale: np.ndarray, meta: dict) -> dict:
    """``model.json``: the fitted coefficients with the standardisation they expect, beside ``meta`` (name,
    classes, feature names, params, scores): what :func:`logistic_probabilities` reads. No pickle."""
    meta = {
        "framework": "logistic",
        **meta,
        "mean": mean.tolist(),
        "scale": scale.tolist(),
        "coef": model.coef_.tolist(),
        "intercept": model.intercept_.tolist(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "model.json", meta)
    return meta


def standardised(meta: dict, X: np.ndarray) -> np.ndarray:
    return (np.asarray(X, dtype=np.float64) - np.asarray(meta["mean"])) / np.asarray(meta["scale"])


def logistic_probabilities(meta: dict, X: np.ndarray) -> np.ndarray:
    """The logistic model of ``meta`` (its model.json) on ``X``: binary P(positive) per row (recalibrated when it
    was), multi-class (n, k) class probabilities."""
    z = standardised(meta, X) @ np.asarray(meta["coef"]).T + np.asarray(meta["intercept"])
    if meta["n_classes"] == 2:
        return apply_recalibration(1.0 / (1.0 + np.exp(-z.reshape(-1))), meta.get("recalibration"))
    return softmax(z)


def predict_logistic(model_dir: Path, X: np.ndarray) -> np.ndarray:
    """:func:`logistic_probabilities` of the model :func:`train_logistic` saved in ``model_dir``."""
    return logistic_probabilities(json.loads((Path(model_dir) / "model.json").read_text()), X)
