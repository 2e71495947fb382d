import json

import numpy as np
import polars as pl
from sklearn.metrics import roc_auc_score

from meddiag_pipelines.flat import models
from meddiag_pipelines.flat.features import fit_plan, transform
from meddiag_pipelines.flat.models import (
    CHOSEN,
    SELECTION_Z,
    cross_validated,
    read_meta,
    top_contributions,
    train_logistic,
    train_tabular_models,
    train_xgboost,
)
from meddiag_pipelines.specs import TaskSpec, TrainingSpec
from meddiag_pipelines.split import fold_groups
from meddiag_pipelines.tabular.modality import _tabular_predictor, model_inputs
from meddiag_pipelines_tests.conftest import bundled_frame

SEARCH = TrainingSpec(trials=3, timeout_s=60, max_rounds=200)
NAMES = [f"x{i}" for i in range(6)]


def test_a_plan_read_back_from_json_scores_exactly_like_the_fitted_one(heart_spec, tmp_path):
    """Registry plans are JSON with sorted keys, so their categorical columns come back in another order than
    they were fitted in; scoring must still feed every model column by name."""
    frame = bundled_frame("heart_disease").with_columns(pl.col("HeartDisease").cast(pl.String))
    train, test = frame.head(600), frame.tail(318)
    plan = fit_plan(train, heart_spec)
    reread = json.loads(json.dumps(plan.as_dict(), sort_keys=True))
    assert list(reread["categorical"]) != list(plan.categorical)  # the hazard is real for this data
    X = transform(train, plan)
    y = (train["HeartDisease"] == "1").to_numpy().astype(int)
    n_fit = 450
    for trainer, out in (
        (lambda *a: train_xgboost(*a[:5], heart_spec.training.model_copy(update={"trials": 1}), *a[5:]), "xgb"),
        (train_logistic, "lr"),
    ):
        trainer(X.to_numpy()[:n_fit], y[:n_fit], X.to_numpy()[n_fit:], y[n_fit:], 2, tmp_path / out, X.columns)
        fitted = _tabular_predictor(plan.as_dict())(tmp_path / out, test)
        from_json = _tabular_predictor(reread)(tmp_path / out, test)
        np.testing.assert_allclose(from_json, fitted, rtol=1e-6)
        assert roc_auc_score(test["HeartDisease"] == "1", from_json) > 0.75  # misaligned columns gave ~0.6
    top = top_contributions(tmp_path / "xgb", model_inputs(tmp_path / "xgb", test.head(2), reread))
    assert len(top) == 2 and top[0] and all(name in X.columns for name, _ in top[0])


