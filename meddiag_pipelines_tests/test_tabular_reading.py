"""The tabular reader: key columns as text, one label form across file types, column names the later steps
(DuckDB, float32 models) can hold."""

import re

import numpy as np
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
        pl.Series("pid", ["007", "007", "010", "010", "0", "00"]),
        pl.Series("group", ["01", "1", "01", "1", "01", "1"]),
    )
    out = read(layout, synthetic_spec, frame)
    assert out["rid"].to_list()[:2] == ["0001", "0002"] and out["pid"].to_list() == [
        "007",
        "007",
        "010",
        "010",
        "0",
        "00",
    ]
    assert set(out["group"]) == {"01", "1"}


@pytest.mark.parametrize(
    ("values", "filename"),
    [
        ([1, 0, 1, 0], "records.parquet"),
        ([1.0, 0.0, 1.0, 0.0], "records.parquet"),
        ([True, False, True, False], "records.parquet"),
        (["1", "0", "1", "0"], "records.csv"),
        (["1.0", "0.0", "1.0", "0.0"], "records.csv"),
        ([1.0, 0.0, 1.0, 0.0], "records.csv"),
    ],
)
def test_a_label_reads_as_the_same_class_whatever_its_stored_type(synthetic_spec, layout, values, filename):
    spec = synthetic_spec.model_copy(update={"positive": "1", "classes": ["0", "1"]})
    frame = synthetic_records(4, seed=2).with_columns(pl.Series("outcome", values))
    out = read(layout, spec, frame, filename)
    assert out.schema["outcome"] == pl.String and out["outcome"].to_list() == ["1", "0", "1", "0"]


def test_an_empty_label_is_a_case_to_score_in_both_formats(synthetic_spec, layout):
    frame = synthetic_records(3, seed=3).with_columns(pl.Series("outcome", ["yes", None, " "]))
    for i, filename in enumerate(("records.csv", "records.parquet")):
        assert read(layout, synthetic_spec, frame, filename, batch=f"b{i}")["outcome"].to_list() == ["yes", None, None]


def test_a_batch_without_the_label_column_is_all_cases_to_score(synthetic_spec, layout):
    out = read(layout, synthetic_spec, synthetic_records(3, seed=4).drop("outcome"))
    assert out.height == 3 and out.schema["outcome"] == pl.String and out["outcome"].null_count() == 3


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"_meddiag_split": "train"}, "reserved namespace"),
        ({"_MEDDIAG_batch": "x"}, "reserved namespace"),
        (
            {"Dose": 1.0, "dose": 2.0},
            r"columns \d+ and \d+ \(in order of appearance\) have names that differ only in case",
        ),
    ],
)
def test_column_names_the_warehouse_cannot_hold_are_refused(synthetic_spec, layout, extra, fragment):
    frame = synthetic_records(5, seed=4).with_columns(pl.lit(v).alias(k) for k, v in extra.items())
    with pytest.raises(BatchRejected, match=fragment):
        read(layout, synthetic_spec, frame)


CANARY = "PHICANARY_Jane_Roe_1961-04-02"


@pytest.mark.parametrize(
    ("first_row", "fragment"),
    [
        (f"{CANARY},p1,1.5,2,3,A,yes", "has no header row with the task's columns (label 'outcome', id 'rid')"),
        (f"r1,{CANARY},{CANARY},2,3,A,yes", "column 3 repeats the name of column 2"),
        (
            f"r1,{CANARY.lower()},{CANARY},2,3,A,yes",
            "columns 2 and 3 (in order of appearance) have names that differ only",
        ),
        (f"r1,_meddiag_{CANARY},1,2,3,A,yes", "column 2 has a name in the pipeline's reserved namespace"),
    ],
)
def test_a_csv_without_a_header_row_is_refused_without_quoting_its_first_row(
    synthetic_spec, layout, first_row, fragment
):
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
        pl.when(pl.col("rid").is_in(["r1", "r2"])).then(value).otherwise(pl.col("x1")).alias("x1")
    )
    with pytest.raises(BatchRejected, match="'x1' holds 2 values whose magnitude exceeds the float32") as err:
        read(layout, synthetic_spec, frame, "records.parquet")
    assert str(value) not in err.value.problem and "e+" not in err.value.problem


def test_values_within_float32_and_tiny_values_are_kept(synthetic_spec, layout):
    frame = synthetic_records(4, seed=8).with_columns(pl.Series("x1", [3.0e38, -3.0e38, 1e-320, 0.0]))
    assert read(layout, synthetic_spec, frame, "records.parquet")["x1"].to_list() == [3.0e38, -3.0e38, 1e-320, 0.0]


# -- issue 24: every Parquet type is decided at read; CSV line endings; what is read is what was hashed -----------
def _parquet_with(folder, frame: pl.DataFrame, column: str, values) -> None:
    """``frame`` as ``records.parquet`` with one more column of an Arrow array (types Polars cannot write itself)."""
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(frame.to_arrow().append_column(column, values), folder / "records.parquet")
    (folder / "_READY").touch()


