"""Every step after validation is total on validated tabular data: names XGBoost refuses, values it cannot
hold, identifier-like text, heavy missingness; and the model chosen is the one scored and explained."""

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from meddiag_pipelines.flat.features import FeaturePlan, fit_plan, missing_data_table, model_column_names, transform
from meddiag_pipelines.flat.models import CHOSEN, read_meta, top_contributions
from meddiag_pipelines.split import SPLIT_COLUMN, assign_split, check_split
from meddiag_pipelines.tabular.modality import (
    _tabular_predictor,
    explain_rows,
    feature_table,
    fit_model,
    model_inputs,
    tabular_trainer,
)
from meddiag_pipelines.validation.suites import validate_tabular
from meddiag_pipelines_tests.conftest import synthetic_records

CANARY = "Zqxcanary"


def train_and_score(records: pl.DataFrame, spec, out: Path) -> dict:
    """The pure steps the graph runs after validation: split, features, both models, scoring, explanations."""
    split = assign_split(records, spec)
    check_split(split, spec)
    features, plan = feature_table(split, spec)
    meta = fit_model(spec, tabular_trainer(spec), features, out)
    plan_json = json.loads(json.dumps(plan.as_dict(), sort_keys=True))  # as the registry stores it
    rows = split.head(7)
    proba = _tabular_predictor(plan_json)(out, rows)
    assert np.isfinite(proba).all() and proba.shape[0] == rows.height
    return {"plan": plan, "meta": meta, "top": explain_rows(out, rows, plan_json)}


def test_model_names_are_safe_unique_ignoring_case_and_deterministic():
    names = ["dose[mg]", "dose(mg)", "a<b", "flag=<0.01", "Sex=M", "Sex=m", "x", "x"]
    out = model_column_names(names)
    assert out == model_column_names(names)
    assert not any(ch in n for n in out for ch in "[]<")
    assert len({n.casefold() for n in out}) == len(names)
    assert out[0] == "dose(mg)" and out[1] == "dose(mg)~2" and out[4:6] == ["Sex=M", "Sex=m~2"]


def test_brackets_and_less_than_in_names_and_values_train_and_are_reported_by_their_own_names(synthetic_spec, tmp_path):
    frame = synthetic_records(400, seed=11).with_columns(
        (pl.col("x1") * 3).alias("dose[mg]"),
        pl.col("x2").alias("ratio<1"),
        pl.when(pl.col("x1") > 0).then(pl.lit("<0.01")).otherwise(pl.lit("0.5")).alias("crp_flag"),
        pl.when(pl.col("x2") > 0).then(pl.lit("High")).otherwise(pl.lit("high")).alias("level"),
    )
    result = train_and_score(frame, synthetic_spec, tmp_path / "m")
    plan = result["plan"]
    assert {"dose[mg]", "ratio<1", "crp_flag=<0.01", "level=High", "level=high"} <= set(plan.feature_names)
    xgb_names = read_meta(tmp_path / "m" / "xgboost")["feature_names"]
    assert xgb_names == plan.model_names and not any(ch in n for n in xgb_names for ch in "[]<")
    reported = {n for row in result["top"] for n, _ in row}
    assert reported <= set(plan.feature_names) and reported & {"dose[mg]", "x1"}


