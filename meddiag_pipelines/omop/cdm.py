"""Open a landed OMOP CDM batch as DuckDB views with normalised names and types, reporting what is untidy and
refusing what would corrupt a cohort.

A batch is a folder holding either one DuckDB file (``*.duckdb``/``*.db``; the CDM in the schema holding
``person``) or CSV or Parquet files named by their table in any case (``PERSON.csv``, ``person.tsv.gz``,
``person.parquet``; a table may come as numbered parts or a ``<table>/`` folder of parts; docs/omop.md, "What a
batch may hold"). Files of tables the pipeline does not use are never opened. :func:`open_cdm` gives a
:class:`Cdm`: an in-memory DuckDB connection where

* ``person`` (one row per person: ``person_id``, ``gender_concept_id``, ``year_of_birth``, ``birth_date``,
  ``death_date``) and ``observation_period`` (``person_id``, ``start_date``, ``end_date``) are small tables;
* ``ev_<domain>`` (see :data:`DOMAINS`) is a view of one domain's usable events: ``person_id``, ``concept_id``,
  ``event_date``, ``value`` (DOUBLE or NULL), ``text_value``, ``in_observation`` (inside one of the person's
  observation periods);
* ``concept_ancestor`` and ``concept`` are typed views when the batch has them.

Column names are lower-cased; ids (``*_id``) and concept ids (``*_concept_id``) are BIGINT even when stored as
floats or text (text that is not a whole number becomes NULL and is counted); ``*_date`` columns are DATE.
CDM v5.3 visit columns are renamed to their v5.4 names. Every repair is a plain-language note with a count in
``Cdm.notes`` (and a number in ``Cdm.counts``); no record value ever appears in a note or an error.
"""

from __future__ import annotations

import graphlib
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from meddiag_pipelines.omop import pgsource


class CdmRefused(ValueError):
    """The batch would corrupt a cohort; the message names the file and the problem."""


@dataclass(frozen=True)
class EventDomain:
    table: str
    concept: str
    date: str
    value: str | None = None
    text: str | None = None


# Spec domain name -> where its events are. Era tables are there for cohorts defined on eras (as the Book's).
DOMAINS: dict[str, EventDomain] = {
    "condition": EventDomain("condition_occurrence", "condition_concept_id", "condition_start_date"),
    "condition_era": EventDomain("condition_era", "condition_concept_id", "condition_era_start_date"),
    "drug": EventDomain("drug_exposure", "drug_concept_id", "drug_exposure_start_date"),
    "drug_era": EventDomain("drug_era", "drug_concept_id", "drug_era_start_date"),
    "procedure": EventDomain("procedure_occurrence", "procedure_concept_id", "procedure_date"),
    "measurement": EventDomain("measurement", "measurement_concept_id", "measurement_date", "value_as_number"),
    "observation": EventDomain(
        "observation", "observation_concept_id", "observation_date", "value_as_number", "value_as_string"
    ),
    "visit": EventDomain("visit_occurrence", "visit_concept_id", "visit_start_date"),
    "device": EventDomain("device_exposure", "device_concept_id", "device_exposure_start_date"),
}

NUMBER_COLUMNS = frozenset(
    {"value_as_number", "range_low", "range_high", "quantity", "days_supply", "refills", "dose_value"}
)
# Vocabulary keys that are text although named ``*_id``.
TEXT_ID_COLUMNS = frozenset(
    {"domain_id", "vocabulary_id", "concept_class_id", "relationship_id", "reverse_relationship_id"}
)
INT_COLUMNS = frozenset({"year_of_birth", "month_of_birth", "day_of_birth", "drug_exposure_count", "gap_days"})
# The tables read (others in the batch are left alone).
USED_TABLES = frozenset(
    {"person", "observation_period", "death", "concept", "concept_ancestor", "cdm_source"}
    | {d.table for d in DOMAINS.values()}
)
# v5.3 name -> v5.4 name (the CDM v5.4 release notes); applied where the v5.4 name is absent.
V53_RENAMES = {
    "admitting_source_concept_id": "admitted_from_concept_id",
    "admitting_source_value": "admitted_from_source_value",
    "discharge_to_concept_id": "discharged_to_concept_id",
    "discharge_to_source_value": "discharged_to_source_value",
    "visit_detail_parent_id": "parent_visit_detail_id",
}
# A Parquet footer declaring more rows than this many per byte of file (plus a floor) is refused unread:
# even a column of one repeated value takes more than a bit per row once pages and row groups are counted.
MAX_ROWS_PER_BYTE = 1000
MIN_ROW_LIMIT = 1_000_000
MIN_BIRTH_YEAR = 1850  # the Data Quality Dashboard's plausible low for year_of_birth
PEEL_ROUNDS = 100  # rounds of concept_ancestor's cycle check in DuckDB (OHDSI's hierarchies are far less deep)
INT_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT")
FLOAT_TYPES = ("FLOAT", "DOUBLE", "REAL")
_GENERIC_COLUMN = re.compile(r"column\d+")
# A table file: CSV (any delimiter DuckDB detects; ``.tsv``; gzipped or not) or Parquet.
_TABLE_FILE = re.compile(r"(?P<stem>[^.]+)(?:\.(?P<csv>csv|tsv)(?:\.gz)?|(?:\.snappy)?\.parquet)", re.IGNORECASE)
_NUMBERED_PART = re.compile(r"(?P<table>[a-z_]+?)[_.-]?(?:part[_-]?)?\d+")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RENAMED_TWIN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)_\d+")


