"""The data root behind one small interface (no Dagster here): paths inside it are relative POSIX strings,
resolved against the root only at use, so nothing written names the root and the root can move (or, later,
be an object store behind the same fsspec filesystem: issue 15).

Writes are whole-file and atomic: on the local filesystem a temporary file beside the target, then a rename
(meddiag_pipelines/atomic.py); an object store's put is atomic by itself."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any

import polars as pl
from fsspec.implementations.local import LocalFileSystem

from meddiag_pipelines.atomic import atomic_write, atomic_write_bytes
from meddiag_pipelines.layout import PathOutsideDataRoot


def run_name(created_at: float, run_id: str) -> str:
    """A run's sortable name: its creation time (UTC, to the millisecond: two runs launched in one second must
    still sort in order), then its id; names sort by run creation."""
    millis = int(created_at * 1000) % 1000
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(created_at))}.{millis:03d}Z-{run_id[:8]}"


class DataRoot:
    """The data root: every operation takes a path relative to it."""

    def __init__(self, root: Path | str):
        self.root = Path(root).resolve()
        self.fs = LocalFileSystem()

    def path(self, rel: str) -> Path:
        """Where ``rel`` is now; refuses an absolute path or one that climbs out of the root."""
        pure = PurePosixPath(rel)
        if pure.is_absolute() or ".." in pure.parts:
            raise PathOutsideDataRoot(f"{rel}: not a path inside the data folder")
        return self.root / pure

    def relative(self, path: Path | str) -> str:
        """``path`` (under the root) as the relative string stored in artefacts."""
        resolved = Path(path).resolve()
        if not resolved.is_relative_to(self.root):
            raise PathOutsideDataRoot(f"{path}: outside the data folder {self.root}")
        return resolved.relative_to(self.root).as_posix()

    def exists(self, rel: str) -> bool:
        return self.fs.exists(str(self.path(rel)))

    def list(self, rel: str) -> list[str]:
        """Names in folder ``rel``, sorted, without hidden entries (leftovers of interrupted writes)."""
        folder = str(self.path(rel))
        if not self.fs.isdir(folder):
            return []
        return sorted(n for n in (PurePosixPath(p).name for p in self.fs.ls(folder, detail=False)) if not n.startswith("."))

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(str(self.path(rel)))

    def write_bytes(self, rel: str, data: bytes) -> str:
        atomic_write_bytes(self.path(rel), data)
        return rel

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def write_json(self, rel: str, obj: Any) -> str:
        """Strict JSON (no NaN, no objects JSON cannot hold): a value that does not survive the round trip fails here."""
        return self.write_bytes(rel, (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode())

    def read_parquet(self, rel: str) -> pl.DataFrame:
        with self.fs.open(str(self.path(rel)), "rb") as fh:
            return pl.read_parquet(fh)

    def parquet_width(self, rel: str) -> int:
        with self.fs.open(str(self.path(rel)), "rb") as fh:
            return len(pl.read_parquet_schema(fh))

    def write_parquet(self, rel: str, frame: pl.DataFrame) -> str:
        """LZ4: written and read several times faster than DuckDB's or zstd compression (bench/README.md)."""
        atomic_write(self.path(rel), lambda tmp: frame.write_parquet(tmp, compression="lz4"))
        return rel

    def write_once(self, rel: str, data: bytes) -> bool:
        """Create ``rel`` holding ``data`` unless it exists; ``False`` (nothing written) if it does. The one
        compare-and-set of the project, across processes and hosts: add-only records (the ingestion ledger, a
        task's label domain) take their next entry with it. Locally a hidden temporary file beside the target,
        then a hard link, which fails if the target exists."""
        target = self.path(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.link(tmp, target)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True


def open_plan(plan: dict, root: DataRoot) -> dict:
    """The plan with its one folder, the image cache, resolved against the data root: for this step only."""
    return {**plan, "cache_dir": str(root.path(plan["cache_dir"]))} if "cache_dir" in plan else plan
