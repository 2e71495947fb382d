"""Monitoring wired into the task graph (issue 28), end to end on the bundled UCI heart disease task: the reference
frozen with the version, drift and the estimate per scored batch (WARN on a shifted batch), a batch to score with a
missing column (blocking ERROR), a labels-only batch joined to the predictions (realised AUROC equal to sklearn's on
the prediction file), a breach (ERROR, scoring stopped, a retrain requested by the breach sensor)."""

import json

import dagster as dg
import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from meddiag_pipelines.defs.assets.monitoring import (
    DRIFT_CHECK,
    REALISED_CHECK,
    SCHEMA_CHECK,
    MonitoringOutcome,
    check_results,
)
from meddiag_pipelines.defs.automation.monitoring import build_breach_sensor
from meddiag_pipelines.defs.build import build_definitions
from meddiag_pipelines.defs.resources.storage import MeddiagStorage
from meddiag_pipelines.ingestion.batches import (
    ingest_new_batches,
    reconcile,
    validate_pending_batches,
)
from meddiag_pipelines.ingestion.warehouse import Warehouse
from meddiag_pipelines.monitoring.drift import evidently_drift
from meddiag_pipelines.monitoring.labels import breach_checks
from meddiag_pipelines.monitoring.reference import load_reference
from meddiag_pipelines.specs import BATCH_COLUMN, PromotionSpec
from meddiag_pipelines.tabular.readers import read_tabular_batch
from meddiag_pipelines.update import run_task_in_process
from meddiag_pipelines.validation.suites import validate_tabular
from meddiag_pipelines_tests.conftest import bundled_frame, land, synthetic_records

TASK, ID, LABEL = "heart_disease", "record_id", "HeartDisease"


def run(spec, layout) -> tuple[dg.ExecuteInProcessResult, dict]:
    defs = build_definitions([spec], layout.local)
    with dg.instance_for_test() as instance:
        result = run_task_in_process(defs, spec, instance, raise_on_error=False)
    checks = {e.check_name: e for e in result.get_asset_check_evaluations() if e.asset_key.path[-1] == "predictions"}
    return result, checks


def entries(layout) -> dict[str, dict]:
    return {e["batch"]: e for e in json.loads((layout.reports(TASK) / "monitoring.json").read_text())}


