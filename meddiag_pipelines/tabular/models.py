"""Tabular models: XGBoost (``hist``, CUDA when present) tuned by a bounded optuna search, and a regularised
logistic-regression baseline. Both are saved in safe formats (XGBoost UBJ, JSON coefficients), never pickled.

A model folder holds ``model.json`` (what the model is, its classes and feature names) beside its weights.
:func:`train_tabular_models` trains both into one folder (``xgboost/``, ``logistic/``) and keeps the better on
validation AUROC in ``chosen.json`` (a tie goes to the baseline, as for text tasks); every reader here takes
either a model folder or such a folder of two.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import optuna
import polars as pl
import xgboost as xgb
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from meddiag_pipelines.atomic import atomic_write_bytes, atomic_write_json
from meddiag_pipelines.probability import logit, softmax
from meddiag_pipelines.specs import TrainingSpec
from meddiag_pipelines.device import xgboost_device
from meddiag_pipelines.tabular.distributed import cluster_fit, search_sample
from meddiag_pipelines.tabular.features import FeaturePlan, transform

BASELINE_C_GRID = (0.01, 0.1, 1.0, 10.0)
CHOSEN = "chosen.json"


def validation_score(y: np.ndarray, proba: np.ndarray) -> float:
    """AUROC for binary tasks, macro one-vs-rest AUROC for multi-class over the classes the validation split
    holds (as the evaluator does: a rare class absent from it is skipped); NaN when it is undefined."""
    if proba.ndim == 1:
        return float(roc_auc_score(y, proba)) if 0 < y.sum() < y.size else float("nan")
    present = [c for c in range(proba.shape[1]) if 0 < (y == c).sum() < y.size]
    if not present:
        return float(np.mean(proba.argmax(1) == y))
    return float(np.mean([roc_auc_score(y == c, proba[:, c]) for c in present]))


def _xgb_params(n_classes: int, trial_params: dict, seed: int) -> dict:
    objective = {"objective": "binary:logistic", "eval_metric": "logloss"} if n_classes == 2 else {
        "objective": "multi:softprob", "eval_metric": "mlogloss", "num_class": n_classes}  # fmt: skip
    return {"tree_method": "hist", "device": xgboost_device(), "seed": seed, "verbosity": 0, **objective, **trial_params}


def _suggest(trial: optuna.Trial) -> dict:
    return {
        "max_depth": trial.suggest_int("max_depth", 2, 6),
        "eta": trial.suggest_float("eta", 0.01, 0.3, log=True),
        "min_child_weight": trial.suggest_float("min_child_weight", 1.0, 20, log=True),
        "subsample": trial.suggest_float("subsample", 0.6, 1.0),
        "colsample_bytree": trial.suggest_float("colsample_bytree", 0.5, 1.0),
        "lambda": trial.suggest_float("lambda", 1e-3, 10, log=True),
    }


def fit_recalibration(y_val: np.ndarray, p_val: np.ndarray) -> dict:
    """Logistic recalibration (Platt scaling on the logit) fitted on validation: boosted trees stopped early
    tend to give too moderate probabilities, which the calibration-slope gate would rightly refuse."""
    model = LogisticRegression(C=1e4, max_iter=1000).fit(logit(p_val).reshape(-1, 1), y_val)
    return {"a": float(model.intercept_[0]), "b": float(model.coef_[0, 0])}


def _recalibrate(p: np.ndarray, recalibration: dict | None) -> np.ndarray:
    if not recalibration:
        return p
    return 1.0 / (1.0 + np.exp(-(recalibration["a"] + recalibration["b"] * logit(p))))


def _predict(booster: xgb.Booster, data: xgb.DMatrix, n_classes: int) -> np.ndarray:
    proba = booster.predict(data, iteration_range=(0, booster.best_iteration + 1))
    return proba if n_classes > 2 else proba.reshape(-1)


def train_xgboost(X_train, y_train, X_val, y_val, n_classes: int, settings: TrainingSpec, out_dir: Path,
                  feature_names: list[str], final_fit: Callable | None = None) -> dict:  # fmt: skip
    """Tune within ``settings.trials`` and ``settings.timeout_s``, keep the best, save to ``out_dir``.
    ``final_fit`` (:func:`meddiag_pipelines.tabular.distributed.fit_on_cluster` bound to a client): tune on a
    sample of the training rows, then fit the best parameters on all of them with it."""
    start = time.perf_counter()
    X_train_all, y_train_all = X_train, y_train
    if final_fit is not None:
        X_train, y_train = search_sample(X_train, y_train, settings.seed)
    dtrain = xgb.QuantileDMatrix(X_train, label=y_train, feature_names=feature_names)
    dval = xgb.DMatrix(X_val, label=y_val, feature_names=feature_names)

    def fit(trial_params: dict) -> tuple[xgb.Booster, float]:
        booster = xgb.train(
            _xgb_params(n_classes, trial_params, settings.seed), dtrain, num_boost_round=settings.max_rounds,
            evals=[(dval, "val")], early_stopping_rounds=settings.early_stopping_rounds, verbose_eval=False,
        )  # fmt: skip
        return booster, validation_score(y_val, _predict(booster, dval, n_classes))

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=settings.seed))
    kept: dict[str, tuple[xgb.Booster, float]] = {}  # the best trial's booster, so it is not fitted twice

    def objective(trial: optuna.Trial) -> float:
        booster, score = fit(_suggest(trial))
        if not math.isnan(score) and ("best" not in kept or score > kept["best"][1]):  # optuna's choice: first best
            kept["best"] = (booster, score)
        return score

    study.optimize(objective, n_trials=settings.trials, timeout=settings.timeout_s)
    best_params = study.best_params  # raises, as before, when no trial gave a score
    booster, score = kept["best"]
    if final_fit is not None:
        booster = final_fit(_xgb_params(n_classes, best_params, settings.seed), X_train_all, y_train_all, X_val, y_val,
                            settings, feature_names)  # fmt: skip
        score = validation_score(y_val, _predict(booster, dval, n_classes))
    recalibration = fit_recalibration(y_val, _predict(booster, dval, n_classes)) if n_classes == 2 else None
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / "model.ubj", bytes(booster.save_raw(raw_format="ubj")))
    meta = {
        "framework": "xgboost", "name": "xgboost", "n_classes": n_classes, "feature_names": feature_names,
        "params": _xgb_params(n_classes, best_params, settings.seed), "best_iteration": booster.best_iteration,
        "val_score": score, "n_trials": len(study.trials), "seconds": time.perf_counter() - start,
        "recalibration": recalibration, "device": xgboost_device(),
        "distributed": final_fit is not None, "search_rows": len(y_train),
    }  # fmt: skip
    atomic_write_json(out_dir / "model.json", meta)
    return meta


def train_logistic(X_train, y_train, X_val, y_val, n_classes: int, out_dir: Path, feature_names: list[str],
                   recalibrate: bool = False) -> dict:  # fmt: skip
    """Standardised L2 logistic regression, C chosen on validation; saved as JSON coefficients. Computed in
    float64: float32 features near the top of their range would overflow a float32 mean or variance.
    ``recalibrate`` (binary): logistic recalibration on validation, as for XGBoost, for a model that may become
    the candidate: a strongly regularised C chosen for its AUROC gives probabilities far too moderate."""
    X_train, X_val = np.asarray(X_train, dtype=np.float64), np.asarray(X_val, dtype=np.float64)
    mean = X_train.mean(axis=0)
    scale = X_train.std(axis=0)
    scale[scale == 0] = 1.0
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
        "framework": "logistic", "name": "logistic_regression", "n_classes": n_classes, "feature_names": feature_names,
        "params": {"C": c, "penalty": "l2"}, "val_score": score, "mean": mean.tolist(), "scale": scale.tolist(),
        "coef": model.coef_.tolist(), "intercept": model.intercept_.tolist(),
        "recalibration": recalibration,
    }  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "model.json", meta)
    return meta


def train_tabular_models(X_train, y_train, X_val, y_val, n_classes: int, settings: TrainingSpec, out_dir: Path,
                         feature_names: list[str]) -> dict:  # fmt: skip
    """XGBoost and the logistic baseline on the same rows; the meta of the one chosen on validation AUROC, whose
    params say which won and both scores (the baseline's own meta is in ``out_dir/logistic``)."""
    with cluster_fit(settings, len(y_train)) as final_fit:
        xgboost_meta = train_xgboost(X_train, y_train, X_val, y_val, n_classes, settings, out_dir / "xgboost",
                                     feature_names, final_fit)  # fmt: skip
    metas = {
        "xgboost": xgboost_meta,
        "logistic": train_logistic(X_train, y_train, X_val, y_val, n_classes, out_dir / "logistic", feature_names,
                                   recalibrate=True),
    }  # fmt: skip
    scores = {k: m["val_score"] for k, m in metas.items()}
    chosen = "xgboost" if scores["xgboost"] > scores["logistic"] else "logistic"  # NaN or a tie: the baseline
    atomic_write_json(out_dir / CHOSEN, {"chosen": chosen, "val_auroc": scores})
    params = {"chosen": chosen, **{f"val_auroc_{k}": v for k, v in scores.items()},
              "val_auroc_margin": abs(scores["xgboost"] - scores["logistic"]), **metas[chosen]["params"]}  # fmt: skip
    return {**metas[chosen], "params": params}


def model_folder(model_dir: Path) -> Path:
    """The folder holding ``model.json``: ``model_dir`` itself, or the chosen one of a folder of two."""
    model_dir = Path(model_dir)
    if (model_dir / "model.json").is_file() or not (model_dir / CHOSEN).is_file():
        return model_dir
    return model_dir / json.loads((model_dir / CHOSEN).read_text())["chosen"]


def read_meta(model_dir: Path) -> dict:
    return json.loads((model_folder(model_dir) / "model.json").read_text())


def load_booster(model_dir: Path) -> xgb.Booster:
    model_dir = model_folder(model_dir)
    booster = xgb.Booster()
    booster.load_model(bytearray((model_dir / "model.ubj").read_bytes()))
    booster.set_param({"device": xgboost_device()})
    return booster


def model_inputs(model_dir: Path, rows: pl.DataFrame, plan: dict) -> np.ndarray:
    """Rows transformed with the model's own feature plan, columns picked *by name* in the model's order (a plan
    read back from JSON may list its categorical columns in another order than the one it was fitted with)."""
    matrix = transform(rows, FeaturePlan.from_dict(plan))
    return matrix.select(read_meta(model_dir)["feature_names"]).to_numpy()


def predict_tabular(model_dir: Path, X: np.ndarray) -> np.ndarray:
    """Binary: P(positive) per row; multi-class: (n, k) class probabilities."""
    meta = read_meta(model_dir)
    if meta["framework"] == "xgboost":
        booster = load_booster(model_dir)
        proba = _predict(booster, xgb.DMatrix(X, feature_names=meta["feature_names"]), meta["n_classes"])
        return _recalibrate(proba, meta.get("recalibration"))
    z = _standardised(meta, X) @ np.asarray(meta["coef"]).T + np.asarray(meta["intercept"])
    if meta["n_classes"] == 2:
        return _recalibrate(1.0 / (1.0 + np.exp(-z.reshape(-1))), meta.get("recalibration"))
    return softmax(z)


def _standardised(meta: dict, X: np.ndarray) -> np.ndarray:
    return (np.asarray(X, dtype=np.float64) - np.asarray(meta["mean"])) / np.asarray(meta["scale"])


def _linear_contributions(meta: dict, X: np.ndarray) -> np.ndarray:
    """Per row and feature, coefficient x standardised value toward the positive (or the predicted) class."""
    terms = _standardised(meta, X)[:, None, :] * np.asarray(meta["coef"])[None, :, :]  # (n, k or 1, features)
    if terms.shape[1] == 1:
        return terms[:, 0]
    scores = terms.sum(axis=2) + np.asarray(meta["intercept"])
    return terms[np.arange(len(X)), scores.argmax(axis=1)]


def top_contributions(model_dir: Path, X: np.ndarray, k: int = 3) -> list[list[tuple[str, float]]]:
    """Per row, the k features that pushed the score up the most: SHAP values for XGBoost, coefficient x
    standardised value for the logistic model (positive class; multi-class: the predicted class)."""
    meta = read_meta(model_dir)
    if meta["framework"] == "xgboost":
        booster = load_booster(model_dir)
        contribs = booster.predict(xgb.DMatrix(X, feature_names=meta["feature_names"]), pred_contribs=True,
                                   iteration_range=(0, meta["best_iteration"] + 1))  # fmt: skip
        if contribs.ndim == 3:  # multi-class: explain the predicted class
            contribs = contribs[np.arange(len(X)), contribs.sum(axis=2).argmax(axis=1)]
        contribs = contribs[:, :-1]  # the last column is the bias
    else:
        contribs = _linear_contributions(meta, X)
    names = meta["feature_names"]
    order = np.argsort(-contribs, axis=1)[:, :k]
    return [[(names[j], float(contribs[i, j])) for j in row] for i, row in enumerate(order)]
