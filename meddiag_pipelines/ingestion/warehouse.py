"""The warehouse: each batch's raw records as its own Parquet file, written once
(``warehouse/<table>/<task>/<file>.parquet``); the ingestion ledger and a small per-task state (the label
domain) as add-only objects under the data root; and a DuckDB file that is only a catalog of views for SQL users
(over the Parquet tables that asset steps write, :meth:`Warehouse.register_view`, and over the ledger and state).

Adding a batch costs the batch, not the history, and no batch fixes the column types of another: a batch that
is quarantined later leaves no trace in what the good ones are read as. The ledger records every batch that
landed, with its content hash, per-file digests, row count, outcome and the (relative) path of its records, so
nothing is read twice and nothing disappears unaccounted for.

Across hosts (issue 15) nothing here takes a lock: a batch's ledger is ``warehouse/ledger/<task>/<batch key>/``
holding numbered entries, each created once (:meth:`DataRoot.write_once`) and never rewritten; the newest is the
batch's state, a change adds the next number, and two writers of one number cannot both win, so a batch is
recorded once even when two runs race, and a status change is never lost (the loser retries on top). The label
domain, ``warehouse/state/<task>/<key>.json``, is created once the same way. Runs of one task are serialised by
its Dagster pool (instance-level, so across hosts with the PostgreSQL instance); the recovery CLI refuses while
the task has a run in flight (:mod:`meddiag_pipelines.recover`). The DuckDB file holds nothing that
cannot be rebuilt: removing it loses no state, and the next :meth:`Warehouse.connect` recreates the ledger and
state views (the asset views come back with the next write of each table).
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

from meddiag_pipelines.ingestion.landing import BatchKey
from meddiag_pipelines.storage import DataRoot

LEDGER_FOLDER, STATE_FOLDER = "ledger", "state"  # inside the warehouse folder
_LEDGER_COLUMNS = (
    "task",
    "batch_id",
    "content_hash",
    "status",
    "n_rows",
    "files",
    "columns",
    "reason",
    "updated_at",
    "file_hashes",
    "records_file",
)
_JSON_COLUMNS = ("files", "columns", "reason", "file_hashes")  # JSON in an entry, JSON text in the frame and view
_LEDGER_SCHEMA = {
    "task": pl.String,
    "batch_id": pl.String,
    "content_hash": pl.String,
    "status": pl.String,
    "n_rows": pl.Int64,
    "files": pl.String,
    "columns": pl.String,
    "reason": pl.String,
    "updated_at": pl.Float64,
    "file_hashes": pl.String,
    "records_file": pl.String,
}
FORGOTTEN = "forgotten"  # the status of an entry that forgets its batch (requeue): the batch is read again
_CAS_ATTEMPTS = 50  # concurrent writers of one batch's next entry: each retry means another one won a turn


class SchemaConflict(ValueError):
    """A column whose values cannot take the type earlier batches gave it; the message names no value."""

    def __init__(self, column: str, problem: str):
        super().__init__(problem)
        self.column = column


def dtype_words(dtype: pl.DataType) -> str:
    """A column type in plain words."""
    if dtype.is_integer():
        return "whole numbers"
    if dtype.is_float() or dtype.is_decimal():
        return "decimal numbers"
    if dtype == pl.Boolean:
        return "true/false values"
    if dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum):
        return "text"
    if isinstance(dtype, pl.Duration):
        return "durations"
    if dtype.is_temporal():
        return "dates or times"
    if dtype == pl.Binary:
        return "binary values"
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
            raise SchemaConflict(
                name,
                f"column {name!r} holds {dtype_words(dtype)} ({dtype}) where the task's validated "
                f"batches hold {dtype_words(want)} ({want})",
            ) from exc
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


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _key(text: str) -> str:
    """A folder or file name for ``text`` (a batch id, whatever it is called) that fits any file system or bucket."""
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def _records_name(batch_id: BatchKey, content_hash: str) -> str:
    """A file name for a batch's records that fits any file system whatever the batch is called."""
    return _key(f"{batch_id}\0{content_hash}") + ".parquet"


def _entry_name(seq: int) -> str:
    return f"{seq:06d}.json"


def _encode(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, allow_nan=False).encode()


def _ledger_entry(task: str, row: dict) -> dict:
    """A ledger entry as stored: the JSON fields as JSON."""
    return {
        "task": task,
        "batch_id": row["batch_id"],
        "content_hash": row["content_hash"],
        "status": row["status"],
        "n_rows": row["n_rows"],
        "files": list(row["files"]),
        "columns": list(row["columns"]),
        "reason": row.get("reason") or None,
        "updated_at": time.time(),
        "file_hashes": row.get("file_hashes") or None,
        "records_file": row.get("records_file"),
    }


def _frame_row(entry: dict) -> dict:
    """An entry as a row of :meth:`Warehouse.ledger` (the JSON fields as JSON text, as the DuckDB ledger held them)."""
    return {**entry, **{c: json.dumps(entry[c]) if entry.get(c) is not None else None for c in _JSON_COLUMNS}}


