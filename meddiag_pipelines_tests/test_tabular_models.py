import json

import numpy as np
import polars as pl
from sklearn.metrics import roc_auc_score

from meddiag_pipelines.defs.assets.tabular import _tabular_predictor, model_inputs
from meddiag_pipelines.tabular.features import fit_plan, transform
from meddiag_pipelines.tabular.models import top_contributions, train_logistic, train_xgboost
from meddiag_pipelines_tests.conftest import bundled_frame


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
    for trainer, out in ((lambda *a: train_xgboost(*a[:5], heart_spec.training.model_copy(update={"trials": 1}), *a[5:]), "xgb"),
                         (train_logistic, "lr")):  # fmt: skip
        trainer(X.to_numpy()[:n_fit], y[:n_fit], X.to_numpy()[n_fit:], y[n_fit:], 2, tmp_path / out, X.columns)
        fitted = _tabular_predictor(plan.as_dict())(tmp_path / out, test)
        from_json = _tabular_predictor(reread)(tmp_path / out, test)
        np.testing.assert_allclose(from_json, fitted, rtol=1e-6)
        assert roc_auc_score(test["HeartDisease"] == "1", from_json) > 0.75  # misaligned columns gave ~0.6
    top = top_contributions(tmp_path / "xgb", model_inputs(tmp_path / "xgb", test.head(2), reread))
    assert len(top) == 2 and top[0] and all(name in X.columns for name, _ in top[0])
