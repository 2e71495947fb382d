"""The tabular reader: key columns as text, one label form across file types, column names the later steps
(DuckDB, float32 models) can hold."""

import re

import polars as pl
import pytest

from meddiag_pipelines.ingestion.errors import BatchRejected
from meddiag_pipelines.ingestion.landing import describe_batch
from meddiag_pipelines.tabular.readers import read_tabular_batch
from meddiag_pipelines_tests.conftest import land, synthetic_records

TASK = "synthetic_risk"


def read(layout, spec, frame: pl.DataFrame, filename: str = "records.csv", batch: str = "b1") -> pl.DataFrame:
    return read_tabular_batch(describe_batch(TASK, land(layout, TASK, batch, frame, filename=filename)), spec)


def test_ids_and_subgroups_keep_their_leading_zeros(synthetic_spec, layout):
    frame = synthetic_records(6, seed=1).with_columns(
        pl.Series("rid", ["0001", "0002", "0003", "0004", "0005", "0006"]),
        pl.Series("pid", ["007", "007", "010", "010", "0", "00"]), pl.Series("group", ["01", "1", "01", "1", "01", "1"]))
    out = read(layout, synthetic_spec, frame)
    assert out["rid"].to_list()[:2] == ["0001", "0002"] and out["pid"].to_list() == ["007", "007", "010", "010", "0", "00"]
    assert set(out["group"]) == {"01", "1"}


@pytest.mark.parametrize(("values", "filename"), [
    ([1, 0, 1, 0], "records.parquet"), ([1.0, 0.0, 1.0, 0.0], "records.parquet"), ([True, False, True, False], "records.parquet"),
    (["1", "0", "1", "0"], "records.csv"), (["1.0", "0.0", "1.0", "0.0"], "records.csv"), ([1.0, 0.0, 1.0, 0.0], "records.csv"),
])  # fmt: skip
def test_a_label_reads_as_the_same_class_whatever_its_stored_type(synthetic_spec, layout, values, filename):
    spec = synthetic_spec.model_copy(update={"positive": "1", "classes": ["0", "1"]})
    frame = synthetic_records(4, seed=2).with_columns(pl.Series("outcome", values))
    out = read(layout, spec, frame, filename)
    assert out.schema["outcome"] == pl.String and out["outcome"].to_list() == ["1", "0", "1", "0"]


def test_an_empty_label_is_a_case_to_score_in_both_formats(synthetic_spec, layout):
    frame = synthetic_records(3, seed=3).with_columns(pl.Series("outcome", ["yes", None, " "]))
    for i, filename in enumerate(("records.csv", "records.parquet")):
        assert read(layout, synthetic_spec, frame, filename, batch=f"b{i}")["outcome"].to_list() == ["yes", None, None]


@pytest.mark.parametrize(("extra", "fragment"), [
    ({"_meddiag_split": "train"}, "reserved namespace"),
    ({"_MEDDIAG_batch": "x"}, "reserved namespace"),
    ({"Dose": 1.0, "dose": 2.0}, r"columns \d+ and \d+ \(in order of appearance\) have names that differ only in case"),
])  # fmt: skip
def test_column_names_the_warehouse_cannot_hold_are_refused(synthetic_spec, layout, extra, fragment):
    frame = synthetic_records(5, seed=4).with_columns(pl.lit(v).alias(k) for k, v in extra.items())
    with pytest.raises(BatchRejected, match=fragment):
        read(layout, synthetic_spec, frame)


CANARY = "PHICANARY_Jane_Roe_1961-04-02"


@pytest.mark.parametrize(("first_row", "fragment"), [
    (f"{CANARY},p1,1.5,2,3,A,yes", "has no header row with the task's columns (label 'outcome', id 'rid')"),
    (f"r1,{CANARY},{CANARY},2,3,A,yes", "column 3 repeats the name of column 2"),
    (f"r1,{CANARY.lower()},{CANARY},2,3,A,yes", "columns 2 and 3 (in order of appearance) have names that differ only"),
    (f"r1,_meddiag_{CANARY},1,2,3,A,yes", "column 2 has a name in the pipeline's reserved namespace"),
])  # fmt: skip
def test_a_csv_without_a_header_row_is_refused_without_quoting_its_first_row(synthetic_spec, layout, first_row, fragment):
    """Issue 24: a header-less file's first row stands where its names should be; a problem with those names
    is told by position, and a file naming none of the task's columns is refused before its names are kept."""
    rows = synthetic_records(5, seed=9).write_csv(include_header=False)
    folder = land(layout, TASK, "b1", raw=(first_row + "\n" + rows).encode())
    with pytest.raises(BatchRejected, match=re.escape(fragment)) as err:
        read_tabular_batch(describe_batch(TASK, folder), synthetic_spec)
    assert CANARY.lower() not in err.value.problem.lower()


def test_case_twins_across_two_files_of_one_batch_are_refused(synthetic_spec, layout):
    folder = land(layout, TASK, "b1", synthetic_records(5, seed=5).with_columns(pl.lit(1.0).alias("Dose")))
    synthetic_records(5, seed=6, start=5).with_columns(pl.lit(1.0).alias("dose")).write_csv(folder / "more.csv")
    with pytest.raises(BatchRejected, match="differ only in case") as err:
        read_tabular_batch(describe_batch(TASK, folder), synthetic_spec)
    assert err.value.file == "b1"


@pytest.mark.parametrize("value", [1e39, -3.5e38, 1e300])
def test_finite_values_beyond_float32_are_refused_with_a_count_not_the_value(synthetic_spec, layout, value):
    frame = synthetic_records(8, seed=7).with_columns(
        pl.when(pl.col("rid").is_in(["r1", "r2"])).then(value).otherwise(pl.col("x1")).alias("x1"))
    with pytest.raises(BatchRejected, match="'x1' holds 2 values whose magnitude exceeds the float32") as err:
        read(layout, synthetic_spec, frame, "records.parquet")
    assert str(value) not in err.value.problem and "e+" not in err.value.problem


def test_values_within_float32_and_tiny_values_are_kept(synthetic_spec, layout):
    frame = synthetic_records(4, seed=8).with_columns(pl.Series("x1", [3.0e38, -3.0e38, 1e-320, 0.0]))
    assert read(layout, synthetic_spec, frame, "records.parquet")["x1"].to_list() == [3.0e38, -3.0e38, 1e-320, 0.0]
