"""The warehouse: one DuckDB file holding each task's raw records and the ingestion ledger, and views over the
Parquet tables that asset steps write (:meth:`Warehouse.register_view`).

Raw records are appended batch by batch, so adding a batch costs the batch, not the history. The ledger
records every batch that landed, with its content hash, row count and outcome, so nothing is read twice
and nothing disappears unaccounted for.
"""

from __future__ import annotations

import fcntl
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl

from meddiag_pipelines.ingestion.landing import BATCH_COLUMN

_LEDGER_DDL = (
    "CREATE TABLE IF NOT EXISTS ingest_ledger (task VARCHAR, batch_id VARCHAR, content_hash VARCHAR, "
    "status VARCHAR, n_rows BIGINT, files VARCHAR, columns VARCHAR, reason VARCHAR, updated_at DOUBLE, "
    "PRIMARY KEY (task, batch_id))"
)


class SchemaConflict(ValueError):
    """A column whose values cannot take the type earlier batches gave it; the message names no value."""


def _conform(frame: pl.DataFrame, existing: pl.Schema) -> pl.DataFrame:
    """Cast shared columns to the table's types, or name the first column that cannot be cast."""
    casts = []
    for name, dtype in frame.schema.items():
        want = existing.get(name)
        if want is None or want == dtype or dtype == pl.Null:
            continue
        try:
            frame[name].cast(want, strict=True)
        except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as exc:
            raise SchemaConflict(f"column {name!r} holds {dtype} values where earlier batches held {want}") from exc
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


@dataclass(frozen=True)
class Warehouse:
    database: Path

    @contextmanager
    def connect(self):
        self.database.parent.mkdir(parents=True, exist_ok=True)
        con = _connect_with_retry(self.database)
        try:
            con.execute(_LEDGER_DDL)
            yield con
        finally:
            con.close()

    @contextmanager
    def task_lock(self, task: str):
        """Serialise ingestion of one task across processes (a sensor run and the schedule at once): an
        exclusive ``flock`` on ``<warehouse>/.<task>.ingest.lock``, released by the kernel if the holder dies."""
        self.database.parent.mkdir(parents=True, exist_ok=True)
        with open(self.database.parent / f".{task}.ingest.lock", "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    # -- ledger -------------------------------------------------------------------------------------
    def ledger(self, task: str) -> pl.DataFrame:
        with self.connect() as con:
            return con.execute("SELECT * FROM ingest_ledger WHERE task = ? ORDER BY batch_id", [task]).pl()

    def set_batch_status(self, task: str, batch_id: str, content_hash: str, status: str, n_rows: int,
                         files: list[str], columns: list[str], reason: dict | None) -> None:  # fmt: skip
        row = [task, batch_id, content_hash, status, n_rows, json.dumps(files), json.dumps(columns),
               json.dumps(reason) if reason else None, time.time()]  # fmt: skip
        with self.connect() as con:
            con.execute("INSERT OR REPLACE INTO ingest_ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)

    def add_batch(self, task: str, batch_id: str, content_hash: str, status: str, n_rows: int,
                  files: list[str], columns: list[str], reason: dict | None) -> bool:  # fmt: skip
        """Record a batch the ledger has not seen; ``False`` (and nothing written) if it is already there."""
        row = [task, batch_id, content_hash, status, n_rows, json.dumps(files), json.dumps(columns),
               json.dumps(reason) if reason else None, time.time()]  # fmt: skip
        with self.connect() as con:
            con.execute("BEGIN")
            if _in_ledger(con, task, batch_id):
                con.execute("ROLLBACK")
                return False
            con.execute("INSERT INTO ingest_ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
            con.execute("COMMIT")
            return True

    # -- record tables --------------------------------------------------------------------------------
    def append(self, task: str, table: str, frame: pl.DataFrame, ledger_row: dict | None = None) -> bool:
        """Append rows by column name, adding columns the table has not seen; one transaction.

        With ``ledger_row`` (the keyword arguments of :meth:`add_batch`) the batch's ledger entry is written in
        the same transaction, and nothing at all is written if the ledger already holds that batch (another
        run took it): the rows of a batch are in the table exactly when the ledger lists the batch. Returns
        whether the rows were appended."""
        target = f"{_quote(task)}.{_quote(table)}"
        with self.connect() as con:
            con.execute("BEGIN")
            if ledger_row is not None and _in_ledger(con, task, ledger_row["batch_id"]):
                con.execute("ROLLBACK")
                return False
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(task)}")
            if self.has_table(con, task, table):
                frame = _conform(frame, con.execute(f"SELECT * FROM {target} LIMIT 0").pl().schema)
            con.register("incoming", frame)
            con.execute(f"CREATE TABLE IF NOT EXISTS {target} AS SELECT * FROM incoming LIMIT 0")
            existing = {r[0] for r in con.execute(f"DESCRIBE {target}").fetchall()}
            for name, dtype, *_ in con.execute("DESCRIBE incoming").fetchall():
                if name not in existing:
                    con.execute(f"ALTER TABLE {target} ADD COLUMN {_quote(name)} {dtype}")
            con.execute(f"INSERT INTO {target} BY NAME SELECT * FROM incoming")
            if ledger_row is not None:
                r = ledger_row
                con.execute("INSERT INTO ingest_ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            [task, r["batch_id"], r["content_hash"], r["status"], r["n_rows"], json.dumps(r["files"]),
                             json.dumps(r["columns"]), json.dumps(r["reason"]) if r.get("reason") else None,
                             time.time()])  # fmt: skip
            con.execute("COMMIT")
            return True

    def read(self, task: str, table: str, where_batches: list[str] | None = None) -> pl.DataFrame:
        target = f"{_quote(task)}.{_quote(table)}"
        with self.connect() as con:
            if not self.has_table(con, task, table):
                return pl.DataFrame()
            if where_batches is None:
                return con.execute(f"SELECT * FROM {target}").pl()
            return con.execute(f"SELECT * FROM {target} WHERE {BATCH_COLUMN} IN (SELECT unnest(?))", [where_batches]).pl()

    def register_view(self, task: str, table: str, parquet: Path | None) -> None:
        """Make ``<task>.<table>`` a view over ``parquet`` (``None``: drop it), so SQL users query asset tables by
        the same names whatever file holds them."""
        target = f"{_quote(task)}.{_quote(table)}"
        with self.connect() as con:
            kind = con.execute("SELECT table_type FROM information_schema.tables WHERE table_schema = ? AND "
                               "table_name = ?", [task, table]).fetchone()  # fmt: skip
            if kind and kind[0] == "BASE TABLE":  # left by the DuckDB IO manager of earlier releases
                con.execute(f"DROP TABLE {target}")
            if parquet is None:
                con.execute(f"DROP VIEW IF EXISTS {target}")
                return
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(task)}")
            source = str(parquet).replace("'", "''")
            con.execute(f"CREATE OR REPLACE VIEW {target} AS SELECT * FROM read_parquet('{source}')")

    @staticmethod
    def has_table(con: duckdb.DuckDBPyConnection, task: str, table: str) -> bool:
        found = con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?", [task, table]
        ).fetchone()
        return bool(found and found[0])