@dataclass
class Cdm:
    """An opened CDM batch. ``files`` maps each table to the file it came from (for messages)."""

    con: duckdb.DuckDBPyConnection
    source: Path
    version: str
    today: date
    files: dict[str, str]
    domains: frozenset[str]
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    scratch: Path | None = None  # the working database and spill folder (removed by close)

    def has(self, table: str) -> bool:
        return table in self.files

    def note(self, key: str, count: int, text: str) -> None:
        """Record a repair: ``count`` under ``key`` and, when non-zero, a plain-language note."""
        self.counts[key] = self.counts.get(key, 0) + int(count)
        if count:
            self.notes.append(text.format(n=int(count)))

    def require_ancestor(self, why: str) -> None:
        if not self.has("concept_ancestor"):
            raise CdmRefused(f"{self.source.name}: no concept_ancestor table, needed because {why}")

    def close(self) -> None:
        self.con.close()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def __enter__(self) -> Cdm:  # noqa: PYI034 (a dataclass, not subclassed)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _refuse_links(entries: list[Path]) -> None:
    """A batch holds its own files: a symbolic link (perhaps to a file outside it) is refused, not followed."""
    for path in entries:
        if path.is_symlink():
            raise CdmRefused(f"{path.name}: a symbolic link; a batch holds its own files, so it is not followed")


def _table_file(path: Path) -> tuple[str, bool] | None:
    """(lower-cased name, whether CSV) of a table file (``person.csv``, ``PERSON.tsv.gz``, ``person.parquet``)."""
    found = _TABLE_FILE.fullmatch(path.name)
    return None if found is None else (found.group("stem").lower(), found.group("csv") is not None)


def _table_of(path: Path) -> tuple[str, bool] | None:
    """(the used CDM table a batch entry holds, whether it is the whole table), or None: ``<table>.<ext>`` and a
    ``<table>/`` folder of parts are whole, numbered parts (``<table>_1.csv``, ``<table>-002.parquet``) are not."""
    if path.is_dir():
        return (path.name.lower(), True) if path.name.lower() in USED_TABLES else None
    found = _table_file(path)
    if found is None:
        return None
    if found[0] in USED_TABLES:
        return found[0], True
    part = _NUMBERED_PART.fullmatch(found[0])
    return (part.group("table"), False) if part is not None and part.group("table") in USED_TABLES else None


def _folder_parts(folder: Path) -> list[Path]:
    """The CSV or Parquet files of a ``<table>/`` folder (markers such as ``_SUCCESS`` and hidden files aside)."""
    inside = [p for p in sorted(folder.iterdir()) if not p.name.startswith((".", "_"))]
    _refuse_links(inside)
    parts = [p for p in inside if p.is_file() and _table_file(p) is not None]
    if len(parts) != len(inside):
        raise CdmRefused(f"{folder.name}/: a table folder holds only its CSV or Parquet parts (one level)")
    return parts


def _table_parts(entries: list[Path]) -> dict[str, list[Path]]:
    """The files of each CDM table the pipeline reads (one format per table). Other files (a README, the
    vocabulary tables not used) are never opened."""
    found: dict[str, list[tuple[Path, bool]]] = {}
    for path in entries:
        table = _table_of(path)
        if table is not None:
            found.setdefault(table[0], []).append((path, table[1]))
    tables = {}
    for table, sources in found.items():
        if len(sources) > 1 and any(whole for _, whole in sources):
            names = ", ".join(p.name for p, _ in sources)
            raise CdmRefused(f"{sources[0][0].name}: table {table} is given more than once ({names})")
        files = [f for p, _ in sources for f in (_folder_parts(p) if p.is_dir() else [p])]
        if len({_table_file(f)[1] for f in files}) > 1:
            raise CdmRefused(f"{sources[0][0].name}: the parts of table {table} mix CSV and Parquet files")
        if files:
            tables[table] = files
    return tables


def _discover(batch: Path) -> tuple[str, dict[str, list[Path]]]:
    """("duckdb", {"": [file]}), ("postgres", {"": [marker]}) or ("files", {table: its files}); refuses an empty
    or ambiguous batch."""
    batch = Path(batch)
    if batch.is_file():
        entries = [batch]
    elif batch.is_dir():
        entries = sorted(p for p in batch.iterdir() if not p.name.startswith("."))
        _refuse_links(entries)
    else:
        raise CdmRefused(f"{batch.name}: no such CDM batch")
    files = [p for p in entries if p.is_file()]
    dbs = [p for p in files if p.suffix.lower() in (".duckdb", ".db")]
    markers = [p for p in files if p.name.lower() == pgsource.MARKER]
    if markers:
        if dbs or any(_table_file(p) is not None for p in files):
            raise CdmRefused(f"{markers[0].name}: a PostgreSQL batch holds no CDM file besides its marker")
        return "postgres", {"": markers[:1]}
    if len(dbs) > 1:
        raise CdmRefused(f"{batch.name}: more than one DuckDB file; a batch holds one")
    if dbs:
        tables = [p.name for p in entries if _table_of(p) is not None]
        if tables:
            raise CdmRefused(
                f"{dbs[0].name}: beside table files ({', '.join(tables[:3])}); a batch holds a DuckDB file or table "
                "files, and which one is the CDM is not knowable"
            )
        return "duckdb", {"": dbs}
    tables = _table_parts(entries)
    if not tables:
        raise CdmRefused(f"{batch.name}: no DuckDB file, and no CSV or Parquet file named by a CDM table")
    return "files", tables


