"""A CDM in a PostgreSQL schema (omop/pgsource.py): the bundled Eunomia batch loaded into a real server's schema
(its untidiness kept: upper-case names, ids as decimals, a header-only table) gives the Book's counts through a
snapshot taken once; credentials come only from the environment and never appear in an error."""

from __future__ import annotations

import io
import json
from pathlib import Path

import polars as pl
import psycopg2
import pytest
from psycopg2 import sql

from meddiag_pipelines.omop.batches import SNAPSHOT, batch_cache
from meddiag_pipelines.omop.cdm import CdmRefused, open_cdm
from meddiag_pipelines.omop.cohort import build_study
from meddiag_pipelines.omop.spec import StudySpec
from meddiag_pipelines_tests.omop_data import NSAID_SPEC
from meddiag_pipelines_tests.postgres import postgres_server  # noqa: F401 (fixture)

BUNDLED = Path(__file__).resolve().parents[1] / "data" / "landing" / "eunomia_gi_bleed" / "batch_0001"
READER, PASSWORD = "cdm_reader", "Rd-s3cret-9f2"
URL_ENV = "MEDDIAG_TEST_CDM_URL"
PG_TYPES = {pl.Int64: "bigint", pl.Float64: "double precision", pl.Date: "date", pl.String: "text"}


def _url(server, password: str) -> str:
    return f"postgresql://{READER}:{password}@/cdm_src?host={server.socket_dir}&port={server.port}"


def _load_table(cur, name: str, frame: pl.DataFrame) -> None:
    columns = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(PG_TYPES[t])) for c, t in frame.schema.items()
    )
    cur.execute(sql.SQL("CREATE TABLE cdm.{} ({})").format(sql.Identifier(name), columns))
    buffer = io.StringIO(frame.write_csv(null_value=""))
    cur.copy_expert(
        sql.SQL("COPY cdm.{} FROM STDIN WITH (FORMAT csv, HEADER true)").format(sql.Identifier(name)), buffer
    )


@pytest.fixture(scope="module")
def cdm_server(postgres_server):  # noqa: F811
    """The bundled Eunomia batch in schema ``cdm`` of database ``cdm_src`` (``person`` named ``PERSON``), readable
    by a role that must give its password (scram-sha-256; the fixture's own superuser is trusted)."""
    server = postgres_server
    server.psql("postgres", "CREATE DATABASE cdm_src")
    superuser = f"postgresql://meddiag@/cdm_src?host={server.socket_dir}&port={server.port}"
    with psycopg2.connect(superuser) as con, con.cursor() as cur:
        cur.execute("CREATE SCHEMA cdm")
        for path in sorted(BUNDLED.glob("*.parquet")):
            _load_table(cur, "PERSON" if path.stem == "person" else path.stem, pl.read_parquet(path))
        cur.execute(f"CREATE ROLE {READER} LOGIN PASSWORD '{PASSWORD}'")
        cur.execute(f"GRANT USAGE ON SCHEMA cdm TO {READER}; GRANT SELECT ON ALL TABLES IN SCHEMA cdm TO {READER}")
    con.close()
    hba = server.folder / "data" / "pg_hba.conf"
    hba.write_text(f"local all {READER} scram-sha-256\n" + hba.read_text())
    server.command("pg_ctl", "reload", "-D", str(server.folder / "data"), "-s")
    return server


def _pg_batch(folder: Path, **marker) -> Path:
    folder.mkdir(parents=True)
    (folder / "cdm.pgsource.json").write_text(json.dumps({"schema": "cdm", "url_env": URL_ENV} | marker))
    (folder / "_READY").touch()
    return folder


def _counts(cdm) -> tuple:
    study = build_study(cdm, StudySpec.model_validate(NSAID_SPEC))
    return study.target_persons, study.for_outcome("gi_bleed").height, study.outcome_counts["gi_bleed"]