def test_patient_names_never_become_features(synthetic_spec, tmp_path):
    """Six visits per patient: each name is frequent enough to be a one-hot level, yet it names a person."""
    frame = synthetic_records(420, seed=12).with_columns((pl.col("rid").str.slice(1).cast(pl.Int64) // 6).alias("n"))
    frame = frame.with_columns(
        (pl.lit("p") + pl.col("n").cast(pl.String)).alias("pid"),
        (pl.lit(CANARY) + pl.col("n").cast(pl.String) + pl.lit(" Smith")).alias("patient_name"),
    ).drop("n")
    result = train_and_score(frame, synthetic_spec, tmp_path / "m")
    assert "identifier" in result["plan"].dropped["patient_name"]
    stored = json.dumps(result["plan"].as_dict()) + "".join(
        (tmp_path / "m" / m / "model.json").read_text() for m in ("xgboost", "logistic")
    )
    assert CANARY not in stored and CANARY not in json.dumps(result["top"])
    assert CANARY not in json.dumps(missing_data_table(frame, result["plan"]))


@pytest.mark.parametrize(
    ("values", "why"),
    [
        ([f"{CANARY}{i}" for i in range(300)], "distinct values"),
        ([f"{CANARY} presented with chest pain radiating to the left arm {i % 3}" for i in range(300)], "free text"),
    ],
)
def test_free_text_and_identifier_columns_are_dropped_unless_declared(synthetic_spec, values, why):
    frame = synthetic_records(300, seed=13).with_columns(pl.Series("note", values))
    plan = fit_plan(frame, synthetic_spec)
    assert why in plan.dropped["note"] and not any(CANARY in n for n in plan.feature_names)
    declared = fit_plan(frame, synthetic_spec.model_copy(update={"categorical": ["note"]}))
    assert "note" in declared.categorical and "note" not in declared.dropped


def test_categories_shared_by_many_patients_stay_features(synthetic_spec):
    frame = synthetic_records(300, seed=14).with_columns(
        pl.Series("site", ["Cleveland", "Hungary", "Switzerland", "Long Beach"] * 75)
    )
    plan = fit_plan(frame, synthetic_spec)
    assert plan.dropped == {} and len(plan.categorical["site"]) == 5


def test_a_plan_saved_before_the_name_map_still_scores():
    plan = FeaturePlan.from_dict(
        {"numeric": ["x1"], "medians": {"x1": 0.0}, "indicators": [], "categorical": {"group": ["A", "__other__"]}}
    )
    assert plan.model_names == ["x1", "group=A", "group=__other__"] and plan.dropped == {}
    assert transform(pl.DataFrame({"x1": [1.0], "group": ["A"]}), plan).row(0) == (1.0, 1.0, 0.0)


def test_an_undeclared_column_over_max_null_rate_is_kept_and_reported_not_quarantined(synthetic_spec, tmp_path):
    frame = synthetic_records(300, seed=15).with_columns(
        pl.when(pl.col("x1") > 0.5).then(pl.col("x2")).otherwise(None).alias("troponin")
    )  # ~70% missing
    assert frame["troponin"].null_count() / frame.height > synthetic_spec.max_null_rate
    assert validate_tabular(frame, synthetic_spec) == []
    result = train_and_score(frame, synthetic_spec, tmp_path / "m")
    assert "troponin" in result["plan"].numeric and "troponin__missing" in result["plan"].feature_names
    row = {r["feature"]: r for r in missing_data_table(frame, result["plan"], synthetic_spec.max_null_rate)}["troponin"]
    assert "max_null_rate" in row["handling"] and "kept" in row["handling"]


def test_a_declared_column_keeps_the_hard_null_check(synthetic_spec):
    frame = synthetic_records(100, seed=16).with_columns(pl.lit(None, dtype=pl.Float64).alias("x1"))
    failures = validate_tabular(frame, synthetic_spec)
    assert [(f.column, f.expectation) for f in failures] == [("x1", "expect_column_values_to_not_be_null")]


def test_check_failures_carry_counts_only(synthetic_spec):
    frame = synthetic_records(60, seed=17).with_columns(
        pl.when(pl.col("rid") == "r3").then(pl.lit("maybe")).otherwise(pl.col("outcome")).alias("outcome")
    )
    spec = synthetic_spec.model_copy(update={"ranges": {"x2": (-0.5, 0.5)}})
    failures = {f.expectation: f for f in validate_tabular(frame, spec)}
    ranged = failures["expect_column_values_to_be_between"]
    assert ranged.column == "x2" and ranged.unexpected_count > 0 and ranged.examples == []
    domain = failures["expect_column_values_to_be_in_set"]
    assert domain.unexpected_count == 1 and domain.examples == [] and "maybe" not in domain.problem  # issue 24


def test_the_chosen_model_is_the_candidate(synthetic_spec, tmp_path):
    """A linear outcome: the baseline is kept and is the model scored, explained and reported."""
    result = train_and_score(synthetic_records(500, seed=18), synthetic_spec, tmp_path / "m")
    params = result["meta"]["params"]
    chosen = json.loads((tmp_path / "m" / CHOSEN).read_text())
    assert chosen["chosen"] == params["chosen"] == chosen["selection"]["chosen"] == "logistic"
    assert result["meta"]["framework"] == "logistic" and result["meta"]["val_score"] == params["val_auroc_logistic"]
    assert params["val_auroc_margin"] == pytest.approx(abs(params["val_auroc_xgboost"] - params["val_auroc_logistic"]))
    assert read_meta(tmp_path / "m")["framework"] == "logistic" and len(result["top"][0]) == 3


def test_an_interaction_lets_xgboost_win(synthetic_spec, tmp_path):
    rng = np.random.default_rng(19)
    frame = synthetic_records(800, seed=19)
    x1, x2 = frame["x1"].to_numpy(), frame["x2"].to_numpy()
    y = (x1 * x2 + 0.2 * rng.normal(size=len(x1))) > 0  # no linear signal at all
    frame = frame.with_columns(pl.Series("outcome", np.where(y, "yes", "no")))
    spec = synthetic_spec.model_copy(update={"training": synthetic_spec.training.model_copy(update={"trials": 4})})
    result = train_and_score(frame, spec, tmp_path / "m")
    assert result["meta"]["params"]["chosen"] == "xgboost" and result["meta"]["selection"]["difference"] > 0.1
    assert read_meta(tmp_path / "m")["framework"] == "xgboost"


def test_logistic_explanations_in_multiclass(synthetic_spec, tmp_path):
    frame = synthetic_records(400, seed=20).with_columns(
        pl.when(pl.col("x1") > 0.5).then(pl.lit("c")).otherwise(pl.col("outcome")).alias("outcome")
    )
    spec = synthetic_spec.model_copy(update={"positive": None, "classes": ["no", "yes", "c"]})
    split = assign_split(frame, spec)
    features, plan = feature_table(split, spec)
    fit_model(spec, tabular_trainer(spec), features, tmp_path / "m")
    X = model_inputs(tmp_path / "m" / "logistic", split.head(4), plan.as_dict())
    top = top_contributions(tmp_path / "m" / "logistic", X)
    assert len(top) == 4 and all(len(r) == 3 and n in plan.model_names for r in top for n, _ in r)


def test_the_features_step_warns_of_heavy_missingness_and_dropped_columns(synthetic_spec, capfd, tmp_path):
    import dagster as dg

    from meddiag_pipelines.defs.assets.task_assets import build_task_assets
    from meddiag_pipelines.defs.resources.storage import MeddiagStorage

    step = next(
        a
        for a in build_task_assets(synthetic_spec)
        if isinstance(a, dg.AssetsDefinition) and dg.AssetKey([synthetic_spec.name, "feature_plan"]) in a.keys
    )
    frame = synthetic_records(300, seed=21).with_columns(
        pl.when(pl.col("x1") > 0.5).then(pl.col("x2")).alias("troponin"),
        pl.Series("pname", [f"{CANARY}{i}" for i in range(300)]),
    )
    with dg.build_asset_context() as context:
        outputs = {
            o.output_name: o
            for o in step(
                context, storage=MeddiagStorage(data_dir=str(tmp_path)), split=assign_split(frame, synthetic_spec)
            )
        }
    warnings = [line for line in capfd.readouterr().err.splitlines() if " - WARNING - " in line]
    assert any("'troponin' is missing in" in w and "over max_null_rate" in w for w in warnings), warnings
    assert any("'pname' is not a feature" in w for w in warnings) and not any(CANARY in w for w in warnings)
    meta = outputs["features"].metadata
    assert "troponin" in meta["missing_data"].md_str and "pname" in meta["dropped_columns"].md_str
    assert CANARY not in json.dumps(outputs["feature_plan"].value)


def test_a_chosen_baseline_is_recalibrated_on_validation(synthetic_spec, tmp_path):
    """A strongly regularised C wins on AUROC but squeezes probabilities toward 0.5; as the candidate it must
    still pass the calibration-slope gate, so it is recalibrated on validation as XGBoost is."""
    from meddiag_pipelines.evaluation.metrics import calibration_intercept_slope

    records = synthetic_records(600, seed=22)
    result = train_and_score(records, synthetic_spec, tmp_path / "m")
    assert read_meta(tmp_path / "m" / "logistic")["recalibration"]["b"] > 0
    split = assign_split(records, synthetic_spec)
    test = split.filter(pl.col(SPLIT_COLUMN) == "test")
    proba = _tabular_predictor(result["plan"].as_dict())(tmp_path / "m" / "logistic", test)
    _, slope = calibration_intercept_slope((test["outcome"] == "yes").to_numpy().astype(int), proba)
    assert 0.5 < slope < 2.0, slope


# -- issue 24 -----------------------------------------------------------------------------------------------------
FIRST = ["Mary", "John", "James", "Linda", "Robert", "Susan", "David", "Karen", "Maria", "Joseph"]


def _repeated(values: list[str], n: int) -> pl.Series:
    """Each value on n / len(values) consecutive rows: frequent enough to be a one-hot level."""
    return pl.Series([values[i * len(values) // n] for i in range(n)])


@pytest.mark.parametrize(
    ("column", "values", "why"),
    [
        # no patient id in the spec and ten visits per patient: few distinct names, each frequent (issue 24 #5)
        ("contact", [f"{f} {CANARY}" for f in FIRST], "look like personal identifiers (NAME)"),
        ("Surname", [f"{CANARY}{c}" for c in "abcdefghij"], "its name says it holds personal identifiers"),
        ("patientName", [f"{CANARY}{c}" for c in "abcdefghij"], "its name says it holds personal identifiers"),
        ("e-mail", [f"{CANARY}{c}" for c in "abcdefghij"], "its name says it holds personal identifiers"),
        ("visit", [f"2021-03-{d:02d}" for d in range(1, 11)], "look like personal identifiers (DATE)"),
    ],
)
def test_identifier_like_text_columns_are_refused_even_when_their_values_repeat(
    synthetic_spec, tmp_path, column, values, why
):
    spec = synthetic_spec.model_copy(update={"patient_id": None})
    frame = synthetic_records(400, seed=23).with_columns(_repeated(values, 400).alias(column))
    result = train_and_score(frame, spec, tmp_path / "m")
    assert why in result["plan"].dropped[column]
    stored = json.dumps(result["plan"].as_dict()) + "".join(
        (tmp_path / "m" / m / "model.json").read_text() for m in ("xgboost", "logistic")
    )
    assert (
        values[0] not in stored and CANARY not in stored and not any(column in n for n in result["plan"].feature_names)
    )


def test_a_declared_categorical_column_is_kept_whatever_its_name(synthetic_spec):
    frame = synthetic_records(300, seed=24).with_columns(
        _repeated(["Henry Ford", "Mayo", "Cleveland"], 300).alias("site_name")
    )
    plan = fit_plan(frame, synthetic_spec.model_copy(update={"categorical": ["site_name"]}))
    assert plan.categorical["site_name"] == ["Cleveland", "Henry Ford", "Mayo", "__other__"]
    assert "site_name" in fit_plan(frame, synthetic_spec).dropped


def test_columns_of_types_no_feature_takes_are_not_features_with_the_reason(synthetic_spec):
    """Data stored by an earlier reader may hold durations, bytes or dates: they are reported, never a crash."""
    import datetime as dt

    frame = synthetic_records(60, seed=25).with_columns(
        pl.Series("stay", [dt.timedelta(hours=i) for i in range(60)]),
        pl.Series("blob", [b"\xff\xfe", b"ok"] * 30, dtype=pl.Binary),
        pl.Series("seen", [dt.date(2021, 1, 1 + i % 28) for i in range(60)]),
    )
    plan = fit_plan(frame, synthetic_spec.model_copy(update={"categorical": ["seen"]}))
    assert set(plan.dropped) == {"stay", "blob", "seen"} and "durations" in plan.dropped["stay"]
    assert transform(frame, plan).width == len(plan.feature_names)


def test_a_parquet_batch_of_every_flat_type_trains_and_scores(synthetic_spec, layout, tmp_path):
    """Issue 24 #1: durations, bytes, dates with a zone, times, decimals, dictionaries beside the records go
    through reading, validation, split, features, both models and scoring."""
    import pyarrow.parquet as pq

    from meddiag_pipelines.ingestion.landing import describe_batch
    from meddiag_pipelines.tabular.readers import read_tabular_batch
    from meddiag_pipelines_tests.test_tabular_reading import _arrow_columns

    table = synthetic_records(400, seed=26).to_arrow()
    for name, (values, _) in _arrow_columns(400).items():
        table = table.append_column(name, values)
    folder = layout.landing(synthetic_spec.name) / "b1"
    folder.mkdir(parents=True)
    pq.write_table(table, folder / "records.parquet")
    records = read_tabular_batch(describe_batch(synthetic_spec.name, folder), synthetic_spec)
    assert validate_tabular(records, synthetic_spec) == []
    plan = train_and_score(records, synthetic_spec, tmp_path / "m")["plan"]
    assert {"duration", "decimal", "uint64", "float16"} <= set(plan.numeric) and "date" in plan.dropped


def test_a_long_value_frequent_enough_to_be_a_level_makes_its_column_free_text(synthetic_spec):
    values = ["A"] * 380 + [CANARY + " x" * 300] * 20  # mean length about 30: under the free-text mean
    frame = synthetic_records(400, seed=27).with_columns(pl.Series("code", values))
    plan = fit_plan(frame, synthetic_spec)
    assert "would become a feature (over 200): free text" in plan.dropped["code"]
    assert CANARY not in json.dumps(plan.as_dict())
