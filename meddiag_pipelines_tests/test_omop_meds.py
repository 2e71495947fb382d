"""The MEDS event table: the meds package's schema, its codes, written once per batch."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import meds
import polars as pl
import pyarrow.parquet as pq
import pytest

from meddiag_pipelines.omop.cdm import open_cdm
from meddiag_pipelines.omop.meds import check_meds, write_meds
from meddiag_pipelines_tests.omop_data import TODAY, tidy_tables, write_cdm


@pytest.fixture
def cdm(tmp_path: Path):
    tables = tidy_tables()
    tables["death"] = pl.DataFrame({"person_id": [3], "death_date": [datetime(2019, 4, 1).date()]})
    with open_cdm(write_cdm(tmp_path / "batch", tables), today=TODAY) as opened:
        yield opened


def test_meds_table_validates_against_the_meds_schema(cdm, tmp_path: Path) -> None:
    out = tmp_path / "meds" / "data.parquet"
    result = write_meds(cdm, out)
    table = pq.read_table(out)
    assert table.schema.equals(meds.DataSchema.schema())
    meds.DataSchema.validate(table)
    assert result == {"path": str(out), "rows": table.num_rows, "written": True}


def test_meds_codes_times_and_values(cdm, tmp_path: Path) -> None:
    out = tmp_path / "data.parquet"
    write_meds(cdm, out)
    rows = pl.read_parquet(out)
    person2 = rows.filter(pl.col("subject_id") == 2)
    assert person2["code"].to_list() == [
        "GENDER//8532",
        "MEDS_BIRTH",
        "CONDITION//4000",
        "MEASUREMENT//3000",
        "MEASUREMENT//3000",
        "CONDITION//4001",
        "DRUG//40000001",
    ]
    assert person2["time"][0] is None and person2["time"][1] == datetime(1970, 6, 2)
    assert person2.filter(pl.col("code") == "MEASUREMENT//3000")["numeric_value"].to_list() == [5.0, 7.0]
    death = rows.filter(pl.col("code") == meds.death_code)
    assert death.select("subject_id", "time").rows() == [(3, datetime(2019, 4, 1))]
    assert rows["subject_id"].is_sorted()


def test_meds_is_written_once(cdm, tmp_path: Path) -> None:
    out = tmp_path / "data.parquet"
    write_meds(cdm, out)
    stamp = out.stat().st_mtime_ns
    again = write_meds(cdm, out)
    assert again["written"] is False and again["rows"] == pq.ParquetFile(out).metadata.num_rows
    assert out.stat().st_mtime_ns == stamp


def test_check_meds_rejects_another_schema(tmp_path: Path) -> None:
    other = tmp_path / "other.parquet"
    pl.DataFrame({"subject_id": [1], "time": [datetime(2020, 1, 1)], "code": ["X"]}).write_parquet(other)
    with pytest.raises(ValueError, match="other.parquet: not the MEDS data schema"):
        check_meds(other)


def test_meds_written_in_subject_chunks_is_the_same_table(cdm, tmp_path: Path) -> None:
    write_meds(cdm, tmp_path / "one.parquet")
    write_meds(cdm, tmp_path / "chunked.parquet", chunk_rows=3, batch_rows=2)
    one, chunked = pq.read_table(tmp_path / "one.parquet"), pq.read_table(tmp_path / "chunked.parquet")
    assert chunked.num_rows == one.num_rows and pq.ParquetFile(tmp_path / "chunked.parquet").num_row_groups > 2
    key = ["subject_id", "time", "code", "numeric_value"]
    assert pl.from_arrow(chunked).sort(key, nulls_last=False).equals(pl.from_arrow(one).sort(key, nulls_last=False))
    assert pl.from_arrow(chunked)["subject_id"].is_sorted()


def test_meds_carries_observation_text_values(tmp_path: Path) -> None:
    tables = tidy_tables()
    tables["observation"] = pl.DataFrame(
        {
            "observation_id": [1, 2],
            "person_id": [1, 3],
            "observation_concept_id": [5000, 5001],
            "observation_date": [datetime(2011, 2, 1).date(), datetime(2015, 3, 1).date()],
            "value_as_string": ["positive", None],
        }
    )
    with open_cdm(write_cdm(tmp_path / "batch", tables), today=TODAY) as cdm:
        write_meds(cdm, tmp_path / "data.parquet")
    rows = pl.read_parquet(tmp_path / "data.parquet")
    observed = rows.filter(pl.col("code").str.starts_with("OBSERVATION//")).sort("subject_id")
    assert observed.select("subject_id", "code", "text_value").rows() == [
        (1, "OBSERVATION//5000", "positive"),
        (3, "OBSERVATION//5001", None),
    ]
    assert rows["text_value"].null_count() == rows.height - 1


def test_codes_of_negative_huge_and_missing_concepts() -> None:
    """Codes are built per distinct (kind, concept) pair: negative ids, ids too large to pack with their kind
    (built row by row instead) and birth/death rows without a concept all get the code they would row by row."""
    import pyarrow as pa

    from meddiag_pipelines.omop.meds import _codes, _prefixes

    kinds = pa.array([3, 3, 4, 1, 2, 0, 3, 4], pa.uint8())
    concepts = pa.array([-7, 192671, 192671, None, None, 8507, -7, 0], pa.int64())
    assert _codes(kinds, concepts, _prefixes()).to_pylist() == [
        "CONDITION//-7",
        "CONDITION//192671",
        "DRUG//192671",
        meds.birth_code,
        meds.death_code,
        "GENDER//8507",
        "CONDITION//-7",
        "DRUG//0",
    ]
    huge = pa.array([2**62, -(2**62), None], pa.int64())
    assert _codes(pa.array([3, 5, 1], pa.uint8()), huge, _prefixes()).to_pylist() == [
        f"CONDITION//{2**62}",
        f"PROCEDURE//{-(2**62)}",
        meds.birth_code,
    ]