def _check_parquet(path: Path) -> None:
    """Refuse a Parquet file whose footer declares an absurd row count, before any page is read."""
    try:
        meta = pq.read_metadata(path)
    except Exception as exc:  # noqa: BLE001 (pyarrow raises several types for a broken footer)
        raise CdmRefused(f"{path.name}: not a readable Parquet file ({type(exc).__name__})") from None
    limit = MAX_ROWS_PER_BYTE * path.stat().st_size + MIN_ROW_LIMIT
    grouped = sum(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
    if meta.num_rows < 0 or meta.num_rows > limit or grouped != meta.num_rows:
        raise CdmRefused(
            f"{path.name}: the Parquet footer declares {meta.num_rows} rows in a {path.stat().st_size}-byte file "
            f"(row groups sum to {grouped}); refused unread"
        )


def _pg_snapshot(marker: Path, snapshot: Path, scratch: Path) -> Path:
    """The DuckDB snapshot of a PostgreSQL batch, taken when ``snapshot`` does not exist yet."""
    if not snapshot.is_file():
        try:
            pgsource.snapshot(marker, snapshot, USED_TABLES)
        except pgsource.SourceRefused as exc:
            shutil.rmtree(scratch, ignore_errors=True)
            raise CdmRefused(str(exc)) from None
    return snapshot


def _duckdb_schemas(con: duckdb.DuckDBPyConnection, path: Path) -> dict[str, tuple[str, str]]:
    """Used table -> (schema, table name) in the attached DuckDB file ``src``. The CDM is the schema holding
    ``person`` (``main``, or ``cdm`` as many extracts name it); a table it lacks (the vocabulary, often in a schema
    of its own) is taken from the one other schema holding it. Two schemas holding ``person``, or a table
    missing from the CDM's schema and held by two others, is refused: which is meant is not knowable here."""
    held: dict[str, dict[str, str]] = {}
    for schema, table in con.execute(
        "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = 'src' "
        "UNION ALL SELECT schema_name, view_name FROM duckdb_views() WHERE database_name = 'src' ORDER BY 1, 2"
    ).fetchall():
        if table.lower() in USED_TABLES:
            held.setdefault(table.lower(), {}).setdefault(schema, table)
    persons = sorted(held.get("person", {}))
    if len(persons) > 1:
        raise CdmRefused(
            f"{path.name}: schemas {', '.join(persons)} each hold a person table; a batch holds one CDM "
            "(keep one of them, or land each as its own batch)"
        )
    chosen = {}
    for table, schemas in held.items():
        if persons and persons[0] in schemas:
            schema = persons[0]
        elif len(schemas) == 1:
            [schema] = schemas
        else:
            raise CdmRefused(
                f"{path.name}: table {table} is in schemas {', '.join(sorted(schemas))} and not beside person; "
                "which one is meant is not knowable"
            )
        chosen[table] = (schema, schemas[schema])
    return chosen


def _attach_sources(con: duckdb.DuckDBPyConnection, kind: str, found: dict[str, list[Path]]) -> dict[str, str]:
    """Create ``raw_<table>`` views over the batch's files; returns table -> where it is (for messages)."""
    files: dict[str, str] = {}
    if kind == "duckdb":
        [path] = found[""]
        try:  # TYPE duckdb: a SQLite file (or any other) is not handed to an extension DuckDB would download
            con.execute(f"ATTACH {_literal(str(path))} AS src (TYPE duckdb, READ_ONLY)")
        except duckdb.Error as exc:
            raise CdmRefused(f"{path.name}: not a readable DuckDB database ({type(exc).__name__})") from None
        for name, (schema, table) in _duckdb_schemas(con, path).items():
            files[name] = f"{path.name}:{'' if schema == 'main' else schema + '.'}{table}"
            try:  # a view of the file may name a table that is gone
                con.execute(
                    f"CREATE VIEW {_quote('raw_' + name)} AS SELECT * FROM src.{_quote(schema)}.{_quote(table)}"
                )
            except duckdb.Error as exc:
                raise CdmRefused(f"{files[name]}: not readable as a table ({type(exc).__name__})") from None
        return files
    for name, paths in found.items():
        paths = [p for p in paths if p.stat().st_size > 0]  # an empty file is no rows (an absent table if all are)
        if not paths:
            continue
        shown = paths[0].name if len(paths) == 1 else f"{paths[0].parent.name}/{paths[0].name} (+{len(paths) - 1})"
        listed = "[" + ", ".join(_literal(str(p)) for p in paths) + "]"
        if _table_file(paths[0])[1]:
            # Lines of the wrong shape are set aside in _rejects_<table> (_type_table refuses them), not guessed at.
            src = (
                f"read_csv({listed}, header = true, all_varchar = true, store_rejects = true, "
                f"rejects_table = {_literal('_rejects_' + name)}, rejects_scan = {_literal('_rejscan_' + name)})"
            )
        else:
            for path in paths:
                _check_parquet(path)
            src = f"read_parquet({listed}, union_by_name = true)"
        try:
            con.execute(f"CREATE VIEW {_quote('raw_' + name)} AS SELECT * FROM {src}")
        except duckdb.Error as exc:
            raise CdmRefused(f"{shown}: not readable as a table ({type(exc).__name__})") from None
        files[name] = shown
    return files


def _columns(con: duckdb.DuckDBPyConnection, view: str) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in con.execute(f"DESCRIBE {_quote(view)}").fetchall()]


