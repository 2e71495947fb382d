"""Opening a CDM batch: untidy data repaired and reported with counts, corrupting data refused with reasons."""

from __future__ import annotations

import struct
from datetime import date
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from meddiag_pipelines.omop.cdm import CdmRefused, open_cdm
from meddiag_pipelines.omop.cohort import build_study
from meddiag_pipelines.omop.spec import StudySpec
from meddiag_pipelines_tests.omop_data import (
    GI_BLEED,
    MALE,
    NSAID_SPEC,
    TODAY,
    eunomia_path,
    tidy_tables,
    write_cdm,
)


def _open(folder: Path, tables: dict[str, pl.DataFrame], fmt: str = "parquet"):
    return open_cdm(write_cdm(folder, tables, fmt), today=TODAY)


def _scalar(cdm, sql: str):
    return cdm.con.execute(sql).fetchone()[0]


def test_tidy_batch_has_no_notes(tmp_path: Path) -> None:
    with _open(tmp_path, tidy_tables()) as cdm:
        assert cdm.notes == []
        assert _scalar(cdm, "SELECT count(*) FROM person") == 3
        assert {"condition", "drug", "measurement"} <= cdm.domains


def test_csv_and_parquet_batches_agree(tmp_path: Path) -> None:
    with _open(tmp_path / "p", tidy_tables()) as a, _open(tmp_path / "c", tidy_tables(), "csv") as b:
        sql = "SELECT * FROM ev_drug ORDER BY ALL"
        assert a.con.execute(sql).fetchall() == b.con.execute(sql).fetchall()
        assert (
            a.con.execute("SELECT * FROM person ORDER BY ALL").fetchall()
            == b.con.execute("SELECT * FROM person ORDER BY ALL").fetchall()
        )


def test_upper_case_file_and_column_names(tmp_path: Path) -> None:
    tables = tidy_tables()
    tables["PERSON"] = tables.pop("person").rename(str.upper)
    with _open(tmp_path, tables, "csv") as cdm:
        assert any("person: column names not in lower case" in n for n in cdm.notes)
        assert _scalar(cdm, "SELECT count(*) FROM person") == 3


def test_header_only_csv_table(tmp_path: Path) -> None:
    tables = tidy_tables()
    tables["death"] = pl.DataFrame(schema={"person_id": pl.Int64, "death_date": pl.Date})
    with _open(tmp_path, tables, "csv") as cdm:
        assert "death: header only (no rows)" in cdm.notes
        assert _scalar(cdm, "SELECT count(*) FROM person WHERE death_date IS NOT NULL") == 0


def test_numbers_as_text_and_ids_as_floats(tmp_path: Path) -> None:
    tables = tidy_tables()
    tables["person"] = tables["person"].with_columns(pl.col("year_of_birth").cast(pl.String))
    as_floats = pl.col("person_id", "drug_concept_id").cast(pl.Float64)
    tables["drug_exposure"] = tables["drug_exposure"].with_columns(as_floats)
    with _open(tmp_path, tables) as cdm:
        assert "person: 1 numeric column(s) stored as text (converted)" in cdm.notes
        assert "drug_exposure: 2 id column(s) stored as decimals (converted)" in cdm.notes
        assert cdm.con.execute("DESCRIBE ev_drug").fetchall()[0][1] == "BIGINT"
        assert _scalar(cdm, "SELECT count(*) FROM ev_drug WHERE concept_id = 1118084") == 2


def test_concept_id_holding_text_is_reported_and_dropped(tmp_path: Path) -> None:
    tables = tidy_tables()
    tables["condition_occurrence"] = tables["condition_occurrence"].with_columns(
        pl.Series("condition_concept_id", ["192671", "not a concept", "4001.0"])
    )
    with _open(tmp_path, tables) as cdm:
        assert (
            "condition_occurrence.condition_concept_id: 1 value(s) of the wrong type (dropped from that column)"
            in cdm.notes
        )
        assert "condition_occurrence: 1 event(s) without a usable concept id (dropped)" in cdm.notes
        assert sorted(r[0] for r in cdm.con.execute("SELECT concept_id FROM ev_condition").fetchall()) == [
            4001,
            GI_BLEED,
        ]
        assert not any("not a concept" in n for n in cdm.notes)


