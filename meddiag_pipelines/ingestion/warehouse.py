"""The warehouse: each batch's raw records as its own Parquet file, written once
(``warehouse/<table>/<task>/<file>.parquet``), and one DuckDB file holding the ingestion ledger, a small
per-task state table (the label domain) and views over the Parquet tables that asset steps write
(:meth:`Warehouse.register_view`).

Adding a batch costs the batch, not the history, and no batch fixes the column types of another: a batch that
is quarantined later leaves no trace in what the good ones are read as. The ledger records every batch that
landed, with its content hash, per-file digests, row count, outcome and the (relative) path of its records, so
nothing is read twice and nothing disappears unaccounted for.
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl

from meddiag_pipelines.atomic import atomic_write
from meddiag_pipelines.storage import file_lock

_LEDGER_DDL = (
    "CREATE TABLE IF NOT EXISTS ingest_ledger (task VARCHAR, batch_id VARCHAR, content_hash VARCHAR, "
    "status VARCHAR, n_rows BIGINT, files VARCHAR, columns VARCHAR, reason VARCHAR, updated_at DOUBLE, "
    "PRIMARY KEY (task, batch_id))"
)
# Added after the first release; an older warehouse file gets them on first connect.
_LEDGER_ADDED = {"file_hashes": "VARCHAR", "records_file": "VARCHAR"}
_LEDGER_COLUMNS = ("task", "batch_id", "content_hash", "status", "n_rows", "files", "columns", "reason", "updated_at",
                   *_LEDGER_ADDED)  # fmt: skip
_STATE_DDL = "CREATE TABLE IF NOT EXISTS task_state (task VARCHAR, key VARCHAR, value VARCHAR, PRIMARY KEY (task, key))"


class SchemaConflict(ValueError):
    """A column whose values cannot take the type earlier batches gave it; the message names no value."""

    def __init__(self, column: str, problem: str):
        super().__init__(problem)
        self.column = column


def _kind(dtype: pl.DataType) -> str:
    """A column type in plain words."""
    if dtype.is_integer():
        return "whole numbers"
    if dtype.is_float() or dtype.is_decimal():
        return "decimal numbers"
    if dtype == pl.Boolean:
        return "true/false values"
    if dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum):
        return "text"
    if dtype.is_temporal():
        return "dates or times"
    return f"values of type {dtype}"


def conform(frame: pl.DataFrame, existing: dict) -> pl.DataFrame:
    """Cast shared columns to the types in ``existing`` (column -> type), or name the first column that
    cannot take its type, in plain words."""
    casts = []
    for name, dtype in frame.schema.items():
        want = existing.get(name)
        if want is None or want == dtype or dtype == pl.Null or want == pl.Null:
            continue
        try:
            frame[name].cast(want, strict=True)
        except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as exc:
            raise SchemaConflict(name, f"column {name!r} holds {_kind(dtype)} ({dtype}) where the task's validated "
                                 f"batches hold {_kind(want)} ({want})") from exc  # fmt: skip
        casts.append(pl.col(name).cast(want))
    return frame.with_columns(casts) if casts else frame


def _connect_with_retry(database: Path, attempts: int = 12) -> duckdb.DuckDBPyConnection:
    """DuckDB lets one process write a file at a time; another run's step may hold it for a moment."""
    delay = 0.05
    for attempt in range(attempts):
        try:
            return duckdb.connect(str(database))
        except duckdb.IOException:
            if attempt == attempts - 1:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")


def _in_ledger(con: duckdb.DuckDBPyConnection, task: str, batch_id: str) -> bool:
    found = con.execute("SELECT count(*) FROM ingest_ledger WHERE task = ? AND batch_id = ?", [task, batch_id]).fetchone()
    return bool(found and found[0])


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _ledger_values(task: str, row: dict) -> list:
    return [task, row["batch_id"], row["content_hash"], row["status"], row["n_rows"], json.dumps(row["files"]),
            json.dumps(row["columns"]), json.dumps(row["reason"]) if row.get("reason") else None, time.time(),
            json.dumps(row["file_hashes"]) if row.get("file_hashes") else None, row.get("records_file")]  # fmt: skip