def _header_only_names(con: duckdb.DuckDBPyConnection, table: str, cols: list[tuple[str, str]]) -> list[str] | None:
    """A table loaded without its header (columns ``column0..``) whose one row is that header: its names."""
    if not cols or not all(_GENERIC_COLUMN.fullmatch(c) for c, _ in cols):
        return None
    rows = con.execute(f"SELECT * FROM {_quote('raw_' + table)} LIMIT 2").fetchall()
    if len(rows) != 1 or not all(isinstance(v, str) and _IDENTIFIER.fullmatch(v) for v in rows[0]):
        return None
    return list(rows[0])


def _kind(column: str) -> str:
    if column in TEXT_ID_COLUMNS:
        return "keep"
    if column.endswith("_id") or column in INT_COLUMNS:
        return "int"
    if column.endswith("_datetime"):
        return "timestamp"
    if column.endswith("_date"):
        return "date"
    if column in NUMBER_COLUMNS:
        return "number"
    return "keep"


def _typed_expr(src: str, dtype: str, kind: str) -> tuple[str, str | None]:
    """(expression in the target type, expression true where a non-empty value did not convert, or None)."""
    text = dtype == "VARCHAR"
    if kind == "int":
        if dtype.startswith(INT_TYPES):
            return f"CAST({src} AS BIGINT)", None
        if dtype.startswith(FLOAT_TYPES) or dtype.startswith("DECIMAL"):
            expr = f"CASE WHEN {src} = trunc({src}) THEN TRY_CAST({src} AS BIGINT) END"
        elif text:
            as_double = f"TRY_CAST(trim({src}) AS DOUBLE)"
            expr = (
                f"coalesce(TRY_CAST(trim({src}) AS BIGINT), "
                f"CASE WHEN {as_double} = trunc({as_double}) THEN TRY_CAST({as_double} AS BIGINT) END)"
            )
        else:
            expr = f"TRY_CAST({src} AS BIGINT)"
    elif kind == "date":
        if dtype == "DATE":
            return src, None
        # ISO dates, dates with a time, and YYYYMMDD (text or a number, as some ETL tools write them)
        if text:
            expr = (
                f"coalesce(TRY_CAST(trim({src}) AS DATE), CAST(TRY_CAST(trim({src}) AS TIMESTAMP) AS DATE), "
                f"CAST(try_strptime(trim({src}), '%Y%m%d') AS DATE))"
            )
        elif dtype.startswith(INT_TYPES):
            expr = f"CAST(try_strptime(CAST({src} AS VARCHAR), '%Y%m%d') AS DATE)"
        else:
            expr = f"TRY_CAST({src} AS DATE)"
    elif kind == "timestamp":
        expr = f"TRY_CAST({'trim(' + src + ')' if text else src} AS TIMESTAMP)"
    elif kind == "number":
        cast = f"TRY_CAST({'trim(' + src + ')' if text else src} AS DOUBLE)"
        expr = f"CASE WHEN isfinite({cast}) THEN {cast} END"
    else:
        return src, None
    empty = f"trim(CAST({src} AS VARCHAR)) <> ''" if text else "true"
    return expr, f"{src} IS NOT NULL AND {empty} AND ({expr}) IS NULL"


def _type_table(cdm: Cdm, table: str, csv: bool) -> list[str]:
    """Create ``typed_<table>``; note header-only tables, text numbers, float ids and values that did not
    convert. Returns the typed view's columns."""
    con, raw = cdm.con, "raw_" + table
    cols = _columns(con, raw)
    header = _header_only_names(con, table, cols)
    if header is not None:
        cdm.note(f"{table}.header_only", 1, f"{table}: header only (its column names stored as its one row)")
        names = [h.lower() for h in header]
        if len(set(names)) != len(names):
            raise CdmRefused(f"{cdm.files[table]}: two columns share a name when case is ignored")
        select = ", ".join(f"CAST(NULL AS VARCHAR) AS {_quote(n)}" for n in names)
        con.execute(f"CREATE VIEW {_quote(raw + '_h')} AS SELECT {select} WHERE false")
        raw, cols = raw + "_h", [(n, "VARCHAR") for n in names]
    lowered = [c.lower() for c, _ in cols]
    # DuckDB's CSV reader renames a repeated header name (in any case) to <name>_<n>
    renamed = csv and any((m := _RENAMED_TWIN.fullmatch(c)) and m.group(1) in lowered for c in lowered)
    if len(set(lowered)) != len(lowered) or renamed:
        raise CdmRefused(f"{cdm.files[table]}: two columns share a name when case is ignored")
    if any(c != c.lower() for c, _ in cols):
        cdm.note(f"{table}.upper_case", 1, f"{table}: column names not in lower case (lower-cased)")
    present = set(lowered)
    exprs, checks, text_numbers, float_ids, targets = [], [], 0, 0, []
    for (col, dtype), name in zip(cols, lowered, strict=True):
        target = V53_RENAMES[name] if name in V53_RENAMES and V53_RENAMES[name] not in present else name
        targets.append(target)
        kind = _kind(target)
        expr, bad = _typed_expr(_quote(col), dtype, kind)
        exprs.append(f"{expr} AS {_quote(target)}")
        if bad is not None:
            checks.append((target, bad))
        text_numbers += kind in ("int", "number") and dtype == "VARCHAR" and not csv and header is None
        float_ids += kind == "int" and dtype.startswith(FLOAT_TYPES + ("DECIMAL",))
    con.execute(f"CREATE VIEW {_quote('typed_' + table)} AS SELECT {', '.join(exprs)} FROM {_quote(raw)}")
    cdm.note(f"{table}.numbers_as_text", text_numbers, f"{table}: {{n}} numeric column(s) stored as text (converted)")
    cdm.note(f"{table}.ids_as_floats", float_ids, f"{table}: {{n}} id column(s) stored as decimals (converted)")
    if checks:
        sums = ", ".join(f"count(*) FILTER (WHERE {bad})" for _, bad in checks)
        bad_counts = _fetch(cdm, table, f"SELECT {sums} FROM {_quote(raw)}")
        for (target, _), n in zip(checks, bad_counts, strict=True):
            cdm.note(
                f"{table}.{target}.not_converted",
                n,
                f"{table}.{target}: {{n}} value(s) of the wrong type (dropped from that column)",
            )
    total = _fetch(cdm, table, f"SELECT count(*) FROM {_quote(raw)}")[0]
    if csv:
        _refuse_malformed_lines(cdm, table)
    if total == 0 and header is None:
        cdm.note(f"{table}.header_only", 1, f"{table}: header only (no rows)")
    renamed = sum(t != n for t, n in zip(targets, lowered, strict=True))
    cdm.note(f"{table}.v53_renamed", renamed, f"{table}: {{n}} CDM v5.3 column name(s) changed to v5.4's")
    return targets