# The SQL users' views of the add-only objects: a batch is its newest entry (unless that one forgets it).
_LEDGER_VIEW = f"""CREATE OR REPLACE VIEW ingest_ledger AS SELECT {", ".join(_LEDGER_COLUMNS)} FROM read_json(
    '{LEDGER_FOLDER}/*/*/*.json', filename = true, columns = {{task: 'VARCHAR', batch_id: 'VARCHAR',
    content_hash: 'VARCHAR', status: 'VARCHAR', n_rows: 'BIGINT', files: 'VARCHAR', columns: 'VARCHAR',
    reason: 'VARCHAR', updated_at: 'DOUBLE', file_hashes: 'VARCHAR', records_file: 'VARCHAR'}})
    QUALIFY row_number() OVER (PARTITION BY task, batch_id ORDER BY filename DESC) = 1 AND status <> '{FORGOTTEN}'"""
_STATE_VIEW = f"""CREATE OR REPLACE VIEW task_state AS SELECT task, key, value FROM read_json('{STATE_FOLDER}/*/*.json',
    columns = {{task: 'VARCHAR', key: 'VARCHAR', value: 'VARCHAR'}})"""


@dataclass(frozen=True)
class Warehouse:
    """The warehouse of data root ``data``, through which the ledger and state objects are read and written; its
    DuckDB catalog file is :meth:`DataRoot.warehouse_db`."""

    data: DataRoot

    @property
    def database(self) -> Path:
        return self.data.warehouse_db()

    @property
    def root(self) -> Path:
        """The warehouse folder; record files are named relative to it in the ledger."""
        return self.data.warehouse_dir()

    def _rel(self, *parts: str) -> str:
        return "/".join((self.data.relative(self.root), *parts))

    @contextmanager
    def connect(self):
        """The DuckDB catalog: views only (over the Parquet tables and the ledger and state objects), never the
        source of truth, so any host may keep its own; DDL only when a view is missing (a write, as dear as the
        connection)."""
        self.database.parent.mkdir(parents=True, exist_ok=True)
        con = _connect_with_retry(self.database)
        try:
            self.resolve_views_here(con)
            self._catalog_views(con)
            yield con
        finally:
            con.close()

    def _catalog_views(self, con: duckdb.DuckDBPyConnection) -> None:
        views = {
            row[0]
            for row in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = "
                "'main' AND table_name IN ('ingest_ledger', 'task_state')"
            ).fetchall()
        }
        for name, ddl, folder in (
            ("ingest_ledger", _LEDGER_VIEW, LEDGER_FOLDER),
            ("task_state", _STATE_VIEW, STATE_FOLDER),
        ):
            # DuckDB refuses a glob matching nothing; over an object store it has no local files to view
            if name not in views and not self.data.remote and self.data.list(self._rel(folder)):
                con.execute(ddl)

    # -- ledger: warehouse/ledger/<task>/<batch key>/<seq>.json, add-only, the newest entry wins ----------------
    def _newest(self, folder: str) -> tuple[int, dict | None]:
        """A batch's newest entry and its number (0, ``None``: never recorded; ``None`` too when forgotten)."""
        names = [n for n in self.data.list(folder) if n.endswith(".json")]
        if not names:
            return 0, None
        entry = self.data.read_json(f"{folder}/{names[-1]}")
        return int(names[-1].removesuffix(".json")), None if entry["status"] == FORGOTTEN else entry

    def _recorded(self, task: str, batch_id: BatchKey) -> tuple[int, dict | None]:
        return self._newest(self._rel(LEDGER_FOLDER, task, _key(batch_id)))

    def _add_entry(self, task: str, batch_id: BatchKey, seq: int, entry: dict) -> bool:
        return self.data.write_once(self._rel(LEDGER_FOLDER, task, _key(batch_id), _entry_name(seq)), _encode(entry))

    def ledger(self, task: str) -> pl.DataFrame:
        """Every batch the ledger holds for ``task`` (its newest entry), by batch id."""
        folder = self._rel(LEDGER_FOLDER, task)
        entries = (self._newest(f"{folder}/{key}")[1] for key in self.data.list(folder))
        rows = [_frame_row(entry) for entry in entries if entry is not None]
        return pl.DataFrame(rows, schema=_LEDGER_SCHEMA).sort("batch_id")

    def add_batch(self, task: str, row: dict) -> bool:
        """Record a batch the ledger does not hold (``row``: batch_id, content_hash, status, n_rows, files,
        columns, reason, optional file_hashes and records_file); ``False`` (nothing written) if it holds it, or
        if another run recorded it at the same moment (its entry took the number first)."""
        seq, entry = self._recorded(task, row["batch_id"])
        return entry is None and self._add_entry(task, row["batch_id"], seq + 1, _ledger_entry(task, row))

    def _next_entry(self, task: str, batch_id: BatchKey, change: dict) -> None:
        """Add an entry: the newest one with ``change``; nothing when the batch is not recorded. Another writer
        taking the number first means a retry on top of its entry."""
        for _ in range(_CAS_ATTEMPTS):
            seq, entry = self._recorded(task, batch_id)
            if entry is None or self._add_entry(
                task, batch_id, seq + 1, {**entry, **change, "updated_at": time.time()}
            ):
                return
        raise RuntimeError(f"task {task}: the ledger entry of a batch kept changing under {_CAS_ATTEMPTS} attempts")

    def set_status(self, task: str, batch_id: BatchKey, status: str, reason: dict | None) -> None:
        """Move a recorded batch to ``status`` (a new entry); its files, digests and records stay as recorded."""
        self._next_entry(task, batch_id, {"status": status, "reason": reason or None})

    def forget_batch(self, task: str, batch_id: BatchKey) -> None:
        """Forget a batch (an entry saying so; the earlier ones stay as its history) and drop its records file,
        so that it is read again when it lands."""
        _, entry = self._recorded(task, batch_id)
        self._next_entry(task, batch_id, {"status": FORGOTTEN})
        if entry and entry.get("records_file"):
            self.data.remove(self._rel(entry["records_file"]))

    def forget_task(self, task: str) -> None:
        """Forget everything the warehouse holds for ``task``: ledger, records files, state, views."""
        for rel in self.ledger(task)["records_file"].drop_nulls():
            self.data.remove(self._rel(rel))
        for folder in (LEDGER_FOLDER, STATE_FOLDER):
            self.data.remove(self._rel(folder, task))
        with self.connect() as con:
            con.execute(f"DROP SCHEMA IF EXISTS {_quote(task)} CASCADE")

    # -- per-task state: warehouse/state/<task>/<key>.json, written once ---------------------------------------
    def state(self, task: str, key: str) -> str | None:
        rel = self._rel(STATE_FOLDER, task, f"{key}.json")
        return self.data.read_json(rel)["value"] if self.data.exists(rel) else None

    def set_state_once(self, task: str, key: str, value: str) -> str:
        """Record ``value`` unless the task already holds one (another run may have set it a moment before);
        return the value in force."""
        self.data.write_once(
            self._rel(STATE_FOLDER, task, f"{key}.json"), _encode({"task": task, "key": key, "value": value})
        )
        return self.state(task, key)

    # -- record files -------------------------------------------------------------------------------
    def append(self, task: str, table: str, frame: pl.DataFrame, ledger_row: dict) -> bool:
        """Write a batch's rows once, as their own Parquet file, then its ledger entry (``ledger_row`` as for
        :meth:`add_batch`) pointing to it by a path relative to the warehouse. Nothing is written if the ledger
        already holds the batch (another run took it); a crash between the two leaves only an unlisted file,
        rewritten identically by the next run. Returns whether the batch was recorded."""
        if self._recorded(task, ledger_row["batch_id"])[1] is not None:
            return False
        rel = f"{table}/{task}/{_records_name(ledger_row['batch_id'], ledger_row['content_hash'])}"
        self.data.write_parquet(self._rel(rel), frame)
        return self.add_batch(task, {**ledger_row, "records_file": rel})

    def read(self, task: str, table: str, where_batches: list[BatchKey] | None = None) -> pl.DataFrame:
        """The records of the listed batches (all recorded batches if ``None``), columns matched by name. Listed
        batches are looked up one by one: validating one batch of thousands reads one entry, not the ledger."""
        if where_batches is None:
            files = self.ledger(task)["records_file"].to_list()
        else:
            entries = (self._recorded(task, batch_id)[1] for batch_id in sorted(set(where_batches)))
            files = [entry["records_file"] for entry in entries if entry]
        frames = [self.data.read_parquet(self._rel(rel)) for rel in files if rel and rel.startswith(f"{table}/")]
        return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()

    def resolve_views_here(self, con: duckdb.DuckDBPyConnection) -> None:
        """The views name their files relative to the warehouse folder (the data root can move); DuckDB resolves
        such paths against ``file_search_path``, a setting of each connection: a SQL user sets it too
        (``SET file_search_path = '<data>/warehouse'``) or starts ``duckdb`` in that folder."""
        con.execute("SET file_search_path = " + _sql_text(str(self.root)))

    def register_view(self, task: str, table: str, parquet: list[str]) -> None:
        """Make ``<task>.<table>`` a view over the files ``parquet`` (relative to the warehouse folder; none: drop
        it), so SQL users query asset tables by the same names whatever files hold them."""
        target = f"{_quote(task)}.{_quote(table)}"
        with self.connect() as con:
            if not parquet:
                con.execute(f"DROP VIEW IF EXISTS {target}")
                return
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(task)}")
            sources = ", ".join(_sql_text(str(p)) for p in parquet)
            con.execute(
                f"CREATE OR REPLACE VIEW {target} AS SELECT * FROM read_parquet([{sources}], union_by_name = true)"
            )
