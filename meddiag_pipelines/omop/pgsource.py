"""A CDM held in a PostgreSQL schema, landed as a batch: a marker file naming the schema, copied once into a
local DuckDB snapshot so the batch is immutable from then on.

A batch folder holding ``cdm.pgsource.json`` (and ``_READY``) is a PostgreSQL batch::

    {"schema": "cdm", "url_env": "MEDDIAG_CDM_URL"}

``url_env`` (default ``MEDDIAG_CDM_URL``) names the environment variable holding the connection URL
(``postgresql://user:password@host:port/database``); the marker holds no credential and any other key is
refused. :func:`snapshot` copies the CDM tables the pipeline reads (in one read-only, repeatable-read
transaction, so every table is from the same moment) into one DuckDB file with each table's names and
column types as PostgreSQL has them; :func:`~meddiag_pipelines.omop.cdm.open_cdm` then reads that file as it
reads any DuckDB batch, with the same untidy-data repairs and refusals. Errors name the marker, the schema,
the table and the environment variable, never the URL, the password or a record value.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import duckdb

MARKER = "cdm.pgsource.json"
DEFAULT_URL_ENV = "MEDDIAG_CDM_URL"
CONNECT_TIMEOUT_S = 15
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,127}")
# PostgreSQL type -> the DuckDB type of its snapshot column; any other type is copied as text (open_cdm types it).
_TYPES = {
    "smallint": "BIGINT",
    "integer": "BIGINT",
    "bigint": "BIGINT",
    "numeric": "DOUBLE",
    "real": "DOUBLE",
    "double precision": "DOUBLE",
    "date": "DATE",
    "timestamp without time zone": "TIMESTAMP",
    "timestamp with time zone": "TIMESTAMP",
}
# libpq's reasons a connection fails, shown as they are (its full message can name hosts and users).
_CONNECT_REASONS = (
    "password authentication failed",
    "no password supplied",
    "does not exist",
    "Connection refused",
    "timeout expired",
    "could not translate host name",
    "No such file or directory",
)


class SourceRefused(ValueError):
    """The PostgreSQL source cannot be snapshotted; the message names the marker and the problem."""


@dataclass(frozen=True)
class PgSource:
    schema: str
    url_env: str = DEFAULT_URL_ENV


def read_marker(path: Path) -> PgSource:
    """The source a batch's marker names; refuses a marker that is not such a JSON object, or holds other keys."""
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise SourceRefused(f"{path.name}: not a JSON file") from None
    if not isinstance(found, dict):
        raise SourceRefused(f"{path.name}: not a JSON object")
    extra = sorted(set(found) - {"schema", "url_env"})
    if extra:
        raise SourceRefused(
            f"{path.name}: unknown key(s) {', '.join(map(repr, extra))[:200]}; the marker names only the schema and "
            "the environment variable holding the URL (credentials come from the environment)"
        )
    schema, url_env = found.get("schema"), found.get("url_env", DEFAULT_URL_ENV)
    if not isinstance(schema, str) or not 0 < len(schema) <= 63:
        raise SourceRefused(f"{path.name}: schema must be a PostgreSQL schema name (text of 1 to 63 characters)")
    if not isinstance(url_env, str) or not _ENV_NAME.fullmatch(url_env):
        raise SourceRefused(f"{path.name}: url_env must name an environment variable (A-Z, 0-9 and _)")
    return PgSource(schema, url_env)


def _driver(marker: str):
    """psycopg2, the omop extra's driver, imported only for a PostgreSQL batch."""
    try:
        import psycopg2
    except ImportError:
        raise SourceRefused(
            f"{marker}: a PostgreSQL batch needs psycopg2: pip install 'meddiag_pipelines[omop]'"
        ) from None
    return psycopg2


