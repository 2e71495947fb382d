"""Incremental ingestion: the cost of ``Warehouse.append`` of a batch of B rows when N rows are already there.

The N rows are loaded with DuckDB directly (``CREATE TABLE ... AS SELECT * FROM read_parquet(...)``, from the
SYNTHETIC lab rows of bench/ehr.py), then a fresh process times ``repeats`` appends of B new rows through
``Warehouse.append`` (the batch's own Parquet file written atomically, then its ledger row: the whole call).
Flat in N is the goal: the append must cost the batch, not the history.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from bench import bench_dir, emit, measure, parse_rows
from meddiag_pipelines.specs import BATCH_COLUMN

NAME = "ingest"
TASK, TABLE = "ehr_labs", "raw_records"
SMOKE_ROWS = 50_000


def build_warehouse(n_rows: int, seed: int = 0) -> Path:
    """A warehouse file holding exactly ``n_rows`` lab rows (reused when already built)."""
    import duckdb

    from bench.ehr import generate
    from meddiag_pipelines.ingestion.warehouse import Warehouse
    from meddiag_pipelines.storage import DataRoot

    warehouse = Warehouse(DataRoot(bench_dir() / f"ingest_{n_rows}"))
    db = warehouse.database
    if db.exists():
        with duckdb.connect(str(db), read_only=True) as con:
            try:
                if (
                    con.execute(f"SELECT count(*) FROM {TASK}.{TABLE} WHERE _batch_id = 'history'").fetchone()[0]
                    == n_rows
                ):
                    return db
            except duckdb.Error:
                pass
    db.unlink(missing_ok=True)
    ds = generate(bench_dir() / f"ehr_{n_rows}_seed{seed}", n_rows, seed)
    with warehouse.connect() as con:
        con.execute(f"CREATE SCHEMA {TASK}")
        con.execute(
            f"CREATE TABLE {TASK}.{TABLE} AS SELECT *, 'history' AS {BATCH_COLUMN} FROM read_parquet('{ds.glob('labs')}')"
        )
    return db


def time_appends(db: str, batch_rows: int, repeats: int) -> dict:
    """Child process: append ``repeats`` fresh batches of ``batch_rows`` rows, timing each call."""
    import polars as pl

    from bench.ehr import _chunk
    from meddiag_pipelines.ingestion.warehouse import Warehouse
    from meddiag_pipelines.storage import DataRoot

    warehouse = Warehouse(DataRoot(Path(db).parent.parent))
    _, _, labs, _ = _chunk(
        seed=99, index=0, n_patients=max(1, batch_rows // 20), first_patient=10**9, first_encounter=10**10
    )
    labs = labs.head(batch_rows)
    times = []
    for i in range(repeats):
        batch_id = f"bench_{time.time_ns()}_{i}"
        frame = labs.with_columns(pl.lit(batch_id).alias(BATCH_COLUMN))
        row = {
            "batch_id": batch_id,
            "content_hash": batch_id,
            "status": "read",
            "n_rows": frame.height,
            "files": [],
            "columns": frame.columns,
            "reason": None,
        }
        start = time.perf_counter()
        warehouse.append(TASK, TABLE, frame, row)
        times.append(time.perf_counter() - start)
    return {"times": times, "db_mb": Path(db).stat().st_size / 2**20}


def run(size: str = "smoke", batch_rows: int = 10_000, repeats: int = 5) -> list[dict]:
    n_rows = parse_rows(size, SMOKE_ROWS)
    start = time.perf_counter()
    db = build_warehouse(n_rows)
    build_s = time.perf_counter() - start
    res = measure("bench.ingest:time_appends", {"db": str(db), "batch_rows": batch_rows, "repeats": repeats})
    if not res["ok"]:
        return [emit({"name": NAME, "impl": "warehouse.append", "size": size, "ok": False, "error": res["error"]})]
    times = res["times"]
    median = statistics.median(times)
    return [
        emit(
            {
                "name": NAME,
                "impl": "warehouse.append",
                "size": size,
                "existing_rows": n_rows,
                "batch_rows": batch_rows,
                "seconds": median,
                "first_s": times[0],
                "all_s": [round(t, 4) for t in times],
                "peak_rss_mb": res["peak_rss_mb"],
                "rows_per_s": batch_rows / median,
                "db_mb": round(res["db_mb"], 1),
                "build_s": round(build_s, 1),
                "ok": True,
            }
        )
    ]


def main(argv: list[str]) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m bench ingest")
    parser.add_argument("--size", default="smoke", help="rows already in the warehouse (N)")
    parser.add_argument("--batch", type=int, default=10_000, help="rows appended (B)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    return run(args.size, args.batch, args.repeats)