def unlabelled(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(pl.lit(None, pl.String).alias(LABEL))


def breach_request(spec, layout):
    sensor = build_breach_sensor(spec)
    with dg.build_sensor_context(resources={"storage": MeddiagStorage(data_dir=str(layout.local))}) as context:
        return sensor(context)


def preset_decisions(reference: pl.DataFrame, current: pl.DataFrame, types: dict[str, str]) -> dict[str, tuple]:
    """An Evidently ``Report`` of ``DataDriftPreset`` (defaults): per column (method, threshold, score, drifted)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    names = list(types)
    definition = DataDefinition(
        numerical_columns=[c for c in names if types[c] == "numeric"],
        categorical_columns=[c for c in names if types[c] == "categorical"],
    )
    snapshot = (
        Report([DataDriftPreset(columns=names)], include_tests=True)
        .run(
            Dataset.from_pandas(current.to_pandas(), data_definition=definition),
            Dataset.from_pandas(reference.to_pandas(), data_definition=definition),
        )
        .dict()
    )
    failed = {t["metric_config"]["metric_id"] for t in snapshot["tests"] if t["status"] == "FAIL"}
    return {
        m["config"]["column"]: (m["config"]["method"], m["config"]["threshold"], float(m["value"]), m["id"] in failed)
        for m in snapshot["metrics"]
        if m["config"].get("type", "").endswith(":ValueDrift")
    }


@pytest.mark.parametrize("n_reference", [300, 1500])  # Evidently's rule switches tests at 1,000 reference rows
def test_drift_decisions_equal_an_evidently_report(n_reference):
    rng = np.random.default_rng(n_reference)

    def frame(n: int, shift: float) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "x": rng.normal(shift, 1, n),
                "y": rng.gamma(2 + shift, 1, n),
                "c": rng.choice(["a", "b", "c"], n, p=[0.5 - shift / 4, 0.3, 0.2 + shift / 4]),
                "b": rng.choice(["0", "1"], n, p=[0.7 - shift / 4, 0.3 + shift / 4]),
            }
        )

    types = {"x": "numeric", "y": "numeric", "c": "categorical", "b": "categorical"}
    reference = frame(n_reference, 0.0)
    for current in (frame(150, 0.0), frame(150, 0.8)):
        ours = evidently_drift(reference, current, types)
        expected = preset_decisions(reference, current, types)
        got = {c: (r["method"], r["threshold"], r["score"], r["drifted"]) for c, r in ours["columns"].items()}
        assert got.keys() == expected.keys() == set(types)
        for column, (method, threshold, score, drifted) in expected.items():
            assert got[column][0] == method and got[column][1] == threshold and got[column][3] == drifted
            assert np.isclose(got[column][2], score, rtol=1e-9, atol=1e-12)
    assert ours["dataset_drift"] is True  # the shifted batch, by Evidently's own tests


def test_a_labels_batch_is_kept_out_of_the_records_and_a_bad_one_is_quarantined(synthetic_spec, layout):
    frame = synthetic_records(60, seed=1)
    land(layout, "synthetic_risk", "b1", frame)
    land(layout, "synthetic_risk", "b2", frame.head(10).select("rid", "outcome"), filename="labels.parquet")
    blank = frame.head(5).select("rid", pl.lit(None, pl.String).alias("outcome"))
    land(layout, "synthetic_risk", "b3", blank, filename="labels.csv")
    warehouse = Warehouse(layout)
    ingest = ingest_new_batches(synthetic_spec, layout, warehouse, read_tabular_batch)
    records, _ = validate_pending_batches(synthetic_spec, layout, warehouse, validate_tabular)
    assert ingest.labels == ["b2"] and ingest.ingested == ["b1"]
    assert records.height == 60 and set(records[BATCH_COLUMN].to_list()) == {"b1"}  # never records, never trained
    status = dict(warehouse.ledger("synthetic_risk").select("batch_id", "status").iter_rows())
    assert status == {"b1": "validated", "b2": "labels", "b3": "quarantined"}
    problem = next(q["problem"] for q in ingest.quarantined if q["batch"] == "b3")
    assert "5 row(s) have an empty id or label" in problem and "r0" not in problem
    counts = reconcile(synthetic_spec, warehouse)
    assert counts["labels_batches"] == 1 and counts["labels_rows"] == 10 and counts["landed_batches"] == 3


def test_the_realised_check_passes_on_too_few_labels_and_says_so():
    verdict = breach_checks({"n": 12, "n_positive": 0, "auroc": None}, {"auroc": 0.9}, PromotionSpec(), 30)
    outcome = MonitoringOutcome(realised=[{"batch": "b7", "model_version": "v1", **verdict}])
    realised = next(r for r in check_results(outcome, {}) if r.check_name == REALISED_CHECK)
    assert realised.passed and realised.severity == dg.AssetCheckSeverity.ERROR
    assert realised.description == "no breach of the gate's criteria; batch b7: too few labels to judge: n 12 < 30"


@pytest.mark.slow
def test_monitoring_through_the_task_graph(heart_spec, layout):
    # Generous margins: the first labels must not breach; the inverted ones below must.
    spec = heart_spec.model_copy(
        update={
            "promotion": heart_spec.promotion.model_copy(
                update={"margin": 0.3, "max_subgroup_drop": 1.0, "slope_band": (0.01, 100.0)}
            )
        }
    )
    frame = bundled_frame(TASK).with_columns(pl.col(LABEL).cast(pl.String)).sample(fraction=1.0, shuffle=True, seed=3)
    train, same, shifted, narrow = frame[:700], frame[700:780], frame[780:860], frame[860:900]
    land(layout, TASK, "batch_0001", train)
    land(layout, TASK, "batch_0002", unlabelled(same))
    result, checks = run(spec, layout)
    assert result.success
    version = json.loads((layout.local / "models" / TASK / "champion.json").read_text())["version"]
    reference = load_reference(layout.local / "models" / TASK / version)  # frozen and published with the version
    assert reference.meta["n_train"] > 0 and "Cholesterol" in reference.types and reference.predictions is not None
    entry = entries(layout)["batch_0002"]
    assert entry["model_version"] == version and entry["realised"] is None and entry["n_rows"] == 80
    assert entry["drift"]["dataset_drift"] is False and set(entry["drift"]["columns"]) == set(reference.types)
    assert entry["estimated"]["metric"] == "auroc" and 0.5 < entry["estimated"]["auroc"] <= 1
    assert checks[DRIFT_CHECK].passed and checks[SCHEMA_CHECK].passed and checks[REALISED_CHECK].passed
    assert (layout.reports(TASK) / "monitoring.html").is_file()
    scored = next(
        e.materialization for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == "predictions"
    )
    assert scored.metadata["monitoring_report"].value == f"reports/{TASK}/monitoring.html"
    card = (layout.local / "models" / TASK / version / "model_card.md").read_text()
    assert "\n## Change-control plan\n" in card and "| first model: test AUROC at least | 0.8 |" in card

    # A batch to score without a column the champion was trained with, and a shifted one.
    land(layout, TASK, "batch_0003", narrow.drop("Cholesterol", LABEL))  # cases to score, without their label column
    moved = shifted.with_columns(
        pl.col("Age") + 25,
        pl.col("MaxHR") - 50,
        pl.col("Oldpeak") + 2,
        pl.lit("ASY").alias("ChestPainType"),
        pl.lit("Flat").alias("ST_Slope"),
        pl.lit("Y").alias("ExerciseAngina"),
        pl.lit("M").alias("Sex"),
    )
    land(layout, TASK, "batch_0004", unlabelled(moved))
    result, checks = run(spec, layout)
    assert not result.success  # the blocking schema check stops the run
    schema = checks[SCHEMA_CHECK]
    assert not schema.passed and schema.severity == dg.AssetCheckSeverity.ERROR and schema.blocking
    assert "batch batch_0003 (file records.csv): missing column(s) ['Cholesterol']" in schema.description
    assert "batch_0003" not in entries(layout)
    assert not list((layout.local / "predictions" / TASK).glob("batch_0003/*.parquet"))  # not scored
    drift = checks[DRIFT_CHECK]
    assert not drift.passed and drift.severity == dg.AssetCheckSeverity.WARN and "batch_0004" in drift.description
    assert entries(layout)["batch_0004"]["drift"]["dataset_drift"] is True

    # Labels that arrive later, for the cases of batch_0002: a labels batch, kept out of the records.
    land(layout, TASK, "batch_0005", same.select(ID, LABEL), filename="labels.csv")
    result, checks = run(spec, layout)
    assert result.success and checks[SCHEMA_CHECK].passed  # a refused batch is reported once per version
    ledger = MeddiagStorage(data_dir=str(layout.local)).warehouse.ledger(TASK)
    assert ledger.filter(pl.col("batch_id") == "batch_0005")["status"].to_list() == ["labels"]
    realised = entries(layout)["batch_0002"]["realised"]
    scored = pl.read_parquet(layout.local / "predictions" / TASK / "batch_0002" / f"{version}.parquet")
    truth = scored.join(same.select(pl.col(ID).alias("id"), LABEL), on="id")
    expected = roc_auc_score((truth[LABEL] == "1").to_numpy(), truth["probability"].to_numpy())
    assert realised["n"] == 80 and abs(realised["auroc"] - expected) < 1e-9
    assert realised["ci"][0] < realised["auroc"] < realised["ci"][1] and realised["breach"]["breach"] is False
    assert checks[REALISED_CHECK].passed
    assert isinstance(breach_request(spec, layout), dg.SkipReason)

    # Inverted outcomes for the shifted batch: a breach (ERROR), scoring stopped, a retrain requested.
    inverted = shifted.select(ID, pl.when(pl.col(LABEL) == "1").then(pl.lit("0")).otherwise(pl.lit("1")).alias(LABEL))
    land(layout, TASK, "batch_0006", inverted, filename="labels.csv")
    land(layout, TASK, "batch_0007", unlabelled(frame[900:]))
    result, checks = run(spec, layout)
    breach = checks[REALISED_CHECK]
    assert not breach.passed and breach.severity == dg.AssetCheckSeverity.ERROR and breach.blocking
    assert "below the floor" in breach.description
    assert entries(layout)["batch_0004"]["realised"]["breach"]["breach"] is True
    assert "batch_0007" not in entries(layout)  # no scoring with a champion in breach
    request = breach_request(spec, layout)
    assert isinstance(request, dg.RunRequest) and request.run_key == f"{TASK}:breach:{version}"
    assert np.isclose(entries(layout)["batch_0002"]["realised"]["auroc"], expected)  # the earlier figure stays