_INSERT_LEDGER = f"INSERT INTO ingest_ledger ({', '.join(_LEDGER_COLUMNS)}) VALUES ({', '.join('?' * len(_LEDGER_COLUMNS))})"


def _records_name(batch_id: str, content_hash: str) -> str:
    """A file name for a batch's records that fits any file system whatever the batch is called."""
    return hashlib.sha256(f"{batch_id}\0{content_hash}".encode("utf-8", "surrogateescape")).hexdigest()[:32] + ".parquet"


def _schema_ready(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the ledger (with every column added since its first version) and the state table are there."""
    try:
        con.execute(f"SELECT {', '.join(_LEDGER_ADDED)} FROM ingest_ledger LIMIT 0")
        con.execute("SELECT key FROM task_state LIMIT 0")
    except duckdb.Error:  # a missing table or column
        return False
    return True


def _ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(_LEDGER_DDL)
    con.execute(_STATE_DDL)
    present = {r[0] for r in con.execute("DESCRIBE ingest_ledger").fetchall()}
    for name, dtype in _LEDGER_ADDED.items():
        if name not in present:
            con.execute(f"ALTER TABLE ingest_ledger ADD COLUMN {name} {dtype}")


@dataclass(frozen=True)
class Warehouse:
    database: Path

    @property
    def root(self) -> Path:
        """The warehouse folder; record files are named relative to it in the ledger."""
        return self.database.parent

    @contextmanager
    def connect(self):
        self.database.parent.mkdir(parents=True, exist_ok=True)
        con = _connect_with_retry(self.database)
        try:
            self.resolve_views_here(con)
            if not _schema_ready(con):  # the DDL is a write, as dear as the connection: only when needed
                _ensure_schema(con)
            yield con
        finally:
            con.close()

    def task_lock(self, task: str):
        """Serialise ingestion of one task across processes (a sensor run and the schedule at once, or the
        recovery CLI, which runs outside Dagster and its pools): see :func:`meddiag_pipelines.storage.file_lock`."""
        return file_lock(self.database.parent / f".{task}.ingest.lock")

    # -- ledger -------------------------------------------------------------------------------------
    def ledger(self, task: str) -> pl.DataFrame:
        with self.connect() as con:
            return con.execute(f"SELECT {', '.join(_LEDGER_COLUMNS)} FROM ingest_ledger WHERE task = ? ORDER BY batch_id",
                               [task]).pl()  # fmt: skip

    def add_batch(self, task: str, row: dict) -> bool:
        """Record a batch the ledger has not seen (``row``: batch_id, content_hash, status, n_rows, files,
        columns, reason, optional file_hashes and records_file); ``False`` (nothing written) if it is there."""
        with self.connect() as con:
            con.execute("BEGIN")
            if _in_ledger(con, task, row["batch_id"]):
                con.execute("ROLLBACK")
                return False
            con.execute(_INSERT_LEDGER, _ledger_values(task, row))
            con.execute("COMMIT")
            return True

    def set_status(self, task: str, batch_id: str, status: str, reason: dict | None) -> None:
        """Move a recorded batch to ``status``; its files, digests and records stay as recorded."""
        with self.connect() as con:
            con.execute("UPDATE ingest_ledger SET status = ?, reason = ?, updated_at = ? WHERE task = ? AND batch_id = ?",
                        [status, json.dumps(reason) if reason else None, time.time(), task, batch_id])  # fmt: skip

    def forget_batch(self, task: str, batch_id: str) -> None:
        """Drop a batch's ledger entry and its records file, so that it is read again when it lands."""
        with self.connect() as con:
            found = con.execute("SELECT records_file FROM ingest_ledger WHERE task = ? AND batch_id = ?",
                                [task, batch_id]).fetchone()  # fmt: skip
            con.execute("DELETE FROM ingest_ledger WHERE task = ? AND batch_id = ?", [task, batch_id])
        if found and found[0]:
            (self.root / found[0]).unlink(missing_ok=True)

    def forget_task(self, task: str) -> None:
        """Forget everything the warehouse holds for ``task``: ledger, records files, state, views."""
        with self.connect() as con:
            files = [r[0] for r in con.execute("SELECT records_file FROM ingest_ledger WHERE task = ? AND records_file "
                                               "IS NOT NULL", [task]).fetchall()]  # fmt: skip
            con.execute("DELETE FROM ingest_ledger WHERE task = ?", [task])
            con.execute("DELETE FROM task_state WHERE task = ?", [task])
            con.execute(f"DROP SCHEMA IF EXISTS {_quote(task)} CASCADE")
        for rel in files:
            (self.root / rel).unlink(missing_ok=True)

    # -- per-task state -----------------------------------------------------------------------------
    def state(self, task: str, key: str) -> str | None:
        with self.connect() as con:
            found = con.execute("SELECT value FROM task_state WHERE task = ? AND key = ?", [task, key]).fetchone()
        return found[0] if found else None

    def set_state_once(self, task: str, key: str, value: str) -> str:
        """Record ``value`` unless the task already holds one; return the value in force."""
        with self.connect() as con:
            con.execute("INSERT OR IGNORE INTO task_state VALUES (?, ?, ?)", [task, key, value])
            return con.execute("SELECT value FROM task_state WHERE task = ? AND key = ?", [task, key]).fetchone()[0]

    # -- record files -------------------------------------------------------------------------------
    def append(self, task: str, table: str, frame: pl.DataFrame, ledger_row: dict) -> bool:
        """Write a batch's rows once, as their own Parquet file, then its ledger entry (``ledger_row`` as for
        :meth:`add_batch`) pointing to it by a path relative to the warehouse. Nothing is written if the ledger
        already holds the batch (another run took it); a crash between the two leaves only an unlisted file,
        rewritten identically by the next run. Returns whether the batch was recorded."""
        with self.connect() as con:
            if _in_ledger(con, task, ledger_row["batch_id"]):
                return False
        rel = Path(table) / task / _records_name(ledger_row["batch_id"], ledger_row["content_hash"])
        atomic_write(self.root / rel, frame.write_parquet)
        return self.add_batch(task, {**ledger_row, "records_file": str(rel)})

    def read(self, task: str, table: str, where_batches: list[str] | None = None) -> pl.DataFrame:
        """The records of the listed batches (all recorded batches if ``None``), columns matched by name."""
        ledger = self.ledger(task).filter(pl.col("records_file").is_not_null()
                                          & pl.col("records_file").str.starts_with(f"{table}/"))  # fmt: skip
        if where_batches is not None:
            ledger = ledger.filter(pl.col("batch_id").is_in(list(where_batches)))
        frames = [pl.read_parquet(self.root / rel) for rel in ledger["records_file"]]
        return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()

    def resolve_views_here(self, con: duckdb.DuckDBPyConnection) -> None:
        """The views name their Parquet files relative to the warehouse folder (the data root can move); DuckDB
        resolves such paths against ``file_search_path``, a setting of each connection: a SQL user sets it too
        (``SET file_search_path = '<data>/warehouse'``) or starts ``duckdb`` in that folder."""
        con.execute("SET file_search_path = '" + str(self.root).replace("'", "''") + "'")

    def register_view(self, task: str, table: str, parquet: list[str]) -> None:
        """Make ``<task>.<table>`` a view over the files ``parquet`` (relative to the warehouse folder; none: drop
        it), so SQL users query asset tables by the same names whatever files hold them."""
        target = f"{_quote(task)}.{_quote(table)}"
        with self.connect() as con:
            kind = con.execute("SELECT table_type FROM information_schema.tables WHERE table_schema = ? AND "
                               "table_name = ?", [task, table]).fetchone()  # fmt: skip
            if kind and kind[0] == "BASE TABLE":  # left by the DuckDB IO manager of earlier releases
                con.execute(f"DROP TABLE {target}")
            if not parquet:
                con.execute(f"DROP VIEW IF EXISTS {target}")
                return
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(task)}")
            sources = ", ".join("'" + str(p).replace("'", "''") + "'" for p in parquet)
            con.execute(f"CREATE OR REPLACE VIEW {target} AS SELECT * FROM read_parquet([{sources}], union_by_name = true)")
