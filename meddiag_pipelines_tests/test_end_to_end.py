"""The whole tabular graph in-process against a temporary data folder."""

import json

import dagster as dg
import polars as pl
import pytest

from meddiag_pipelines.defs.build import build_definitions
from meddiag_pipelines.update import run_task_in_process
from meddiag_pipelines_tests.conftest import land, synthetic_records

pytestmark = pytest.mark.slow


def materialize(spec, layout):
    defs = build_definitions([spec], layout.local)
    with dg.instance_for_test() as instance:
        result = run_task_in_process(defs, spec, instance, raise_on_error=False)
    return result


def test_task_end_to_end_then_new_batch(synthetic_spec, layout):
    task = synthetic_spec.name
    land(layout, task, "batch_0001", synthetic_records(600, seed=1))
    first = materialize(synthetic_spec, layout)
    assert first.success

    latest = layout.reports(task) / "latest"
    metrics = json.loads((latest / "metrics.json").read_text())
    for key in (
        "task",
        "model_version",
        "n_train",
        "n_val",
        "n_test",
        "auroc",
        "auroc_ci",
        "auprc",
        "brier",
        "accuracy",
        "macro_f1",
        "baseline",
        "calibration_slope",
        "decision_curve",
        "thresholds",
        "subgroups",
        "flow",
    ):
        assert key in metrics, key
    assert metrics["auroc"] > 0.8 and metrics["auroc_ci"][0] < metrics["auroc"] < metrics["auroc_ci"][1]
    assert metrics["baseline"]["name"] == "logistic_regression" and metrics["baseline"]["auroc"] > 0.8
    assert metrics["n_train"] + metrics["n_val"] + metrics["n_test"] == 600
    assert metrics["flow"]["validated_batches"] == 1
    html = (latest / "report.html").read_text()
    assert "https://" not in html and "data:image/png;base64," in html and "Model selection" in html
    selection = metrics["model_selection"]  # both candidates' figures and the rule, in metrics.json and the report
    assert selection["evidence"] == "cross-validation" and "one patient's rows" in selection["method"]
    assert {"xgboost": "xgboost", "logistic": "logistic_regression"}[selection["chosen"]] == metrics["model_name"]
    assert f"its standard error {selection['difference_se']:.3f} (2 x 5-fold" in html
    assert all(0.5 < selection["candidates"][k]["score"] <= 1 for k in ("xgboost", "logistic"))
    preds = pl.read_parquet(latest / "test_predictions.parquet")
    assert preds.columns == ["id", "label", "probability"] and preds.height == metrics["n_test"]

    registry = layout.local / "models" / task
    champion = json.loads((registry / "champion.json").read_text())
    manifest = json.loads((registry / champion["version"] / "manifest.json").read_text())
    assert manifest["decision"]["promote"] is True and manifest["batches"][0]["batch_id"] == "batch_0001"
    assert_reasons(manifest["decision"], "first model: AUROC", "clears the floor 0.6", "is compatible with the band")
    assert (registry / champion["version"] / "model" / "xgboost" / "model.ubj").exists()  # both models, one chosen
    assert manifest["model"]["params"]["chosen"] in ("xgboost", "logistic")
    splits_before = pl.read_parquet(latest / "test_predictions.parquet")["id"].to_list()

    # A second export: more labelled rows and three cases to score.
    second = synthetic_records(300, seed=2, start=600).with_columns(
        pl.when(pl.col("rid").is_in(["r600", "r601", "r602"])).then(None).otherwise(pl.col("outcome")).alias("outcome")
    )
    land(layout, task, "batch_0002", second)
    assert materialize(synthetic_spec, layout).success
    metrics2 = json.loads((latest / "metrics.json").read_text())
    assert metrics2["model_version"] != metrics["model_version"]
    test_ids = set(pl.read_parquet(latest / "test_predictions.parquet")["id"].to_list())
    assert set(splits_before) <= test_ids  # nobody moved out of the test split
    versions = sorted(p.name for p in registry.iterdir() if (p / "manifest.json").exists())
    assert len(versions) == 2
    newest = json.loads((registry / versions[-1] / "manifest.json").read_text())
    assert newest["parent_champion"] == champion["version"]
    # More rows of the same population: the candidate is non-inferior to the champion and takes its place.
    assert newest["decision"]["promote"] is True, newest["decision"]
    assert_reasons(
        newest["decision"],
        "AUROC difference vs champion",
        "is non-inferior at margin 0.01",
        "is compatible with the band",
    )
    # The old champion, re-scored on today's test split with its own feature plan, is still a good model:
    # a misaligned warehouse table or plan would show up here as a collapse.
    assert newest["decision"]["figures"]["champion_auroc"] > 0.8
    current = json.loads((registry / "champion.json").read_text())["version"]
    scored = pl.read_parquet(layout.predictions(task) / "batch_0002" / f"{current}.parquet")
    assert sorted(scored["id"].to_list()) == ["r600", "r601", "r602"]
    assert {"probability", "risk_band", "model_version", "top_features"} <= set(scored.columns)
    assert current == versions[-1] and scored["model_version"].unique().to_list() == [current]