def test_postgres_schema_gives_the_books_counts_from_a_snapshot_taken_once(cdm_server, tmp_path, monkeypatch):
    batch = _pg_batch(tmp_path / "landing" / "gi" / "batch_0001")
    before = sorted((p.name, p.stat().st_mtime_ns) for p in batch.iterdir())
    snapshot = tmp_path / "cache" / "gi" / "batch_0001" / SNAPSHOT
    monkeypatch.setenv(URL_ENV, _url(cdm_server, PASSWORD))
    with open_cdm(batch, snapshot=snapshot) as cdm:
        assert _counts(cdm) == (2630, 2578, 479)
        assert cdm.counts["person.upper_case"] == 1 and cdm.counts["concept_ancestor.ids_as_floats"] == 1
        assert "death: header only (its column names stored as its one row)" in cdm.notes
    assert snapshot.is_file()
    # The batch is immutable once read: a change to the live schema, or the URL gone, does not reach it.
    superuser = f"postgresql://meddiag@/cdm_src?host={cdm_server.socket_dir}&port={cdm_server.port}"
    with psycopg2.connect(superuser) as con, con.cursor() as cur:
        cur.execute('CREATE TABLE cdm.kept AS SELECT * FROM cdm."PERSON"; DELETE FROM cdm."PERSON"')
    try:
        monkeypatch.delenv(URL_ENV)
        with open_cdm(batch, snapshot=snapshot) as cdm:
            assert _counts(cdm) == (2630, 2578, 479)
    finally:
        with psycopg2.connect(superuser) as con, con.cursor() as cur:
            cur.execute('INSERT INTO cdm."PERSON" SELECT * FROM cdm.kept; DROP TABLE cdm.kept')
        con.close()
    assert sorted((p.name, p.stat().st_mtime_ns) for p in batch.iterdir()) == before


def test_wrong_password_names_the_variable_never_the_password(cdm_server, tmp_path, monkeypatch):
    batch = _pg_batch(tmp_path / "batch")
    wrong = "Wr0ng-pa55-7c1e"
    monkeypatch.setenv(URL_ENV, _url(cdm_server, wrong))
    snapshot = tmp_path / "cache" / SNAPSHOT
    with pytest.raises(
        CdmRefused, match=rf"cdm\.pgsource\.json: .*URL in {URL_ENV} \(password authentication failed\)"
    ) as exc:
        open_cdm(batch, snapshot=snapshot)
    assert wrong not in str(exc.value) and READER not in str(exc.value) and "cdm_src" not in str(exc.value)
    assert not snapshot.parent.exists() or not any(snapshot.parent.iterdir())


def test_untidy_and_incomplete_schemas_get_the_file_batches_handling(cdm_server, tmp_path, monkeypatch):
    """A concept id column of text (one value not a number) is repaired and counted; a schema without
    observation periods is refused, as a folder of files would be."""
    superuser = f"postgresql://meddiag@/cdm_src?host={cdm_server.socket_dir}&port={cdm_server.port}"
    with psycopg2.connect(superuser) as con, con.cursor() as cur:
        cur.execute(
            "CREATE SCHEMA untidy; CREATE SCHEMA partial; "
            'CREATE VIEW untidy.person AS SELECT * FROM cdm."PERSON"; '
            "CREATE VIEW untidy.observation_period AS SELECT * FROM cdm.observation_period; "
            'CREATE TABLE untidy.condition_occurrence AS SELECT "PERSON_ID", '
            '"CONDITION_CONCEPT_ID"::text AS "CONDITION_CONCEPT_ID", "CONDITION_START_DATE" '
            "FROM cdm.condition_occurrence; "
            "UPDATE untidy.condition_occurrence SET \"CONDITION_CONCEPT_ID\" = 'not a number' "
            'WHERE "PERSON_ID" = (SELECT min("PERSON_ID") FROM untidy.condition_occurrence); '
            'CREATE VIEW partial.person AS SELECT * FROM cdm."PERSON"; '
            f"GRANT USAGE ON SCHEMA untidy, partial TO {READER}; "
            f"GRANT SELECT ON ALL TABLES IN SCHEMA untidy TO {READER}; "
            f"GRANT SELECT ON ALL TABLES IN SCHEMA partial TO {READER}"
        )
        cur.execute("SELECT count(*) FROM untidy.condition_occurrence WHERE \"CONDITION_CONCEPT_ID\" = 'not a number'")
        changed = cur.fetchone()[0]
    con.close()
    monkeypatch.setenv(URL_ENV, _url(cdm_server, PASSWORD))
    with open_cdm(_pg_batch(tmp_path / "untidy", schema="untidy")) as cdm:
        assert 0 < changed == cdm.counts["condition_occurrence.condition_concept_id.not_converted"]
        assert cdm.counts["condition.no_concept"] == changed and cdm.domains == {"condition"}
    with pytest.raises(CdmRefused, match=r"no observation_period table"):
        open_cdm(_pg_batch(tmp_path / "partial", schema="partial"))


