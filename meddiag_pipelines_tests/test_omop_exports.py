"""CDM extracts as export tools and sites write them, and specs a user writes: each layout reads as the tidy batch
does, or is refused with the file and the problem named (never a record's content); a study that leaves no one,
or one outcome class only, says so. The data are SYNTHETIC (omop_data)."""

from __future__ import annotations

import gzip
import html
import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import duckdb
import polars as pl
import pytest
import yaml

from meddiag_pipelines.ingestion.errors import BatchRejected
from meddiag_pipelines.ingestion.landing import LandedBatch
from meddiag_pipelines.omop.batches import OmopReader
from meddiag_pipelines.omop.cdm import PEEL_ROUNDS, CdmRefused, open_cdm
from meddiag_pipelines.omop.cohort import build_study
from meddiag_pipelines.omop.spec import StudySpec
from meddiag_pipelines.specs import SpecError, load_spec
from meddiag_pipelines.split import SPLIT_COLUMN, SplitError, check_split
from meddiag_pipelines_tests.conftest import MEDDIAG, instance_env, run_cli
from meddiag_pipelines_tests.omop_data import (
    CELECOXIB,
    GI_BLEED,
    NSAID_SPEC,
    TODAY,
    tidy_tables,
    two_outcome_tables,
    write_cdm,
)

Tables = dict[str, pl.DataFrame]
VOCABULARY = ("concept", "concept_ancestor")


def _population(folder: Path) -> pl.DataFrame:
    with open_cdm(folder, today=TODAY) as cdm:
        return build_study(cdm, StudySpec.model_validate(NSAID_SPEC)).population


def _dates(tables: Tables, to: Callable[[pl.Expr], pl.Expr]) -> Tables:
    return {n: f.with_columns(to(pl.col(c)) for c, t in f.schema.items() if t == pl.Date) for n, f in tables.items()}


def _tsv_gz_bom_crlf(folder: Path, tables: Tables) -> None:
    for name, frame in tables.items():
        text = frame.write_csv(separator="\t").replace("\n", "\r\n")
        (folder / f"{name.upper()}.tsv.gz").write_bytes(gzip.compress(b"\xef\xbb\xbf" + text.encode()))


def _compact_text_dates(folder: Path, tables: Tables) -> None:
    write_cdm(folder, _dates(tables, lambda c: c.dt.strftime("%Y%m%d")), "csv")


def _compact_number_dates(folder: Path, tables: Tables) -> None:
    write_cdm(folder, _dates(tables, lambda c: c.dt.strftime("%Y%m%d").cast(pl.Int64)))


def _dates_with_times(folder: Path, tables: Tables) -> None:
    write_cdm(folder, _dates(tables, lambda c: c.dt.strftime("%Y-%m-%d 00:00:00")), "csv")


def _nanosecond_timestamps(folder: Path, tables: Tables) -> None:
    write_cdm(folder, _dates(tables, lambda c: c.cast(pl.Datetime("ns"))))


def _numbered_csv_parts(folder: Path, tables: Tables) -> None:
    conditions = tables.pop("condition_occurrence")
    write_cdm(folder, tables, "csv")
    conditions[:1].write_csv(folder / "condition_occurrence_1.csv")
    conditions[1:].write_csv(folder / "condition_occurrence_2.csv")


def _parquet_part_folder(folder: Path, tables: Tables) -> None:
    drugs = tables.pop("drug_exposure")
    write_cdm(folder, tables)
    (folder / "drug_exposure").mkdir()
    drugs[:2].write_parquet(folder / "drug_exposure" / "part-00000.snappy.parquet")
    drugs[2:].write_parquet(folder / "drug_exposure" / "part-00001.snappy.parquet")
    (folder / "drug_exposure" / "_SUCCESS").touch()


def _unused_files(folder: Path, tables: Tables) -> None:
    write_cdm(folder, tables)
    (folder / "README.md").write_text("extract notes")
    (folder / "concept_relationship.csv").write_bytes(os.urandom(4096))  # not used, so never opened
    (folder / "notes ü.csv").write_bytes(os.urandom(64))