def test_a_first_model_below_the_floor_is_published_refused_and_never_scores(synthetic_spec, layout):
    """The refusal path: the version is kept with its reason, champion.json never appears, nothing is scored."""
    task = synthetic_spec.name
    strict = synthetic_spec.model_copy(
        update={"promotion": synthetic_spec.promotion.model_copy(update={"auroc_floor": 0.99})}
    )
    records = synthetic_records(300, seed=4)
    land(
        layout,
        task,
        "batch_0001",
        records.with_columns(pl.when(pl.col("rid") == "r0").then(None).otherwise(pl.col("outcome")).alias("outcome")),
    )
    result = materialize(strict, layout)
    assert not result.success  # the blocking champion_fit_for_use check stops scoring
    registry = layout.local / "models" / task
    (version,) = [p for p in registry.iterdir() if (p / "manifest.json").exists()]
    decision = json.loads((version / "manifest.json").read_text())["decision"]
    assert decision["promote"] is False
    assert_reasons(decision, "first model: AUROC", "is below the floor 0.99")
    assert not (registry / "champion.json").exists() and not layout.predictions(task).exists()
    (shown,) = [
        e.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey([task, "champion"])
    ]
    assert shown["promoted"].value is False and "is below the floor 0.99" in shown["reasons"].value


def assert_reasons(decision: dict, *phrases: str) -> None:
    text = " | ".join(decision["reasons"])
    assert all(p in text for p in phrases), text


def test_bad_only_landing_trains_nothing_and_fails_no_step(synthetic_spec, layout):
    """Quarantine is how a bad batch is handled: with no validated rows the split says so and the steps after it
    are skipped (issue 24: they used to fail on a missing column)."""
    land(layout, synthetic_spec.name, "b1", synthetic_records(50, seed=1).drop("x2"))
    result = materialize(synthetic_spec, layout)
    assert result.success and not result.get_step_failure_events()
    skipped = {e.step_key for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_SKIPPED}
    assert f"{synthetic_spec.name}__features" in skipped
    assert (layout.quarantine(synthetic_spec.name) / "b1" / "reason.json").exists()
    assert not (layout.local / "models" / synthetic_spec.name).exists()


def test_evaluation_can_be_rematerialised_alone_after_the_version_is_published(synthetic_spec, layout):
    """The champion asset moves the candidate from staging into its version folder; a later click on
    `evaluation` alone must find the model there."""
    task = synthetic_spec.name
    land(layout, task, "batch_0001", synthetic_records(400, seed=3))
    defs = build_definitions([synthetic_spec], layout.local)
    with dg.instance_for_test() as instance:
        assert run_task_in_process(defs, synthetic_spec, instance).success
        assert not list((layout.local / "models" / task / ".staging").iterdir())
        again = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance, asset_selection=[dg.AssetKey([task, "evaluation"])]
        )
    assert again.success
    metrics = json.loads((layout.reports(task) / "latest" / "metrics.json").read_text())
    assert metrics["auroc"] > 0.75