def _weak_linear(seed: int, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """SYNTHETIC: a weak linear signal in two of six features, the rest noise."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6)).astype(np.float32)
    y = (rng.random(n) < 1 / (1 + np.exp(-(0.7 * X[:, 0] + 0.4 * X[:, 1])))).astype(int)
    return X, y


def test_xgboost_winning_validation_by_a_hair_on_small_noisy_data_is_not_chosen(tmp_path):
    """Issue 25 #11: on 300 + 100 rows XGBoost's best-of-search validation AUROC beats the baseline by 0.002;
    cross-validation over the 400 rows shows it worse, so the simpler baseline is kept."""
    X, y = _weak_linear(23)
    meta = train_tabular_models(X[:300], y[:300], X[300:], y[300:], 2, SEARCH, tmp_path, NAMES)
    params, selection = meta["params"], meta["selection"]
    assert 0 < params["val_auroc_xgboost"] - params["val_auroc_logistic"] < 0.01  # the hair
    assert selection["chosen"] == params["chosen"] == "logistic" and read_meta(tmp_path)["framework"] == "logistic"
    assert selection["evidence"] == "cross-validation" and selection["n_rows"] == 400 and selection["n_folds"] == 10
    assert selection["difference"] <= SELECTION_Z * selection["difference_se"]
    assert "the simpler logistic baseline kept" in selection["reason"]
    assert json.loads((tmp_path / CHOSEN).read_text())["selection"] == selection


def test_xgboost_is_chosen_where_it_wins_clearly(tmp_path):
    """An interaction with no linear signal: XGBoost's cross-validated advantage is many standard errors."""
    rng = np.random.default_rng(19)
    X = rng.normal(size=(600, 6)).astype(np.float32)
    y = (X[:, 0] * X[:, 1] + 0.2 * rng.normal(size=600) > 0).astype(int)
    meta = train_tabular_models(X[:450], y[:450], X[450:], y[450:], 2, SEARCH, tmp_path, NAMES)
    selection = meta["selection"]
    assert selection["chosen"] == "xgboost" and read_meta(tmp_path)["framework"] == "xgboost"
    assert selection["difference"] > max(0.2, SELECTION_Z * selection["difference_se"])
    assert selection["candidates"]["xgboost"]["score"] > 0.85 > 0.6 > selection["candidates"]["logistic"]["score"]


def test_above_the_cross_validation_size_the_choice_is_a_paired_bootstrap_of_validation(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "CV_BELOW_ROWS", 100)
    X, y = _weak_linear(23)
    selection = train_tabular_models(X[:300], y[:300], X[300:], y[300:], 2, SEARCH, tmp_path, NAMES)["selection"]
    assert selection["evidence"] == "validation" and selection["n_rows"] == 100 and selection["n_folds"] is None
    assert selection["chosen"] == "logistic" and 0 < selection["difference"] < selection["difference_se"]
    assert selection["candidates"]["xgboost"]["score"] == selection["validation"]["xgboost"]


def test_multiclass_choice_is_on_macro_auroc_with_a_class_too_rare_for_every_fold(tmp_path):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(300, 6)).astype(np.float32)
    y = np.digitize(X[:, 0] + 0.5 * rng.normal(size=300), [-0.5, 0.5]).astype(int)
    y[[10, 20, 250]] = 3  # three rows of a fourth class: absent from most folds' training or held-out rows
    meta = train_tabular_models(X[:240], y[:240], X[240:], y[240:], 4, SEARCH, tmp_path, NAMES)
    selection = meta["selection"]
    assert selection["metric"] == "macro one-vs-rest AUROC" and selection["evidence"] == "cross-validation"
    assert selection["chosen"] == "logistic" and selection["candidates"]["logistic"]["score"] > 0.75


def test_a_patients_rows_and_copied_rows_share_a_cross_validation_fold():
    spec = TaskSpec.model_validate({"name": "t", "modality": "tabular", "label": "y", "id": "rid", "patient_id": "pid"})
    rows = pl.DataFrame(
        {"rid": ["a", "b", "c", "d", "e"], "pid": ["p1", "p1", "p2", "p3", None], "f__x": [1.0, 2.0, 3.0, 4.0, 3.0]}
    )
    groups = fold_groups(rows, spec, ["f__x"])
    assert groups[0] == groups[1] and groups[2] == groups[4] and len(set(groups[[0, 2, 3]])) == 3
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 2))
    y = (X[:, 0] + rng.normal(size=200) > 0).astype(int)
    metas = {
        "xgboost": {"params": models._xgb_params(2, {"max_depth": 2}, 0), "best_iteration": 9},
        "logistic": {"params": {"C": 1.0}},
    }
    grouped = cross_validated(X, y, 2, metas, 0, np.arange(200) // 2)
    assert "one patient's rows" in grouped["method"] and grouped["n_folds"] == 10
    assert "one patient's rows" not in cross_validated(X, y, 2, metas, 0, np.arange(200))["method"]


def test_one_row_of_a_class_gives_no_cross_validation():
    """The fold that holds it out trains on one class, the others cannot score: the validation split decides."""
    X = np.random.default_rng(2).normal(size=(50, 2))
    y = np.zeros(50, dtype=int)
    y[7] = 1
    metas = {
        "xgboost": {"params": models._xgb_params(2, {}, 0), "best_iteration": 2},
        "logistic": {"params": {"C": 1.0}},
    }
    assert cross_validated(X, y, 2, metas, 0) is None