def test_duplicate_person_ids_keep_the_first(tmp_path: Path) -> None:
    tables = tidy_tables()
    dup = tables["person"].filter(pl.col("person_id") == 1).with_columns(gender_concept_id=pl.lit(8532, pl.Int64))
    tables["person"] = pl.concat([tables["person"], dup])
    with _open(tmp_path, tables) as cdm:
        assert "person: 1 repeated person_id row(s) (the first kept)" in cdm.notes
        assert _scalar(cdm, "SELECT gender_concept_id FROM person WHERE person_id = 1") == MALE
        assert _scalar(cdm, "SELECT count(*) FROM person") == 3


def test_rows_of_unknown_persons_are_dropped(tmp_path: Path) -> None:
    tables = tidy_tables()
    extra = tables["condition_occurrence"].head(1).with_columns(person_id=pl.lit(99, pl.Int64))
    tables["condition_occurrence"] = pl.concat([tables["condition_occurrence"], extra])
    periods = tables["observation_period"]
    tables["observation_period"] = pl.concat([periods, periods.head(1).with_columns(person_id=pl.lit(98, pl.Int64))])
    with _open(tmp_path, tables) as cdm:
        assert "condition_occurrence: 1 row(s) of persons not in person (dropped)" in cdm.notes
        assert "observation_period: 1 row(s) of persons not in person (dropped)" in cdm.notes
        assert _scalar(cdm, "SELECT count(*) FROM ev_condition WHERE person_id = 99") == 0


def test_future_and_before_birth_events_are_dropped(tmp_path: Path) -> None:
    tables = tidy_tables()
    cond = tables["condition_occurrence"]
    tables["condition_occurrence"] = pl.concat(
        [
            cond,
            cond.head(1).with_columns(condition_start_date=pl.lit(date(2031, 1, 1))),
            cond.head(1).with_columns(condition_start_date=pl.lit(date(1950, 1, 1))),
        ]
    )
    with _open(tmp_path, tables) as cdm:
        assert "condition_occurrence: 1 event(s) dated in the future (dropped)" in cdm.notes
        assert "condition_occurrence: 1 event(s) dated before birth (dropped)" in cdm.notes
        assert _scalar(cdm, "SELECT count(*) FROM ev_condition") == 3


def test_birth_year_in_the_future_refuses_the_person(tmp_path: Path) -> None:
    tables = tidy_tables()
    tables["person"] = tables["person"].with_columns(
        year_of_birth=pl.when(pl.col("person_id") == 3).then(2099).otherwise(pl.col("year_of_birth"))
    )
    with _open(tmp_path, tables) as cdm:
        assert "person: 1 person(s) with no birth year or born in the future (refused)" in cdm.notes
        assert _scalar(cdm, "SELECT count(*) FROM person WHERE person_id = 3") == 0
        assert cdm.counts["person.persons"] == 2


def test_events_outside_observation_and_concept_zero_are_counted(tmp_path: Path) -> None:
    tables = tidy_tables()
    cond = tables["condition_occurrence"]
    tables["condition_occurrence"] = pl.concat(
        [
            cond,
            cond.head(1).with_columns(condition_start_date=pl.lit(date(1999, 6, 1))),
            cond.head(1).with_columns(condition_concept_id=pl.lit(0, pl.Int64)),
        ]
    )
    with _open(tmp_path, tables) as cdm:
        assert (
            "condition_occurrence: 1 event(s) outside any observation period (kept for cohorts, not used for "
            "covariates)" in cdm.notes
        )
        assert "condition_occurrence: 1 event(s) with concept 0 (unmapped)" in cdm.notes
        assert _scalar(cdm, "SELECT count(*) FROM ev_condition WHERE NOT in_observation") == 1


def test_v53_and_v54_visit_columns(tmp_path: Path) -> None:
    visits = pl.DataFrame(
        {
            "visit_occurrence_id": [1],
            "person_id": [1],
            "visit_concept_id": [9201],
            "visit_start_date": [date(2009, 1, 1)],
        }
    )
    v53 = tidy_tables() | {"visit_occurrence": visits.with_columns(admitting_source_concept_id=pl.lit(0, pl.Int64))}
    v54 = tidy_tables() | {
        "visit_occurrence": visits.with_columns(admitted_from_concept_id=pl.lit(0, pl.Int64)),
        "cdm_source": pl.DataFrame({"cdm_source_name": ["synthetic"], "cdm_version": ["v5.4.0"]}),
    }
    with _open(tmp_path / "a", v53) as a, _open(tmp_path / "b", v54) as b:
        assert (a.version, b.version) == ("5.3", "5.4")
        assert "visit_occurrence: 1 CDM v5.3 column name(s) changed to v5.4's" in a.notes
        cols = [r[0] for r in a.con.execute("DESCRIBE typed_visit_occurrence").fetchall()]
        assert "admitted_from_concept_id" in cols and "admitting_source_concept_id" not in cols
        assert b.notes == []