def _refuse_malformed_lines(cdm: Cdm, table: str) -> None:
    """Refuse a CSV table with lines DuckDB set aside (too many or too few fields, an unclosed quote), naming the
    first by its number and kind, never its content: a line of the wrong shape may shift an id or a date into
    another column, and where the fields belong is not knowable here."""
    rejects = "_rejects_" + table
    if not cdm.con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [rejects]).fetchone()[0]:
        return  # never scanned (a header-only table)
    n, first, kinds = cdm.con.execute(
        "SELECT count(*), min(line), string_agg(DISTINCT lower(error_type), ', ' ORDER BY lower(error_type)) "
        f"FROM (SELECT DISTINCT s.file_path, e.line, e.error_type FROM {_quote(rejects)} e "
        f"JOIN {_quote('_rejscan_' + table)} s USING (scan_id, file_id))"
    ).fetchone()
    if n:
        raise CdmRefused(
            f"{cdm.files[table]}: {n} malformed line(s) ({kinds}), the first at line {first}; refused, since a "
            "field out of place would misplace an id or a date"
        )


def _fetch(cdm: Cdm, table: str, sql: str) -> tuple:
    """The one row of ``sql``, read to its end (so a CSV scan's set-aside lines are stored when it returns)."""
    try:
        return cdm.con.execute(sql).fetchall()[0]
    except duckdb.Error as exc:  # a malformed CSV line, an unreadable page: name the file, not the content
        raise CdmRefused(f"{cdm.files[table]}: could not be read ({type(exc).__name__})") from None


def _require(cdm: Cdm, table: str, columns: list[str], needed: tuple[str, ...]) -> None:
    missing = [c for c in needed if c not in columns]
    if missing and not any(_IDENTIFIER.fullmatch(c) for c in columns):  # its names would be values: not shown
        raise CdmRefused(f"{cdm.files[table]}: its first line holds no column names (a file without a header line?)")
    if missing:
        raise CdmRefused(f"{cdm.files[table]}: table {table} lacks column(s) {', '.join(missing)}")


def _or_null(columns: list[str], name: str, sql_type: str) -> str:
    return _quote(name) if name in columns else f"CAST(NULL AS {sql_type})"