def _duckdb_schemas(folder: Path, tables: Tables, schema_of: Callable[[str], str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(folder / "extract.duckdb")) as con:
        for name, frame in tables.items():
            schema = schema_of(name)
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            con.register("frame", frame.to_arrow())
            con.execute(f"CREATE TABLE {schema}.{name} AS SELECT * FROM frame")
            con.unregister("frame")


def _cdm_and_vocabulary_schemas(folder: Path, tables: Tables) -> None:
    _duckdb_schemas(folder, tables, lambda name: "vocab" if name in VOCABULARY else "cdm")


@pytest.mark.parametrize(
    "layout",
    [
        _tsv_gz_bom_crlf,
        _compact_text_dates,
        _compact_number_dates,
        _dates_with_times,
        _nanosecond_timestamps,
        _numbered_csv_parts,
        _parquet_part_folder,
        _unused_files,
        _cdm_and_vocabulary_schemas,
    ],
)
def test_export_layouts_read_as_the_tidy_batch(tmp_path: Path, layout) -> None:
    expected = _population(write_cdm(tmp_path / "tidy", tidy_tables()))
    (tmp_path / "export").mkdir()
    layout(tmp_path / "export", tidy_tables())
    population = _population(tmp_path / "export")
    assert population.height == 2
    assert population.equals(expected)


def _two_cdm_schemas(folder: Path, tables: Tables) -> None:
    _duckdb_schemas(folder, tables, lambda name: "cdm")
    _duckdb_schemas(folder, {"person": tables["person"]}, lambda name: "main")


def _view_of_a_dropped_table(folder: Path, tables: Tables) -> None:
    _duckdb_schemas(folder, {n: f for n, f in tables.items() if n != "measurement"}, lambda name: "main")
    with duckdb.connect(str(folder / "extract.duckdb")) as con:
        con.execute("CREATE TABLE gone AS SELECT 1 AS person_id")
        con.execute("CREATE VIEW measurement AS SELECT * FROM gone")
        con.execute("DROP TABLE gone")


def _database_beside_table_files(folder: Path, tables: Tables) -> None:
    _duckdb_schemas(folder, tables, lambda name: "main")
    tables["person"].write_csv(folder / "person.csv")


def _not_a_database(folder: Path, tables: Tables) -> None:
    (folder / "cdm.duckdb").write_bytes(b"no database here" * 64)


def _sqlite_file(folder: Path, tables: Tables) -> None:  # DuckDB would download its sqlite extension to read it
    with sqlite3.connect(folder / "cdm.db") as con:
        con.execute("CREATE TABLE person (person_id INTEGER)")


def _ragged_csv(folder: Path, tables: Tables) -> None:
    write_cdm(folder, tables, "csv")
    lines = (folder / "measurement.csv").read_text().splitlines()
    lines[1] += ",SECRET-VALUE"
    (folder / "measurement.csv").write_text("\n".join(lines[:2] + ["2,3000", *lines[2:]]) + "\n")


def _no_header_line(folder: Path, tables: Tables) -> None:
    write_cdm(folder, tables, "csv")
    text = (folder / "drug_exposure.csv").read_text()
    (folder / "drug_exposure.csv").write_text(text.split("\n", 1)[1])


def _header_name_twice(folder: Path, tables: Tables) -> None:
    write_cdm(folder, tables, "csv")
    lines = (folder / "person.csv").read_text().splitlines()
    lines = [f"{line},{line.split(',')[0]}" for line in lines]
    lines[0] = lines[0].rsplit(",", 1)[0] + ",PERSON_ID"  # the same column twice, once in upper case
    (folder / "person.csv").write_text("\n".join(lines) + "\n")


def _linked_table(folder: Path, tables: Tables) -> None:
    outside = folder.parent / "outside.parquet"
    tables["measurement"].write_parquet(outside)
    write_cdm(folder, {n: f for n, f in tables.items() if n != "measurement"})
    (folder / "measurement.parquet").symlink_to(outside)


def _whole_and_parts(folder: Path, tables: Tables) -> None:
    write_cdm(folder, tables)
    tables["person"].write_parquet(folder / "person_2.parquet")


def _mixed_formats(folder: Path, tables: Tables) -> None:
    conditions = tables.pop("condition_occurrence")
    write_cdm(folder, tables)
    conditions[:1].write_parquet(folder / "condition_occurrence_1.parquet")
    conditions[1:].write_csv(folder / "condition_occurrence_2.csv")


def _stray_file_in_a_table_folder(folder: Path, tables: Tables) -> None:
    _parquet_part_folder(folder, tables)
    (folder / "drug_exposure" / "notes.txt").write_text("x")


def _periods_ending_before_they_start(folder: Path, tables: Tables) -> None:
    start, end = "observation_period_start_date", "observation_period_end_date"
    periods = tables["observation_period"]
    write_cdm(
        folder,
        tables | {"observation_period": periods.with_columns(pl.col(end).alias(start), pl.col(start).alias(end))},
    )


def _month_first_dates(folder: Path, tables: Tables) -> None:
    write_cdm(folder, _dates(tables, lambda c: c.dt.strftime("%m/%d/%Y")), "csv")


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        (_two_cdm_schemas, r"extract\.duckdb: schemas cdm, main each hold a person table; a batch holds one CDM"),
        (_view_of_a_dropped_table, r"extract\.duckdb:measurement: not readable as a table"),
        (_database_beside_table_files, r"extract\.duckdb: beside table files \(person\.csv\); a batch holds"),
        (_not_a_database, r"cdm\.duckdb: not a readable DuckDB database"),
        (_sqlite_file, r"cdm\.db: not a readable DuckDB database"),
        (
            _ragged_csv,
            r"measurement\.csv: 2 malformed line\(s\) \(missing columns, too many columns\), the first at line 2",
        ),
        (_no_header_line, r"drug_exposure\.csv: its first line holds no column names \(a file without a header"),
        (_header_name_twice, r"person\.csv: two columns share a name when case is ignored"),
        (_linked_table, r"measurement\.parquet: a symbolic link; a batch holds its own files"),
        (_whole_and_parts, r"table person is given more than once \(person\.parquet, person_2\.parquet\)"),
        (_mixed_formats, r"the parts of table condition_occurrence mix CSV and Parquet files"),
        (_stray_file_in_a_table_folder, r"drug_exposure/: a table folder holds only its CSV or Parquet parts"),
        (
            _periods_ending_before_they_start,
            r"observation_period\.parquet: no usable observation_period rows \(of 3: 0 of persons not in person, "
            r"3 without dates or ending before they start\)",
        ),
        (
            _month_first_dates,
            r"observation_period\.csv: no usable observation_period rows \(of 3: 0 of persons not in person, 3 without "
            r"dates or ending before they start; 6 date\(s\) in no form read here: ISO, with or without a time, or "
            r"YYYYMMDD\)",
        ),
    ],
)
def test_extracts_that_would_corrupt_a_cohort_are_refused_by_name(tmp_path: Path, layout, message: str) -> None:
    folder = tmp_path / "batch"
    folder.mkdir()
    layout(folder, tidy_tables())
    with pytest.raises(CdmRefused, match=message) as refused:
        open_cdm(folder, today=TODAY)
    assert "SECRET" not in str(refused.value) and "2010" not in str(refused.value)
    if layout is _linked_table:
        assert (tmp_path / "outside.parquet").is_file()