def test_eunomia_untidiness_is_reported() -> None:
    with open_cdm(eunomia_path()) as cdm:
        assert "death: header only (its column names stored as its one row)" in cdm.notes
        assert "observation_period: 2649 row(s) of persons not in person (dropped)" in cdm.notes
        assert "concept_ancestor: 1 id column(s) stored as decimals (converted)" in cdm.notes
        assert cdm.version == "5.3"
        assert _scalar(cdm, "SELECT count(*) FROM person") == 2694


# --- refusals -------------------------------------------------------------------------------------------------


def test_refuses_a_batch_without_person(tmp_path: Path) -> None:
    tables = tidy_tables()
    del tables["person"]
    with pytest.raises(CdmRefused, match="no person table"):
        _open(tmp_path, tables)


def test_refuses_a_batch_without_observation_periods(tmp_path: Path) -> None:
    tables = tidy_tables()
    tables["observation_period"] = tables["observation_period"].clear()
    with pytest.raises(CdmRefused, match=r"observation_period\.parquet: no usable observation_period rows"):
        _open(tmp_path, tables)


def test_refuses_descendants_without_concept_ancestor(tmp_path: Path) -> None:
    tables = tidy_tables()
    del tables["concept_ancestor"]
    spec = StudySpec.model_validate(NSAID_SPEC)
    with _open(tmp_path, tables) as cdm, pytest.raises(CdmRefused, match="no concept_ancestor table, needed because"):
        build_study(cdm, spec)


def test_refuses_a_concept_ancestor_with_a_cycle(tmp_path: Path) -> None:
    tables = tidy_tables()
    ca = tables["concept_ancestor"]
    # Closed form: 1124300 above 40000001 and 40000001 above 1124300.
    back = pl.DataFrame(
        {
            "ancestor_concept_id": [40000001],
            "descendant_concept_id": [1124300],
            "min_levels_of_separation": [1],
            "max_levels_of_separation": [1],
        }
    )
    with pytest.raises(CdmRefused, match=r"concept_ancestor\.parquet: concept_ancestor has a cycle"):
        _open(tmp_path / "pair", tables | {"concept_ancestor": pl.concat([ca, back])})
    # Edges only (not a closure): 1 -> 2 -> 3 -> 1.
    ring = pl.DataFrame(
        {
            "ancestor_concept_id": [1, 2, 3],
            "descendant_concept_id": [2, 3, 1],
            "min_levels_of_separation": [1, 1, 1],
            "max_levels_of_separation": [1, 1, 1],
        }
    )
    with pytest.raises(CdmRefused, match="has a cycle"):
        _open(tmp_path / "ring", tables | {"concept_ancestor": pl.concat([ca, ring])})


def _declare_rows(path: Path, real: int, declared: int) -> None:
    """Rewrite the file-level row count in a Parquet footer (Thrift compact: field 3, i64, zig-zag varint)."""

    def varint(n: int) -> bytes:
        out = bytearray()
        n = n << 1  # zig-zag of a non-negative number
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)

    data = path.read_bytes()
    length = struct.unpack("<I", data[-8:-4])[0]
    footer = data[-8 - length : -8]
    old, new = b"\x16" + varint(real), b"\x16" + varint(declared)
    assert footer.count(old) >= 1
    footer = footer.replace(old, new, 1)
    path.write_bytes(data[: -8 - length] + footer + struct.pack("<I", len(footer)) + b"PAR1")


def test_refuses_a_parquet_footer_declaring_absurd_rows(tmp_path: Path) -> None:
    tables = tidy_tables()
    cond = tables["condition_occurrence"]
    tables["condition_occurrence"] = pl.concat([cond] * 259)  # 777 rows: a distinctive varint in the footer
    folder = write_cdm(tmp_path, tables)
    target = folder / "condition_occurrence.parquet"
    _declare_rows(target, 777, 1_000_000_000)
    assert pq.read_metadata(target).num_rows == 1_000_000_000
    with pytest.raises(CdmRefused, match=r"condition_occurrence\.parquet: the Parquet footer declares 1000000000 rows"):
        open_cdm(folder, today=TODAY)