def _build_person(cdm: Cdm, columns: list[str], death_columns: list[str]) -> None:
    """``person``: first row per id kept, persons with no birth year, born before :data:`MIN_BIRTH_YEAR` or in
    the future refused."""
    _require(cdm, "person", columns, ("person_id", "year_of_birth"))
    month = _or_null(columns, "month_of_birth", "BIGINT")
    day = _or_null(columns, "day_of_birth", "BIGINT")
    plausible = f"year_of_birth BETWEEN {MIN_BIRTH_YEAR} AND 9999"
    made = (
        f"make_date(CAST(CASE WHEN {plausible} THEN year_of_birth END AS INTEGER), CASE WHEN {month} BETWEEN 1 AND 12 "
        f"THEN CAST({month} AS INTEGER) ELSE 1 END, CASE WHEN {day} BETWEEN 1 AND 28 THEN CAST({day} AS INTEGER) "
        "ELSE 1 END)"
    )
    birth = f"coalesce(CAST({_or_null(columns, 'birth_datetime', 'TIMESTAMP')} AS DATE), {made})"
    today = f"DATE {_literal(cdm.today.isoformat())}"
    con = cdm.con
    con.execute(
        "CREATE TEMP VIEW person_ranked AS SELECT *, row_number() OVER (PARTITION BY person_id ORDER BY _rn) AS _k "
        "FROM (SELECT *, row_number() OVER () AS _rn FROM typed_person) WHERE person_id IS NOT NULL"
    )
    deaths = "SELECT NULL::BIGINT AS person_id, NULL::DATE AS death_date WHERE false"
    if {"person_id", "death_date"} <= set(death_columns):
        deaths = "SELECT person_id, min(death_date) AS death_date FROM typed_death GROUP BY person_id"
    con.execute(
        f"CREATE TABLE person AS SELECT p.person_id, {_or_null(columns, 'gender_concept_id', 'BIGINT')} "
        f"AS gender_concept_id, year_of_birth, {birth} AS birth_date, d.death_date "
        f"FROM person_ranked p LEFT JOIN ({deaths}) d USING (person_id) "
        f"WHERE _k = 1 AND {plausible} AND year_of_birth <= year({today}) AND {birth} <= {today}"
    )
    null_ids, dups, kept_firsts, ancient = con.execute(
        "SELECT (SELECT count(*) FROM typed_person WHERE person_id IS NULL), count(*) FILTER (WHERE _k > 1), "
        f"count(*) FILTER (WHERE _k = 1), count(*) FILTER (WHERE _k = 1 AND year_of_birth < {MIN_BIRTH_YEAR}) "
        "FROM person_ranked"
    ).fetchone()
    kept = con.execute("SELECT count(*) FROM person").fetchone()[0]
    cdm.note("person.no_id", null_ids, "person: {n} row(s) without a usable person_id (dropped)")
    cdm.note("person.duplicate_id", dups, "person: {n} repeated person_id row(s) (the first kept)")
    cdm.note(
        "person.refused_birth",
        kept_firsts - kept - ancient,
        "person: {n} person(s) with no birth year or born in the future (refused)",
    )
    cdm.note(
        "person.born_before_floor",
        ancient,
        f"person: {{n}} person(s) born before {MIN_BIRTH_YEAR}, OHDSI's data-quality floor (refused)",
    )
    cdm.counts["person.persons"] = kept
    if kept == 0:
        raise CdmRefused(
            f"{cdm.files['person']}: no usable person rows (of {null_ids + kept_firsts + dups}: {null_ids} without a "
            f"usable person_id, {kept_firsts} with no birth year, born before {MIN_BIRTH_YEAR} or in the future)"
        )
    if cdm.has("death"):
        bad = con.execute("SELECT count(*) FROM person WHERE death_date < birth_date").fetchone()[0]
        con.execute("UPDATE person SET death_date = NULL WHERE death_date < birth_date")
        cdm.note("death.before_birth", bad, "death: {n} death date(s) before birth (ignored)")


def _build_observation_period(cdm: Cdm, columns: list[str]) -> None:
    """``observation_period``: usable periods of known persons, overlapping ones merged (so an event falls in
    at most one)."""
    _require(
        cdm,
        "observation_period",
        columns,
        ("person_id", "observation_period_start_date", "observation_period_end_date"),
    )
    con = cdm.con
    con.execute(
        """
        CREATE TABLE observation_period AS
        WITH base AS (
            SELECT o.person_id, o.observation_period_start_date AS start_date, o.observation_period_end_date AS end_date
            FROM typed_observation_period o JOIN person p USING (person_id)
            WHERE start_date IS NOT NULL AND end_date IS NOT NULL AND start_date <= end_date
        ), marked AS (
            SELECT *, CASE WHEN start_date <= max(end_date) OVER (PARTITION BY person_id ORDER BY start_date, end_date
                ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) THEN 0 ELSE 1 END AS new_island
            FROM base
        ), islands AS (
            SELECT *, sum(new_island) OVER (PARTITION BY person_id ORDER BY start_date, end_date
                ROWS UNBOUNDED PRECEDING) AS island
            FROM marked
        )
        SELECT person_id, min(start_date) AS start_date, max(end_date) AS end_date, count(*) AS merged
        FROM islands GROUP BY person_id, island
        """
    )
    total, orphans = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE person_id IS NULL OR person_id NOT IN (SELECT person_id FROM person))"
        " FROM typed_observation_period"
    ).fetchone()
    kept, merged = con.execute("SELECT count(*), coalesce(sum(merged), 0) FROM observation_period").fetchone()
    cdm.note(
        "observation_period.unknown_person",
        orphans,
        "observation_period: {n} row(s) of persons not in person (dropped)",
    )
    cdm.note(
        "observation_period.bad_dates",
        total - orphans - merged,
        "observation_period: {n} row(s) without dates or ending before they start (dropped)",
    )
    cdm.note(
        "observation_period.overlapping",
        merged - kept,
        "observation_period: {n} overlapping period(s) merged into the one they overlap",
    )
    if kept == 0:
        dates = ("observation_period_start_date", "observation_period_end_date")
        unread = sum(cdm.counts.get(f"observation_period.{c}.not_converted", 0) for c in dates)
        forms = f"; {unread} date(s) in no form read here: ISO, with or without a time, or YYYYMMDD" if unread else ""
        raise CdmRefused(
            f"{cdm.files['observation_period']}: no usable observation_period rows (of {total}: {orphans} of persons "
            f"not in person, {total - orphans} without dates or ending before they start{forms})"
        )


# Why an event row is not used (``dropped`` in ``_all_<domain>``), with its note.
DROP_REASONS = {
    "unknown_person": "{n} row(s) of persons not in person (dropped)",
    "no_date": "{n} row(s) without a usable date (dropped)",
    "future": "{n} event(s) dated in the future (dropped)",
    "before_birth": "{n} event(s) dated before birth (dropped)",
    "no_concept": "{n} event(s) without a usable concept id (dropped)",
}