@pytest.mark.parametrize("cycle", [False, True])
def test_a_hierarchy_deeper_than_the_rounds_in_duckdb_is_still_checked(tmp_path: Path, cycle: bool) -> None:
    depth = 2 * PEEL_ROUNDS + 5  # peeled from both ends: what remains is sorted in Python
    ancestors = list(range(10_000, 10_000 + depth)) + ([10_000 + depth] if cycle else [])
    descendants = list(range(10_001, 10_001 + depth)) + ([10_000 + depth // 2] if cycle else [])
    chain = pl.DataFrame(
        {
            "ancestor_concept_id": ancestors,
            "descendant_concept_id": descendants,
            "min_levels_of_separation": [1] * len(ancestors),
        }
    )
    tables = tidy_tables()
    tables["concept_ancestor"] = pl.concat([tables["concept_ancestor"].drop("max_levels_of_separation"), chain])
    folder = write_cdm(tmp_path / "batch", tables)
    if cycle:
        with pytest.raises(CdmRefused, match=r"concept_ancestor\.parquet: concept_ancestor has a cycle"):
            open_cdm(folder, today=TODAY)
    else:
        assert _population(folder).height == 2


def _task_spec(tmp_path: Path, **study) -> object:
    spec = {"name": "probe", "modality": "omop", "description": "SYNTHETIC probe", **NSAID_SPEC, **study}
    (tmp_path / "probe.yaml").write_text(yaml.safe_dump(spec))
    return load_spec(tmp_path / "probe.yaml")


def test_a_study_that_leaves_no_one_names_the_criterion(tmp_path: Path) -> None:
    folder = write_cdm(tmp_path / "batch", tidy_tables())
    cohort = NSAID_SPEC["cohort"] | {"target": {"domain": "drug", "concepts": [999_999_999]}}
    spec = _task_spec(tmp_path, cohort=cohort)
    batch = LandedBatch("probe", "batch_0001", folder, (), "", 0)
    message = (
        r"no person in the study population: 'first target event \(index\)' leaves none \(the CDM holds no drug "
        r"event of concept\(s\) 999999999\)"
    )
    with pytest.raises(BatchRejected, match=message):
        OmopReader()(batch, spec)
    rows = OmopReader()(batch, _task_spec(tmp_path))  # the same batch under the tidy spec
    assert rows.height == 2


def test_one_outcome_class_is_a_split_error(tmp_path: Path) -> None:
    spec = _task_spec(tmp_path)
    frame = pl.DataFrame({"person_id": [1, 2, 3], spec.label: ["0"] * 3, SPLIT_COLUMN: ["train", "val", "test"]})
    with pytest.raises(SplitError, match=r"task probe: every one of the 3 labelled rows is of class '0'"):
        check_split(frame, spec)
    check_split(frame.with_columns(pl.lit("1").alias(spec.label)).vstack(frame), spec)


def _comparison(data: Path, spec: str) -> dict[str, dict]:
    """The entries of ``reports/<spec>/outcomes.json`` by outcome."""
    return {e["outcome"]: e for e in json.loads((data / "reports" / spec / "outcomes.json").read_text())["outcomes"]}


@pytest.mark.slow
def test_meddiag_update_on_a_cdm_schema_with_an_outcome_never_seen(tmp_path: Path) -> None:
    """Through the command line: a DuckDB extract with its tables in a ``cdm`` schema, a spec of two outcomes of
    which one never happens (its task fails saying so, the other trains), its repairs at INFO; a spec whose
    covariates find nothing fails saying so; a spec error is named plainly when its task is asked for."""
    outcomes = [
        {"name": "gi_bleed", "domain": "condition", "concepts": [GI_BLEED]},
        {"name": "never", "domain": "procedure", "concepts": [999_999_999]},
    ]
    spec = {
        "name": "risks",
        "modality": "omop",
        "description": "SYNTHETIC: two outcomes, one never recorded.",
        "cohort": {"target": {"domain": "drug", "concepts": [CELECOXIB]}, "prior_observation_days": 364},
        "outcomes": outcomes,
        "time_at_risk": {"start": 1, "end": 365, "min_days": 364},
        "training": {"trials": 1, "timeout_s": 10, "max_rounds": 100},
        "evaluation": {"n_bootstrap": 100},
        "promotion": {"auroc_floor": 0.5, "slope_band": [0.05, 20.0]},
    }
    broken = spec | {"name": "broken", "time_at_risk": {"start": 30, "end": 10}}
    # covariates from visits only, and the CDM has none: nothing to learn from (nor, for 'never', anything to split)
    sparse = spec | {"name": "sparse", "covariates": {"domains": ["visit"], "demographics": False}}
    data = tmp_path / "data"
    env = instance_env(tmp_path / "home", data, tmp_path / "tasks", specs=[spec, broken, sparse])
    tables = two_outcome_tables(400, 1_000, seed=0)
    tables["procedure_occurrence"] = pl.DataFrame(
        {"person_id": [1_000], "procedure_concept_id": [4_000_000], "procedure_date": [TODAY.replace(year=2001)]}
    )
    for task in ("risks", "sparse"):
        batch = data / "landing" / task / "batch_0001"
        _duckdb_schemas(batch, tables, lambda name: "cdm")
        (batch / "_READY").touch()

    done = run_cli([*MEDDIAG, "update", "risks", "sparse"], env=env, timeout=900, expect_rc=1)
    out = done.stdout + done.stderr
    assert "risks__gi_bleed: AUROC" in out
    assert (data / "reports" / "risks__gi_bleed" / "latest" / "metrics.json").is_file()
    never = "task risks__never: every one of the 400 labelled rows is of class '0'"
    assert never in out
    assert "INFO meddiag_pipelines.omop.batches: risks__gi_bleed: batch batch_0001: CDM" in out
    sparse_reason = "sparse__gi_bleed: no covariate is held by 10 or more of the"
    assert sparse_reason in out
    assert not (data / "quarantine").exists()
    # the comparison of each spec: an outcome without a model says why (the words its run logged) and its count
    risks = _comparison(data, "risks")
    assert risks["gi_bleed"]["version"] and risks["gi_bleed"]["test_auroc"] > 0.5
    assert risks["gi_bleed"]["persons"] == 400 and "no_model" not in risks["gi_bleed"]
    assert (risks["never"]["version"], risks["never"]["persons"], risks["never"]["outcome_count"]) == (None, 400, 0)
    assert risks["never"]["no_model"]["step"] == "split" and never in risks["never"]["decision"]
    sparse_report = _comparison(data, "sparse")
    assert sparse_report["gi_bleed"]["no_model"]["step"] == "features"
    assert sparse_reason in sparse_report["gi_bleed"]["decision"]
    assert sparse_report["gi_bleed"]["outcome_count"] == risks["gi_bleed"]["outcome_count"] > 0
    assert sparse_report["never"]["no_model"]["step"] == "split"
    shown = html.unescape((data / "reports" / "risks" / "outcomes.html").read_text())
    assert f"<td>400</td><td>0 (0.0%)</td><td></td><td></td><td>no model: {never}" in shown
    assert sparse_reason in html.unescape((data / "reports" / "sparse" / "outcomes.html").read_text())

    done = run_cli([*MEDDIAG, "update", "broken"], env=env, timeout=300, expect_rc=2)
    assert "broken.yaml: key 'time_at_risk': Value error, time_at_risk.end is before time_at_risk.start" in done.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"time_at_risk": {"start": -30, "end": 365}}, r"key 'time_at_risk'.*start is before index"),
        (
            {"cohort": NSAID_SPEC["cohort"] | {"target": {"domain": "drug", "concepts": [10**20]}}},
            r"key 'cohort\.target\.concepts\.0'",
        ),
        ({"covariates": {"domains": [], "demographics": False}}, "covariates: no domain and no demographics"),
    ],
)
def test_specs_a_cdm_cannot_answer_are_spec_errors(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(SpecError, match=f"probe.yaml: .*{message}"):
        _task_spec(tmp_path, **change)


def test_zoned_timestamps_give_the_same_dates_in_any_time_zone(tmp_path: Path) -> None:
    """Midnight UTC read on a machine west of Greenwich is the evening before, unless DuckDB works in UTC."""
    folder = write_cdm(tmp_path / "batch", _dates(tidy_tables(), lambda c: c.cast(pl.Datetime("us", "UTC"))))
    code = (
        "from datetime import date; from pathlib import Path; from meddiag_pipelines.omop.cdm import open_cdm\n"
        f"with open_cdm(Path({str(folder)!r}), today=date(2024, 1, 1)) as cdm:\n"
        "    print(cdm.con.execute('SELECT min(start_date), min(event_date) FROM observation_period, ev_drug')"
        ".fetchone())"
    )
    done = run_cli([MEDDIAG[0], "-c", code], env={"TZ": "America/New_York"}, expect_rc=0)
    assert done.stdout.strip() == "(datetime.date(2000, 1, 1), datetime.date(2010, 1, 1))"


def test_a_refusal_shows_an_odd_file_name_escaped(tmp_path: Path) -> None:
    folder = write_cdm(tmp_path / "batch", tidy_tables())
    odd = os.fsdecode(b"x\x1b[2J\xff.parquet")
    (folder / odd).symlink_to(folder / "person.parquet")
    spec = _task_spec(tmp_path)
    with pytest.raises(BatchRejected, match=r"CDM refused: x\\x1b\[2J\\xff\.parquet: a symbolic link") as refused:
        OmopReader()(LandedBatch("probe", "batch_0001", folder, (), "", 0), spec)
    assert "\x1b" not in str(refused.value)


def test_birth_years_before_the_plausible_floor_refuse_the_person(tmp_path: Path) -> None:
    tables = tidy_tables()
    years = [-(2**31), 1970, 1]  # the first overflowed the age at index (a 32-bit integer)
    tables["person"] = tables["person"].with_columns(pl.Series("year_of_birth", years, pl.Int64))
    with open_cdm(write_cdm(tmp_path / "batch", tables), today=TODAY) as cdm:
        population = build_study(cdm, StudySpec.model_validate(NSAID_SPEC)).population
        assert "person: 2 person(s) born before 1850, OHDSI's data-quality floor (refused)" in cdm.notes
    assert population["person_id"].to_list() == [2] and cdm.counts["person.persons"] == 1