def _arrow_columns(n: int) -> dict:
    import datetime as dt
    import decimal

    import pyarrow as pa

    return {
        "duration": (pa.array([dt.timedelta(minutes=i) for i in range(n)], pa.duration("us")), pl.Float64),
        "binary": (pa.array([b"A", b"B"] * (n // 2), pa.binary()), pl.String),
        "large_binary": (pa.array([b"A", b"B"] * (n // 2), pa.large_binary()), pl.String),
        "fixed_binary": (pa.array([b"AB"] * n, pa.binary(2)), pl.String),
        "dictionary": (pa.array(["a", "b"] * (n // 2)).dictionary_encode(), pl.String),
        "date": (pa.array([dt.date(2021, 3, 1 + i % 20) for i in range(n)], pa.date32()), pl.String),
        "time": (pa.array([dt.time(i % 24) for i in range(n)], pa.time64("us")), pl.String),
        "timestamp_tz": (
            pa.array([dt.datetime(2021, 3, 1, i % 24) for i in range(n)], pa.timestamp("ms", tz="Europe/Paris")),
            pl.String,
        ),
        "decimal": (pa.array([decimal.Decimal(i) / 4 for i in range(n)], pa.decimal128(9, 2)), pl.Float64),
        "uint64": (pa.array([2**64 - 1 - i for i in range(n)], pa.uint64()), pl.Float64),
        "float16": (pa.array([np.float16(i / 8) for i in range(n)], pa.float16()), pl.Float64),
        "null": (pa.nulls(n), pl.Null),
        "large_string": (pa.array(["a", "b"] * (n // 2), pa.large_string()), pl.String),
    }


@pytest.mark.parametrize("column", sorted(_arrow_columns(2)))
def test_a_parquet_column_of_any_flat_type_reads_as_a_number_text_or_true_false(synthetic_spec, layout, column):
    """Later steps see four types only: durations are seconds, binary is UTF-8 text, dates and times are text
    (as a CSV would carry them), dictionaries are text."""
    values, expected = _arrow_columns(20)[column]
    folder = layout.landing(TASK) / "b1"
    _parquet_with(folder, synthetic_records(20, seed=9), column, values)
    out = read_tabular_batch(describe_batch(TASK, folder), synthetic_spec)
    assert out.schema[column] == expected
    if column == "duration":
        assert out[column].to_list()[:3] == [0.0, 60.0, 120.0]
    if column == "binary":
        assert out[column].to_list()[:2] == ["A", "B"]


def test_a_binary_column_that_is_not_utf8_is_refused_naming_file_column_and_type(synthetic_spec, layout):
    import pyarrow as pa

    folder = layout.landing(TASK) / "b1"
    _parquet_with(
        folder, synthetic_records(4, seed=10), "blob", pa.array([b"Zqx\xff\xfe", b"ok", None, b"ok"], pa.binary())
    )
    with pytest.raises(BatchRejected, match="column 'blob' holds binary values that are not UTF-8 text") as err:
        read_tabular_batch(describe_batch(TASK, folder), synthetic_spec)
    assert err.value.file == "records.parquet" and "Zqx" not in err.value.problem


def test_a_declared_numeric_column_holding_dates_is_refused(synthetic_spec, layout):
    import datetime as dt

    import pyarrow as pa

    folder = layout.landing(TASK) / "b1"
    dates = pa.array([dt.date(2021, 1, 1 + i) for i in range(4)], pa.date32())
    _parquet_with(folder, synthetic_records(4, seed=11).drop("x1"), "x1", dates)
    with pytest.raises(BatchRejected, match="'x1' is declared numeric but holds"):
        read_tabular_batch(describe_batch(TASK, folder), synthetic_spec)


@pytest.mark.parametrize("ending", ["\r", "\r\n", "\n"])
def test_a_csv_reads_whatever_its_line_endings(synthetic_spec, layout, ending):
    frame = synthetic_records(6, seed=12)
    raw = frame.write_csv().replace("\n", ending).encode()
    out = read_tabular_batch(describe_batch(TASK, land(layout, TASK, "b1", raw=raw)), synthetic_spec)
    assert out["rid"].to_list() == frame["rid"].to_list() and out["x1"].to_list() == frame["x1"].to_list()


def test_a_file_that_changes_after_the_batch_was_hashed_is_refused_not_read_beyond_its_digest(synthetic_spec, layout):
    """The rows ingested are those of the bytes the ledger's digest covers: a file still growing is refused."""
    folder = land(layout, TASK, "b1", synthetic_records(6, seed=13))
    batch = describe_batch(TASK, folder)
    with open(folder / "records.csv", "a") as fh:
        fh.write(synthetic_records(1, seed=14, start=50).write_csv(include_header=False))
    with pytest.raises(BatchRejected, match="changed after the batch was listed") as err:
        read_tabular_batch(batch, synthetic_spec)
    assert err.value.file == "records.csv"
    assert read_tabular_batch(describe_batch(TASK, folder), synthetic_spec).height == 7


@pytest.mark.parametrize(
    ("column", "values", "problem"),
    [
        ("outcome", ["no", "yes", "no", "yes"], "column 8 repeats the name of column 7"),
        ("wide", [1, 2, 3, 4], "column 'wide' has the Arrow type decimal256(50, 2), which cannot be read"),
    ],
)
def test_a_parquet_column_polars_cannot_take_is_named_with_its_type(synthetic_spec, layout, column, values, problem):
    import pyarrow as pa

    folder = layout.landing(TASK) / "b1"
    arrow_type = pa.decimal256(50, 2) if column == "wide" else pa.string()
    _parquet_with(folder, synthetic_records(4, seed=15), column, pa.array(values, arrow_type))
    with pytest.raises(BatchRejected, match=re.escape(problem)) as err:
        read_tabular_batch(describe_batch(TASK, folder), synthetic_spec)
    assert err.value.file == "records.parquet"