def _build_person_time(cdm: Cdm) -> None:
    """``_person_time``: one row per known person with the birth date and the observation periods (merged by
    :func:`_build_observation_period`, so they do not overlap): ``lo``/``hi`` when the person has exactly one,
    ``periods`` (a list) when several. So an event needs one equality join to get its person, its birth date
    and whether it lies in an observation period (a range join costs twice as much)."""
    cdm.con.execute(
        """
        CREATE TABLE _person_time AS
        WITH o AS (
            SELECT person_id, count(*) AS n, min(start_date) AS lo, max(end_date) AS hi,
                list({'lo': start_date, 'hi': end_date}) AS periods
            FROM observation_period GROUP BY person_id
        )
        SELECT p.person_id, p.birth_date, CASE WHEN o.n = 1 THEN o.lo END AS lo, CASE WHEN o.n = 1 THEN o.hi END AS hi,
            CASE WHEN o.n > 1 THEN o.periods END AS periods
        FROM person p LEFT JOIN o USING (person_id)
        """
    )


def _in_observation(day: str) -> str:
    """SQL: whether the date ``day`` lies in one of the ``_person_time t`` row's observation periods."""
    return (
        f"coalesce(CASE WHEN t.periods IS NULL THEN {day} BETWEEN t.lo AND t.hi "
        f"ELSE list_bool_or(list_transform(t.periods, x -> {day} BETWEEN x.lo AND x.hi)) END, false)"
    )


def _build_events(cdm: Cdm, name: str, dom: EventDomain, columns: list[str]) -> None:
    """``_all_<name>``: every row of the domain's table, typed, read once, with why it is dropped (if it is)
    and whether it lies in an observation period (one join with ``_person_time``); ``ev_<name>``: the rows kept."""
    _require(cdm, dom.table, columns, ("person_id", dom.concept, dom.date))
    # Only the columns the table has are stored; the view gives the others as nulls (less to write and hold).
    stored = [f"e.{_quote(dom.value)} AS value"] if dom.value in columns else []
    stored += [f"CAST(e.{_quote(dom.text)} AS VARCHAR) AS text_value"] if dom.text in columns else []
    value = "value" if dom.value in columns else "CAST(NULL AS DOUBLE) AS value"
    text = "text_value" if dom.text in columns else "CAST(NULL AS VARCHAR) AS text_value"
    today = f"DATE {_literal(cdm.today.isoformat())}"
    d, concept = f"e.{_quote(dom.date)}", f"e.{_quote(dom.concept)}"
    reasons = ", ".join(_literal(r) for r in DROP_REASONS)
    try:
        cdm.con.execute(
            f"CREATE TABLE {_quote('_all_' + name)} AS SELECT e.person_id, {concept} AS concept_id, {d} AS event_date, "
            f"{''.join(c + ', ' for c in stored)}CAST(CASE WHEN t.person_id IS NULL THEN 'unknown_person' "
            f"WHEN {d} IS NULL THEN 'no_date' WHEN {d} > {today} THEN 'future' WHEN {d} < t.birth_date THEN "
            f"'before_birth' WHEN {concept} IS NULL THEN 'no_concept' END AS ENUM({reasons})) AS dropped, "
            f"{_in_observation(d)} AS in_observation "
            f"FROM {_quote('typed_' + dom.table)} e LEFT JOIN _person_time t ON t.person_id = e.person_id"
        )
    except duckdb.Error as exc:  # a malformed CSV line, an unreadable page: name the file, not the content
        raise CdmRefused(f"{cdm.files[dom.table]}: could not be read ({type(exc).__name__})") from None
    cdm.con.execute(
        f"CREATE VIEW {_quote('ev_' + name)} AS SELECT person_id, concept_id, event_date, {value}, {text}, "
        f"in_observation FROM {_quote('_all_' + name)} WHERE dropped IS NULL"
    )
    filters = [f"dropped = {_literal(r)}" for r in DROP_REASONS] + [
        "dropped IS NULL AND NOT in_observation",
        "dropped IS NULL AND concept_id = 0",
    ]
    found = cdm.con.execute(
        f"SELECT {', '.join(f'count(*) FILTER (WHERE {f})' for f in filters)} FROM {_quote('_all_' + name)}"
    ).fetchone()
    t = dom.table
    for (reason, text_), n in zip(DROP_REASONS.items(), found, strict=False):
        cdm.note(f"{name}.{reason}", n, f"{t}: {text_}")
    cdm.note(
        f"{name}.outside_observation",
        found[-2],
        f"{t}: {{n}} event(s) outside any observation period (kept for cohorts, not used for covariates)",
    )
    cdm.note(f"{name}.concept_zero", found[-1], f"{t}: {{n}} event(s) with concept 0 (unmapped)")


def _cycle_of_direct_links(con: duckdb.DuckDBPyConnection) -> tuple[int, int] | None:
    """Two concepts on a cycle of the direct links (``min_levels_of_separation = 1``), or None. The links into a
    concept with no parent left, or out of one with no child left, are on no cycle: DuckDB drops them round by
    round (a vocabulary's tens of millions of rows are gone in as many rounds as its hierarchy is deep) and only
    what remains, a cycle or a hierarchy deeper than the rounds allowed, is sorted in Python."""
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _links AS SELECT DISTINCT ancestor_concept_id AS a, descendant_concept_id AS d "
        "FROM typed_concept_ancestor WHERE min_levels_of_separation = 1 "
        "AND ancestor_concept_id <> descendant_concept_id"  # no null passes <> (NOT IN over one would keep all)
    )
    for _ in range(PEEL_ROUNDS):
        dropped = con.execute(
            "DELETE FROM _links WHERE a NOT IN (SELECT d FROM _links) OR d NOT IN (SELECT a FROM _links)"
        ).fetchall()[0][0]
        if not dropped:
            break
    edges = con.execute("SELECT d, list(a) FROM _links GROUP BY d").fetchall()
    con.execute("DROP TABLE _links")
    try:
        graphlib.TopologicalSorter(dict(edges)).prepare()
    except graphlib.CycleError as exc:
        return exc.args[1][0], exc.args[1][1]
    return None


