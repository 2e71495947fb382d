"""The GX suites computed in one Polars pass decide exactly as GX's pandas engine does on the same frame."""

import polars as pl
import pytest

from meddiag_pipelines.specs import TaskSpec
from meddiag_pipelines.validation import suites
from meddiag_pipelines.validation.suites import run_suite, tabular_expectations, validate_tabular
from meddiag_pipelines_tests.conftest import SYNTHETIC_SPEC, synthetic_records

SPEC = TaskSpec.model_validate(
    {**SYNTHETIC_SPEC, "categorical": ["c"], "ranges": {"x1": [-5.0, 5.0]}, "max_null_rate": 0.2}
)
BASE = synthetic_records(12, seed=3).with_columns(
    pl.Series("c", ["a", "b", "a", "a", "b", None] * 2), pl.Series("n", range(12))
)
CASES = {
    "clean": lambda f: f,
    "nulls, NaN and infinities": lambda f: f.with_columns(
        pl.when(pl.int_range(pl.len()) < 4).then(None).otherwise(pl.col("x2")).alias("x2"),
        pl.when(pl.int_range(pl.len()) == 5).then(float("nan")).otherwise(pl.col("x3")).alias("x3"),
        pl.when(pl.int_range(pl.len()) < 2).then(float("inf")).otherwise(pl.col("x1")).alias("x1"),
    ),
    "duplicate and null ids": lambda f: f.with_columns(pl.col("rid").str.slice(0, 2).replace("r1", None)),
    "labels outside the domain": lambda f: f.with_columns(
        pl.Series("outcome", ["yes", "7", "no", None, "maybe", "7"] * 2)
    ),
    "integer column with nulls": lambda f: f.with_columns(pl.Series("x1", [None, 1, 2, 0] * 3)),
    "text in a numeric column": lambda f: f.with_columns(pl.col("x2").cast(pl.String)),
    "booleans in a numeric column": lambda f: f.with_columns((pl.col("x2") > 0).alias("x2")),
    "all-null numeric column": lambda f: f.with_columns(pl.lit(None, pl.Float64).alias("x3")),
    "repeated integer ids": lambda f: f.with_columns((pl.col("n") // 2).alias("rid")),
    "missing id and subgroup": lambda f: f.drop("rid", "group"),
    "empty": lambda f: f.head(0),
}


def by_gx_alone(frame: pl.DataFrame) -> list[dict]:
    failures = suites._run_gx(frame, tabular_expectations(SPEC, frame.columns), SPEC.name)
    return sorted((f.as_dict() for f in failures), key=str)


@pytest.mark.parametrize("case", CASES)
def test_failures_match_gx_alone(case):
    frame = CASES[case](BASE)
    failures = run_suite(frame, tabular_expectations(SPEC, frame.columns), SPEC.name)
    assert sorted((f.as_dict() for f in failures), key=str) == by_gx_alone(frame)
    assert (failures == []) == (case in ("clean", "empty"))


def test_a_plain_batch_is_validated_without_gx_and_a_parquet_file_where_it_lies(tmp_path, monkeypatch):
    frame = CASES["labels outside the domain"](BASE)
    expected = validate_tabular(frame, SPEC)
    frame.write_parquet(tmp_path / "batch.parquet")
    monkeypatch.setattr(suites, "_run_gx", lambda *a: pytest.fail("GX's pandas engine was used"))
    assert validate_tabular(tmp_path / "batch.parquet", SPEC) == expected
    assert [f.unexpected_count for f in expected if f.column == "outcome"] == [6]
    assert not [f for f in expected if f.examples or "maybe" in f.problem]  # no value found in the data (issue 24)


def test_a_patient_id_every_row_of_a_batch_shares_is_refused_as_a_placeholder():
    """Issue 24 (found by the Arrow-type property): a batch whose rows all carry patient id 0 joined every
    patient, through copies of their rows, into one split group, and no model could be trained again."""
    spec = TaskSpec.model_validate(SYNTHETIC_SPEC)
    batch = synthetic_records(suites.PLACEHOLDER_MIN_ROWS, seed=3)
    placeholder = batch.with_columns(pl.lit("0").alias(spec.patient_id))
    (failure,) = [f for f in validate_tabular(placeholder, spec) if f.expectation == "patient_id_not_placeholder"]
    assert failure.column == spec.patient_id and failure.problem.startswith(f"every one of the {batch.height} rows")
    assert not [f for f in validate_tabular(batch, spec) if f.expectation == "patient_id_not_placeholder"]
    assert not [
        f
        for f in validate_tabular(placeholder.head(suites.PLACEHOLDER_MIN_ROWS - 1), spec)
        if f.expectation == "patient_id_not_placeholder"
    ]  # a few visits of one patient are real data