@pytest.mark.parametrize(
    ("marker", "env", "message"),
    [
        ({}, None, rf"environment variable {URL_ENV} \(the PostgreSQL URL\) is not set"),
        ({"password": "hunter2"}, "x", r"unknown key\(s\) 'password'.*credentials come from the environment"),
        ({"url_env": "lower-case"}, "x", r"url_env must name an environment variable"),
        ({"schema": "nowhere"}, "good", r"schema 'nowhere' does not exist or holds no table"),
    ],
)
def test_marker_and_source_refusals(cdm_server, tmp_path, monkeypatch, marker, env, message):
    batch = _pg_batch(tmp_path / "batch", **marker)
    monkeypatch.delenv(URL_ENV, raising=False)
    if env:
        monkeypatch.setenv(URL_ENV, _url(cdm_server, PASSWORD))
    with pytest.raises(CdmRefused, match=message) as exc:
        open_cdm(batch, snapshot=tmp_path / "snap" / SNAPSHOT)
    assert "hunter2" not in str(exc.value) and PASSWORD not in str(exc.value)
    assert not (tmp_path / "snap" / SNAPSHOT).exists()


def test_a_marker_beside_cdm_files_is_refused(tmp_path):
    batch = _pg_batch(tmp_path / "batch")
    (batch / "person.csv").write_text("person_id,year_of_birth\n1,1970\n")
    with pytest.raises(CdmRefused, match=r"a PostgreSQL batch holds no CDM file besides its marker"):
        open_cdm(batch)


def test_batch_cache_is_the_data_roots_cache_folder(tmp_path):
    from meddiag_pipelines.ingestion.landing import describe_batch

    batch = _pg_batch(tmp_path / "landing" / "gi" / "batch_0007")
    assert batch_cache(describe_batch("gi", batch)) == tmp_path / "cache" / "gi" / "batch_0007"


@pytest.mark.slow
def test_a_postgres_batch_trains_through_the_pipeline(cdm_server, tmp_path, monkeypatch):
    """The bundled spec over a PostgreSQL batch: the Book's counts in metrics.json, one snapshot in the batch's
    cache read by every step, and neither the URL nor the password in metadata or the report."""
    from meddiag_pipelines.specs import BUNDLED_TASKS_DIR, load_spec
    from meddiag_pipelines_tests.conftest import fast
    from meddiag_pipelines_tests.test_omop_modality import materialize

    spec = fast(load_spec(BUNDLED_TASKS_DIR / "eunomia_gi_bleed.yaml"))
    root = tmp_path / "data"
    _pg_batch(root / "landing" / spec.name / "batch_0001")
    url = _url(cdm_server, PASSWORD)
    monkeypatch.setenv(URL_ENV, url)
    result, metadata = materialize(spec, root)
    assert result.success
    latest = root / "reports" / spec.name / "latest"
    metrics = (latest / "metrics.json").read_text()
    omop = json.loads(metrics)["omop"]
    assert (omop["persons"], omop["outcome_count"]) == (2578, 479)
    assert (root / "cache" / spec.name / "batch_0001" / SNAPSHOT).is_file()
    shown = metadata + metrics + (latest / "report.html").read_text()
    assert PASSWORD not in shown and str(cdm_server.socket_dir) not in shown
