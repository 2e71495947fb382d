"""Tabular models: XGBoost (``hist``, CUDA when present) tuned by a bounded optuna search, and a regularised
logistic-regression baseline (:mod:`meddiag_pipelines.logistic`, shared with the image baseline). Both are saved in safe formats (XGBoost UBJ, JSON coefficients), never pickled.

A model folder holds ``model.json`` (what the model is, its classes and feature names) beside its weights.
:func:`train_tabular_models` trains both into one folder (``xgboost/``, ``logistic/``) and names the one chosen
by :func:`choose_model` in ``chosen.json``; every reader here takes either a model folder or such a folder of two.

The choice keeps the simpler logistic baseline unless XGBoost's AUROC advantage exceeds ``SELECTION_Z`` standard
errors. A validation split of a few hundred rows cannot tell models 0.01 apart (and XGBoost's score on it is the
best of its search), so below ``CV_BELOW_ROWS`` train+validation rows the advantage and its standard error come
from repeated stratified k-fold cross-validation over those rows, both models refitted with their tuned settings;
above it, from a paired bootstrap of the validation split. Figures: bench/README.md ("Model choice").
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import polars as pl
import xgboost as xgb
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from meddiag_pipelines.atomic import atomic_write_bytes, atomic_write_json
from meddiag_pipelines.device import training_threads, xgboost_device
from meddiag_pipelines.evaluation.metrics.jsonable import to_jsonable
from meddiag_pipelines.flat.distributed import cluster_fit, search_sample
from meddiag_pipelines.flat.features import FeaturePlan, transform
from meddiag_pipelines.logistic import (
    apply_recalibration,
    fit_recalibration,
    logistic_probabilities,
    standardised,
    standardiser,
    train_logistic,
    validation_score,
)
from meddiag_pipelines.specs import TrainingSpec

CHOSEN = "chosen.json"
CV_BELOW_ROWS = 20_000  # train+validation rows under which the choice is cross-validated (bench/README.md)
CV_FOLDS, CV_REPEATS = 5, 2
SELECTION_Z = 1.645  # one-sided 95%: XGBoost must beat the baseline by more than this many standard errors
VALIDATION_BOOTSTRAP = 200


def _xgb_params(n_classes: int, trial_params: dict, seed: int) -> dict:
    objective = (
        {"objective": "binary:logistic", "eval_metric": "logloss"}
        if n_classes == 2
        else {"objective": "multi:softprob", "eval_metric": "mlogloss", "num_class": n_classes}
    )
    return {
        "tree_method": "hist",
        "device": xgboost_device(),
        "seed": seed,
        "verbosity": 0,
        **objective,
        **trial_params,
    }


def _suggest(trial: optuna.Trial) -> dict:
    return {
        "max_depth": trial.suggest_int("max_depth", 2, 6),
        "eta": trial.suggest_float("eta", 0.01, 0.3, log=True),
        "min_child_weight": trial.suggest_float("min_child_weight", 1.0, 20, log=True),
        "subsample": trial.suggest_float("subsample", 0.6, 1.0),
        "colsample_bytree": trial.suggest_float("colsample_bytree", 0.5, 1.0),
        "lambda": trial.suggest_float("lambda", 1e-3, 10, log=True),
    }


def _predict(booster: xgb.Booster, data: xgb.DMatrix, n_classes: int) -> np.ndarray:
    proba = booster.predict(data, iteration_range=(0, booster.best_iteration + 1))
    return proba if n_classes > 2 else proba.reshape(-1)


def train_xgboost(
    X_train,
    y_train,
    X_val,
    y_val,
    n_classes: int,
    settings: TrainingSpec,
    out_dir: Path,
    feature_names: list[str],
    final_fit: Callable | None = None,
) -> dict:
    """Tune within ``settings.trials`` and ``settings.timeout_s``, keep the best, save to ``out_dir``.
    ``final_fit`` (:func:`meddiag_pipelines.flat.distributed.fit_on_cluster` bound to a client): tune on a
    sample of the training rows, then fit the best parameters on all of them with it."""
    start = time.perf_counter()
    X_train_all, y_train_all = X_train, y_train
    if final_fit is not None:
        X_train, y_train = search_sample(X_train, y_train, settings.seed)
    dtrain = xgb.QuantileDMatrix(X_train, label=y_train, feature_names=feature_names)
    dval = xgb.DMatrix(X_val, label=y_val, feature_names=feature_names)

    def fit(trial_params: dict) -> tuple[xgb.Booster, float]:
        booster = xgb.train(
            _xgb_params(n_classes, trial_params, settings.seed),
            dtrain,
            num_boost_round=settings.max_rounds,
            evals=[(dval, "val")],
            early_stopping_rounds=settings.early_stopping_rounds,
            verbose_eval=False,
        )
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
        booster = final_fit(
            _xgb_params(n_classes, best_params, settings.seed),
            X_train_all,
            y_train_all,
            X_val,
            y_val,
            settings,
            feature_names,
        )
        score = validation_score(y_val, _predict(booster, dval, n_classes))
    recalibration = fit_recalibration(y_val, _predict(booster, dval, n_classes)) if n_classes == 2 else None
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / "model.ubj", bytes(booster.save_raw(raw_format="ubj")))
    meta = {
        "framework": "xgboost",
        "name": "xgboost",
        "n_classes": n_classes,
        "feature_names": feature_names,
        "params": _xgb_params(n_classes, best_params, settings.seed),
        "best_iteration": booster.best_iteration,
        "val_score": score,
        "n_trials": len(study.trials),
        "seconds": time.perf_counter() - start,
        "recalibration": recalibration,
        "device": xgboost_device(),
        "distributed": final_fit is not None,
        "search_rows": len(y_train),
    }
    atomic_write_json(out_dir / "model.json", meta)
    return meta


def train_tabular_models(
    X_train,
    y_train,
    X_val,
    y_val,
    n_classes: int,
    settings: TrainingSpec,
    out_dir: Path,
    feature_names: list[str],
    groups: np.ndarray | None = None,
) -> dict:
    """XGBoost and the logistic baseline on the same rows; the meta of the one :func:`choose_model` keeps, whose
    params say which won and both validation scores, and whose ``selection`` holds the evidence (the baseline's
    own meta is in ``out_dir/logistic``). ``groups``: per train then validation row, equal for rows that must
    share a cross-validation fold (one patient's; see :func:`meddiag_pipelines.split.fold_groups`)."""
    with cluster_fit(settings, len(y_train)) as final_fit:
        xgboost_meta = train_xgboost(
            X_train, y_train, X_val, y_val, n_classes, settings, out_dir / "xgboost", feature_names, final_fit
        )
    metas = {
        "xgboost": xgboost_meta,
        "logistic": train_logistic(
            X_train, y_train, X_val, y_val, n_classes, out_dir / "logistic", feature_names, recalibrate=True
        ),
    }
    selection = choose_model(X_train, y_train, X_val, y_val, n_classes, metas, out_dir, settings.seed, groups)
    chosen = selection["chosen"]
    scores = {k: m["val_score"] for k, m in metas.items()}
    atomic_write_json(out_dir / CHOSEN, {"chosen": chosen, "val_auroc": scores, "selection": selection})
    params = {
        "chosen": chosen,
        **{f"val_auroc_{k}": v for k, v in scores.items()},
        "val_auroc_margin": abs(scores["xgboost"] - scores["logistic"]),
        **metas[chosen]["params"],
    }
    return {**metas[chosen], "params": params, "selection": selection}


# -- model choice ---------------------------------------------------------------------------------------------------
def choose_model(
    X_train,
    y_train,
    X_val,
    y_val,
    n_classes: int,
    metas: dict[str, dict],
    out_dir: Path,
    seed: int,
    groups: np.ndarray | None = None,
) -> dict:
    """``logistic`` unless XGBoost's AUROC (multi-class: macro one-vs-rest) advantage exceeds ``SELECTION_Z``
    standard errors; ``metas``: both models as trained (and saved in ``out_dir``) on these rows. Returns the
    evidence, the rule and the decision, JSON-safe (an undefined figure is None)."""
    start = time.perf_counter()
    evidence = None
    if len(y_train) + len(y_val) < CV_BELOW_ROWS:
        X, y = np.concatenate([X_train, X_val]), np.concatenate([y_train, y_val])
        evidence = cross_validated(X, y, n_classes, metas, seed, groups)
    if evidence is None:
        probas = {k: predict_tabular(out_dir / k, X_val) for k in metas}
        evidence = validation_bootstrap(y_val, probas, seed)
    advantage, se = evidence["difference"], evidence["difference_se"]
    wins = math.isfinite(advantage) and math.isfinite(se) and advantage > SELECTION_Z * se
    chosen = "xgboost" if wins else "logistic"
    metric = "AUROC" if n_classes == 2 else "macro one-vs-rest AUROC"
    verdict = (
        f"xgboost chosen: its {metric} advantage over the logistic baseline, {advantage:+.3f}, exceeds "
        if wins
        else f"the simpler logistic baseline kept: xgboost's {metric} advantage, {advantage:+.3f}, does not exceed "
    )
    reason = f"{verdict}{SELECTION_Z} x its standard error {se:.3f} ({evidence['method']})"
    return to_jsonable(
        {
            "chosen": chosen,
            "reason": reason,
            "metric": metric,
            "z": SELECTION_Z,
            "cv_below_rows": CV_BELOW_ROWS,
            "validation": {k: m["val_score"] for k, m in metas.items()},
            **evidence,
            "seconds": round(time.perf_counter() - start, 3),
        }
    )


def cross_validated(
    X: np.ndarray, y: np.ndarray, n_classes: int, metas: dict[str, dict], seed: int, groups: np.ndarray | None = None
) -> dict | None:
    """Both models refitted with their tuned settings (XGBoost: its parameters and number of rounds, so no
    held-out fold stops it early; the baseline: its C) on each fold of ``CV_REPEATS`` x ``CV_FOLDS``-fold
    stratified cross-validation, grouped where rows share a group. Standard errors of the mean fold score and
    of the mean paired difference, corrected for the folds' overlapping training rows (Nadeau and Bengio 2003).
    None when fewer than two folds can be scored (too few rows of a class)."""
    grouped = groups is not None and len(np.unique(groups)) < len(y)
    splitter = StratifiedGroupKFold if grouped else StratifiedKFold
    pairs = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for repeat in range(CV_REPEATS):
            folds = splitter(CV_FOLDS, shuffle=True, random_state=seed + repeat)
            pairs += [
                _fold_scores(X, y, n_classes, metas, fit, held)
                for fit, held in folds.split(X, y, groups if grouped else None)
            ]
    scores = np.array([p for p in pairs if all(map(math.isfinite, p))]).reshape(-1, 2)
    if len(scores) < 2:
        return None
    correction = 1 / len(scores) + 1 / (CV_FOLDS - 1)  # Nadeau-Bengio: held-out / training rows = 1 / (k - 1)

    def se(values: np.ndarray) -> float:
        return float(math.sqrt(correction * values.var(ddof=1)))

    difference = scores[:, 0] - scores[:, 1]
    return {
        "method": f"{CV_REPEATS} x {CV_FOLDS}-fold cross-validation over {len(y):,} train+validation rows"
        + (", one patient's rows (or copies of a row) in one fold" if grouped else ""),
        "evidence": "cross-validation",
        "n_rows": len(y),
        "n_folds": len(scores),
        "candidates": {
            k: {"score": float(scores[:, i].mean()), "se": se(scores[:, i])}
            for i, k in enumerate(("xgboost", "logistic"))
        },
        "difference": float(difference.mean()),
        "difference_se": se(difference),
    }


def _fold_scores(
    X: np.ndarray, y: np.ndarray, n_classes: int, metas: dict[str, dict], fit: np.ndarray, held: np.ndarray
) -> tuple[float, float]:
    """(XGBoost, baseline) scores on the held-out rows of one fold, each refitted on its other rows; NaN when
    those rows hold one class only."""
    if len(np.unique(y[fit])) < 2:
        return math.nan, math.nan
    tuned = metas["xgboost"]
    params = {**tuned["params"], "nthread": training_threads()}  # the same count whatever the load: see device.py
    booster = xgb.train(params, xgb.DMatrix(X[fit], label=y[fit]), num_boost_round=tuned["best_iteration"] + 1)
    p_xgb = booster.predict(xgb.DMatrix(X[held]))
    X_fit, X_held = np.asarray(X[fit], dtype=np.float64), np.asarray(X[held], dtype=np.float64)
    mean, scale = standardiser(X_fit)
    lasso = {"l1_ratio": 1.0, "solver": "liblinear"} if metas["logistic"]["params"].get("penalty") == "l1" else {}
    baseline = LogisticRegression(C=metas["logistic"]["params"]["C"], max_iter=2000, **lasso).fit(
        (X_fit - mean) / scale, y[fit]
    )
    p_lr = np.zeros((len(held), n_classes))
    p_lr[:, baseline.classes_] = baseline.predict_proba((X_held - mean) / scale)  # a class absent from the fold: 0
    if n_classes == 2:
        p_xgb, p_lr = p_xgb.reshape(-1), p_lr[:, 1]
    return validation_score(y[held], p_xgb), validation_score(y[held], p_lr)


def validation_bootstrap(
    y_val: np.ndarray, probas: dict[str, np.ndarray], seed: int, pair: tuple[str, str] = ("xgboost", "logistic")
) -> dict:
    """The models' validation scores, their paired difference (``pair``: challenger minus incumbent), and standard
    errors from ``VALIDATION_BOOTSTRAP`` resamples of the validation rows (the same rows for both models)."""
    challenger, incumbent = pair
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(y_val), len(y_val)) for _ in range(VALIDATION_BOOTSTRAP)]
    resampled = {k: np.array([validation_score(y_val[i], p[i]) for i in draws]) for k, p in probas.items()}
    full = {k: validation_score(y_val, p) for k, p in probas.items()}
    return {
        "method": f"paired bootstrap of the {len(y_val):,} validation rows",
        "evidence": "validation",
        "n_rows": len(y_val),
        "n_folds": None,
        "candidates": {k: {"score": full[k], "se": float(np.nanstd(resampled[k]))} for k in pair},
        "difference": full[challenger] - full[incumbent],
        "difference_se": float(np.nanstd(resampled[challenger] - resampled[incumbent])),
    }


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
        return apply_recalibration(proba, meta.get("recalibration"))
    return logistic_probabilities(meta, X)


def _linear_contributions(meta: dict, X: np.ndarray) -> np.ndarray:
    """Per row and feature, coefficient x standardised value toward the positive (or the predicted) class."""
    terms = standardised(meta, X)[:, None, :] * np.asarray(meta["coef"])[None, :, :]  # (n, k or 1, features)
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
        contribs = booster.predict(
            xgb.DMatrix(X, feature_names=meta["feature_names"]),
            pred_contribs=True,
            iteration_range=(0, meta["best_iteration"] + 1),
        )
        if contribs.ndim == 3:  # multi-class: explain the predicted class
            contribs = contribs[np.arange(len(X)), contribs.sum(axis=2).argmax(axis=1)]
        contribs = contribs[:, :-1]  # the last column is the bias
    else:
        contribs = _linear_contributions(meta, X)
    names = meta["feature_names"]
    order = np.argsort(-contribs, axis=1)[:, :k]
    return [[(names[j], float(contribs[i, j])) for j in row] for i, row in enumerate(order)]