def _connect(source: PgSource, marker: str):
    psycopg2 = _driver(marker)
    url = os.environ.get(source.url_env, "")
    if not url:
        raise SourceRefused(f"{marker}: the environment variable {source.url_env} (the PostgreSQL URL) is not set")
    url = re.sub(r"^postgres(ql)?\+\w+://", "postgresql://", url)  # a SQLAlchemy URL's driver name
    try:
        con = psycopg2.connect(url, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg2.Error as exc:
        text = str(exc)
        reason = next((r for r in _CONNECT_REASONS if r in text), type(exc).__name__)
        raise SourceRefused(
            f"{marker}: could not connect to PostgreSQL with the URL in {source.url_env} ({reason})"
        ) from None
    con.set_session(readonly=True, isolation_level="REPEATABLE READ")
    return con


def _tables(cur, source: PgSource, marker: str, wanted: frozenset[str]) -> dict[str, str]:
    """lower-case table name -> its name in the schema, for the wanted tables present."""
    cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (source.schema,))
    names = [r[0] for r in cur.fetchall()]
    if not names:
        raise SourceRefused(f"{marker}: schema {source.schema!r} does not exist or holds no table this role can read")
    found: dict[str, str] = {}
    for name in sorted(names):
        key = name.lower()
        if key not in wanted:
            continue
        if key in found:
            raise SourceRefused(f"{marker}: table {key} is in schema {source.schema!r} twice (names differing in case)")
        found[key] = name
    return found


def _copy_table(cur, duck: duckdb.DuckDBPyConnection, schema: str, table: str, scratch: Path) -> None:
    """One table through a CSV file (PostgreSQL's COPY streams it; DuckDB reads it with the source's types)."""
    from psycopg2 import sql

    cur.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
        "ORDER BY ordinal_position",
        (schema, table),
    )
    columns = cur.fetchall()
    select = sql.SQL(", ").join(
        sql.SQL("{}::timestamp").format(sql.Identifier(c)) if t == "timestamp with time zone" else sql.Identifier(c)
        for c, t in columns
    )
    query = sql.SQL("COPY (SELECT {} FROM {}.{}) TO STDOUT WITH (FORMAT csv, HEADER true)").format(
        select, sql.Identifier(schema), sql.Identifier(table)
    )
    csv = scratch / "table.csv"
    with csv.open("w", encoding="utf-8", newline="") as out:
        cur.copy_expert(query, out)
    types = (
        "{" + ", ".join(f"'{c.replace(chr(39), chr(39) * 2)}': '{_TYPES.get(t, 'VARCHAR')}'" for c, t in columns) + "}"
    )
    name = '"' + table.replace('"', '""') + '"'
    duck.execute(
        f"CREATE TABLE {name} AS SELECT * FROM read_csv(?, header = true, auto_detect = false, columns = {types}, "
        "allow_quoted_nulls = false)",
        [str(csv)],
    )
    csv.unlink()


def snapshot(marker: Path, target: Path, wanted: frozenset[str]) -> dict[str, str]:
    """Copy the ``wanted`` tables (lower-case names) of the schema ``marker`` names into a new DuckDB file at
    ``target`` (written beside it, then renamed). Returns lower-case name -> the table's name in the schema."""
    psycopg2 = _driver(marker.name)
    source = read_marker(marker)
    con = _connect(source, marker.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pgsnap-", dir=target.parent) as tmp:
        scratch = Path(tmp)
        partial = scratch / target.name
        table = ""
        try:
            with con, con.cursor() as cur:
                found = _tables(cur, source, marker.name, wanted)
                with duckdb.connect(str(partial)) as duck:
                    for table in found.values():
                        _copy_table(cur, duck, source.schema, table, scratch)
        except (psycopg2.Error, duckdb.Error) as exc:
            where = f"{source.schema}.{table}" if table else source.schema
            raise SourceRefused(
                f"{marker.name}: {where} could not be read from PostgreSQL ({type(exc).__name__})"
            ) from None
        finally:
            con.close()
        os.replace(partial, target)
    return found