def _check_ancestor(cdm: Cdm, columns: list[str]) -> None:
    """Refuse a concept hierarchy with a cycle: descendants of a concept on it are not defined."""
    _require(cdm, "concept_ancestor", columns, ("ancestor_concept_id", "descendant_concept_id"))
    con = cdm.con
    pair = con.execute(
        "SELECT a.ancestor_concept_id, a.descendant_concept_id FROM typed_concept_ancestor a "
        "JOIN typed_concept_ancestor b ON a.ancestor_concept_id = b.descendant_concept_id "
        "AND a.descendant_concept_id = b.ancestor_concept_id WHERE a.ancestor_concept_id < a.descendant_concept_id "
        "ORDER BY 1, 2 LIMIT 1"
    ).fetchone()
    if pair is None and "min_levels_of_separation" in columns:
        pair = _cycle_of_direct_links(con)
    if pair is not None:
        raise CdmRefused(
            f"{cdm.files['concept_ancestor']}: concept_ancestor has a cycle (concepts {pair[0]} and {pair[1]} are "
            "each other's ancestors); refused rather than broken, since which link is wrong is not knowable here"
        )
    con.execute(
        "CREATE VIEW concept_ancestor AS SELECT ancestor_concept_id, descendant_concept_id FROM typed_concept_ancestor"
        " WHERE ancestor_concept_id IS NOT NULL AND descendant_concept_id IS NOT NULL"
    )


def _detect_version(cdm: Cdm, typed: dict[str, list[str]]) -> str:
    if "cdm_source" in typed and "cdm_version" in typed["cdm_source"]:
        row = cdm.con.execute("SELECT max(cdm_version) FROM typed_cdm_source").fetchone()
        found = re.search(r"5\.(\d)", row[0] or "")
        if found:
            return f"5.{found.group(1)}"
    if any(n for key, n in cdm.counts.items() if key.endswith(".v53_renamed")):
        return "5.3"
    return "5.4" if "admitted_from_concept_id" in typed.get("visit_occurrence", []) else "unknown"


def open_cdm(
    batch: Path,
    *,
    today: date | None = None,
    memory_limit: str | None = None,
    temp_dir: Path | None = None,
    snapshot: Path | None = None,
) -> Cdm:
    """Open the CDM batch at ``batch`` (a folder, or one DuckDB file). ``today`` dates "the future" (default:
    the system date). The batch is only read: the typed events are written once into a working DuckDB database
    in a private folder (under ``temp_dir``, default the system's temporary folder) that :meth:`Cdm.close`
    removes; ``memory_limit`` bounds DuckDB's memory, past which it spills there. A PostgreSQL batch
    (:mod:`.pgsource`) is read from its DuckDB snapshot at ``snapshot``, taken first when that file is absent
    (without ``snapshot``: taken into the private folder, so each opening reads the live schema again).
    Raises :class:`CdmRefused`."""
    batch = Path(batch)
    kind, found = _discover(batch)
    if temp_dir is not None:
        Path(temp_dir).mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="omop-cdm-", dir=temp_dir))
    if kind == "postgres":
        kind, found = "duckdb", {"": [_pg_snapshot(found[""][0], snapshot or scratch / "pgsource.duckdb", scratch)]}
    # A file, not an in-memory database: in memory the typed events stay resident up to ``memory_limit`` (the
    # opening was a third faster at 10M events, but the process held 300 MB more).
    con = duckdb.connect(
        str(scratch / "work.duckdb"),
        config={"temp_directory": str(scratch / "spill"), "autoinstall_known_extensions": False},
    )
    if memory_limit:
        con.execute(f"SET memory_limit = {_literal(memory_limit)}")
    con.execute("SET TimeZone = 'UTC'")  # a timestamp with a zone gives the same date on any machine
    try:
        files = _attach_sources(con, kind, found)
        cdm = Cdm(con, batch, "unknown", today or date.today(), files, frozenset(), scratch=scratch)
        for table in ("person", "observation_period"):
            if table not in files:
                raise CdmRefused(f"{batch.name}: no {table} table (or its file is empty)")
        used = sorted(t for t in files if t in USED_TABLES)
        csv = {t for t, paths in found.items() if kind == "files" and _table_file(paths[0])[1]}
        typed = {t: _type_table(cdm, t, csv=t in csv) for t in used}
        cdm.version = _detect_version(cdm, typed)
        _build_person(cdm, typed["person"], typed.get("death", []))
        # "The first row of a repeated person_id" needed the file's order; nothing after does, and keeping
        # insertion order holds whole tables in memory when writing them.
        con.execute("SET preserve_insertion_order = false")
        _build_observation_period(cdm, typed["observation_period"])
        if "concept_ancestor" in typed:
            _check_ancestor(cdm, typed["concept_ancestor"])
        _build_person_time(cdm)
        domains = []
        for name, dom in DOMAINS.items():
            if dom.table in typed:
                _build_events(cdm, name, dom, typed[dom.table])
                domains.append(name)
        cdm.domains = frozenset(domains)
        return cdm
    except BaseException:
        con.close()
        shutil.rmtree(scratch, ignore_errors=True)
        raise
