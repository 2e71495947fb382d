"""The omop task's models: L1 (LASSO) logistic regression, PatientLevelPrediction's default, as the baseline, and
XGBoost as the other candidate, trained on the same covariate matrix; the tabular modality's rule keeps the
simpler one unless XGBoost is better by more than its uncertainty.

Both are saved as the tabular models are (XGBoost UBJ, JSON coefficients; a folder of two with ``chosen.json``),
so the tabular readers (``predict_tabular``, ``top_contributions``) use them. The tabular trainers are imported
from ``meddiag_pipelines.flat.models`` until they move to a core module (the layering rule: see the report)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from meddiag_pipelines.atomic import atomic_write_json
from meddiag_pipelines.flat.models import CHOSEN, choose_model, train_xgboost, validation_score
from meddiag_pipelines.logistic import save_logistic
from meddiag_pipelines.specs import TrainingSpec

# C = 1 / the LASSO's penalty weight, on standardised covariates; chosen by cross-validated AUROC on the training
# rows (PLP searches its prior variance by cross-validation too).
L1_C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3)
L1_CV_FOLDS = 3


def _standardiser(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scale = X.std(axis=0)
    scale[scale == 0] = 1.0
    return X.mean(axis=0), scale


def _lasso(c: float) -> LogisticRegression:
    return LogisticRegression(C=c, l1_ratio=1.0, solver="liblinear", max_iter=2000)


def cross_validated_c(X: np.ndarray, y: np.ndarray, seed: int) -> tuple[float, dict[float, float]]:
    """The C of :data:`L1_C_GRID` with the best mean AUROC over ``L1_CV_FOLDS`` stratified folds."""
    folds = list(StratifiedKFold(L1_CV_FOLDS, shuffle=True, random_state=seed).split(X, y))
    scores = {}
    for c in L1_C_GRID:
        scores[c] = float(
            np.mean(
                [
                    validation_score(y[held], _lasso(c).fit(X[fit], y[fit]).predict_proba(X[held])[:, 1])
                    for fit, held in folds
                ]
            )
        )
    return max(scores, key=scores.get), scores


def train_l1_logistic(X_train, y_train, X_val, y_val, out_dir: Path, feature_names: list[str], seed: int) -> dict:
    """LASSO logistic regression on standardised covariates, C cross-validated on the training rows, then refitted
    on them; scored on validation. Saved as the tabular logistic model's JSON (mean, scale, coefficients)."""
    X_train, X_val = np.asarray(X_train, dtype=np.float64), np.asarray(X_val, dtype=np.float64)
    mean, scale = _standardiser(X_train)
    Z_train, Z_val = (X_train - mean) / scale, (X_val - mean) / scale
    c, cv_scores = cross_validated_c(Z_train, y_train, seed)
    model = _lasso(c).fit(Z_train, y_train)
    meta = {
        "name": "l1_logistic_regression",
        "n_classes": 2,
        "feature_names": feature_names,
        "params": {
            "C": c,
            "penalty": "l1",
            "cv_auroc": {str(k): v for k, v in cv_scores.items()},
            "nonzero_coefficients": int(np.count_nonzero(model.coef_)),
        },
        "val_score": validation_score(y_val, model.predict_proba(Z_val)[:, 1]),
        "recalibration": None,
    }
    return save_logistic(out_dir, model, mean, scale, meta)


def train_omop_models(
    X_train, y_train, X_val, y_val, settings: TrainingSpec, out_dir: Path, feature_names: list[str]
) -> dict:
    """XGBoost and the L1 baseline into ``out_dir/xgboost`` and ``out_dir/logistic``; the meta of the one the
    tabular rule keeps (``choose_model``: cross-validated on small data), with both validation scores."""
    metas = {
        "xgboost": train_xgboost(X_train, y_train, X_val, y_val, 2, settings, out_dir / "xgboost", feature_names),
        "logistic": train_l1_logistic(
            X_train, y_train, X_val, y_val, out_dir / "logistic", feature_names, settings.seed
        ),
    }
    selection = choose_model(X_train, y_train, X_val, y_val, 2, metas, out_dir, settings.seed)
    chosen = selection["chosen"]
    scores = {k: m["val_score"] for k, m in metas.items()}
    atomic_write_json(out_dir / CHOSEN, {"chosen": chosen, "val_auroc": scores, "selection": selection})
    params = {"chosen": chosen, **{f"val_auroc_{k}": v for k, v in scores.items()}, **metas[chosen]["params"]}
    return {**metas[chosen], "params": params, "selection": selection}