def test_refuses_an_event_table_without_its_date(tmp_path: Path) -> None:
    tables = tidy_tables()
    tables["drug_exposure"] = tables["drug_exposure"].drop("drug_exposure_start_date")
    with pytest.raises(CdmRefused, match=r"drug_exposure\.parquet: table drug_exposure lacks column\(s\) drug_exp"):
        _open(tmp_path, tables)


def test_refusal_never_echoes_record_values(tmp_path: Path) -> None:
    (tmp_path / "person.csv").write_text("person_id,year_of_birth\n1,1960\n")
    (tmp_path / "observation_period.csv").write_text(
        "person_id,observation_period_start_date,observation_period_end_date\n1,2000-01-01,2001-01-01\n"
    )
    (tmp_path / "condition_occurrence.csv").write_text(
        'person_id,condition_concept_id,condition_start_date\n1,"SECRET-VALUE\n'
    )
    with pytest.raises(CdmRefused) as err:
        open_cdm(tmp_path, today=TODAY)
    assert "condition_occurrence.csv" in str(err.value)
    assert "SECRET" not in str(err.value)


def test_the_batch_is_only_read(tmp_path: Path) -> None:
    folder = write_cdm(tmp_path / "batch", tidy_tables())
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    with open_cdm(folder, today=TODAY) as cdm:
        build_study(cdm, StudySpec.model_validate(NSAID_SPEC))
        scratch = cdm.scratch
        assert scratch is not None and scratch.is_dir()
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    assert not scratch.exists()


def test_overlapping_observation_periods_are_merged(tmp_path: Path) -> None:
    tables = tidy_tables()
    periods = tables["observation_period"]
    overlap = periods.head(1).with_columns(
        observation_period_start_date=pl.lit(date(2019, 1, 1)), observation_period_end_date=pl.lit(date(2022, 1, 1))
    )
    tables["observation_period"] = pl.concat([periods, overlap])
    with _open(tmp_path, tables) as cdm:
        assert "observation_period: 1 overlapping period(s) merged into the one they overlap" in cdm.notes
        periods = cdm.con.execute("SELECT start_date, end_date FROM observation_period WHERE person_id = 1")
        assert periods.fetchall() == [(date(2000, 1, 1), date(2022, 1, 1))]
        assert _scalar(cdm, "SELECT count(*) FROM ev_condition WHERE person_id = 1") == 1


def test_in_observation_with_several_periods_and_none(tmp_path: Path) -> None:
    """Person 1 observed in 2000-2004 and 2010-2020 (events in each, in the gap, before and on the bounds);
    person 3 has no period at all: the events stay (for cohorts), only those inside a period are observed."""
    tables = tidy_tables()
    d = date
    tables["observation_period"] = pl.DataFrame(
        {
            "observation_period_id": [1, 2, 3],
            "person_id": [1, 1, 2],
            "observation_period_start_date": [d(2000, 1, 1), d(2010, 1, 1), d(2000, 1, 1)],
            "observation_period_end_date": [d(2004, 12, 31), d(2020, 12, 31), d(2020, 12, 31)],
        }
    )
    days = [d(1999, 12, 31), d(2000, 1, 1), d(2004, 12, 31), d(2005, 1, 1), d(2009, 12, 31), d(2010, 1, 1)]
    days += [d(2020, 12, 31), d(2021, 1, 1), d(2015, 1, 1)]
    tables["condition_occurrence"] = pl.DataFrame(
        {
            "condition_occurrence_id": list(range(1, len(days) + 1)),
            "person_id": [1] * (len(days) - 1) + [3],
            "condition_concept_id": [4000] * len(days),
            "condition_start_date": days,
        }
    )
    with _open(tmp_path, tables) as cdm:
        rows = cdm.con.execute(
            "SELECT person_id, event_date, in_observation FROM ev_condition ORDER BY person_id, event_date"
        ).fetchall()
        expected = [False, True, True, False, False, True, True, False]
        assert rows == [(1, day, seen) for day, seen in zip(sorted(days[:-1]), expected, strict=True)] + [
            (3, d(2015, 1, 1), False)
        ]
        assert cdm.counts["condition.outside_observation"] == 5
