"""The data root behind one small interface (no Dagster here), the one object that says where data lives: the
root (``MEDDIAG_DATA_DIR``, default: the repo's ``data/``; or an object store URL), its local folder, its fsspec
filesystem and where each artefact lives in it (landing, warehouse, models, reports, ...). Paths inside it are
relative POSIX strings, resolved against the root only at use (every one through :meth:`DataRoot.confined`), so
nothing written names the root and the root can move.

The root is a local folder or an S3-compatible URL (``s3://bucket/prefix``, through s3fs, the ``scale`` extra;
its endpoint and credentials come from the standard ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ... variables,
which botocore reads). Writes are whole-file and atomic: on the local filesystem a temporary file beside the
target, then a rename (meddiag_pipelines/atomic.py); an object store's put is atomic by itself.

What must be a local file stays in a local folder, :attr:`DataRoot.local`: the root itself when it is local; for
an object store ``MEDDIAG_LOCAL_DIR`` (default ``~/.cache/meddiag``) ``/s3/<bucket>/<prefix>``. It holds the
DuckDB file (ledger and raw records), the image cache, model folders being built (``.staging``) and the copies
of published model folders that torch and XGBoost read (``.objects``)."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import time
from pathlib import Path, PurePosixPath
from typing import Any

import polars as pl
from fsspec.implementations.local import LocalFileSystem

from meddiag_pipelines.atomic import (
    atomic_create,
    atomic_write,
    atomic_write_bytes,
    publish_dir,
    publish_new_dir,
    staging_dir,
)

log = logging.getLogger(__name__)
REPO_DATA_DIR = Path(__file__).resolve().parent.parent / "data"


def default_data_dir() -> Path:
    return Path(os.environ.get("MEDDIAG_DATA_DIR") or REPO_DATA_DIR).resolve()


def default_data_root() -> str:
    """``MEDDIAG_DATA_DIR`` as the storage resource takes it: an object store URL as it is, else a local folder."""
    value = os.environ.get("MEDDIAG_DATA_DIR") or ""
    return value if is_object_store(value) else str(default_data_dir())


class PathOutsideDataRoot(ValueError):
    """A path that would escape the data folder (``..``, an absolute path or a symbolic link)."""


def run_name(created_at: float, run_id: str) -> str:
    """A run's sortable name: its creation time (UTC, to the millisecond: two runs launched in one second must
    still sort in order), then its id; names sort by run creation."""
    millis = int(created_at * 1000) % 1000
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(created_at))}.{millis:03d}Z-{run_id[:8]}"


OBJECT_STORE = "s3://"
MANIFEST = "manifest.json"


def is_object_store(root: Path | str) -> bool:
    return str(root).startswith(OBJECT_STORE)


def _local_dir_of(url: str) -> Path:
    base = Path(os.environ.get("MEDDIAG_LOCAL_DIR") or Path.home() / ".cache" / "meddiag")
    return (base / "s3" / url[len(OBJECT_STORE) :].strip("/")).resolve()


def _s3_filesystem():
    import s3fs  # the scale extra: only an object-store root needs it

    # No listings cache: another process (or host) may have written since.
    return s3fs.S3FileSystem(use_listings_cache=False)


class DataRoot:
    """The data root: every operation takes a path relative to it. The folders of the layout (:meth:`landing`,
    :meth:`models`, ...) are local paths: the place in the local folder, which on an object store holds only what
    must be local (quarantine, reports, predictions and models then live in the store, under the same names)."""

    def __init__(self, root: Path | str):
        self.remote = is_object_store(root)
        if self.remote:
            self.url = str(root).rstrip("/")
            self.base = self.url[len(OBJECT_STORE) :]
            self.local = _local_dir_of(self.url)
            self.fs = _s3_filesystem()
        else:
            self.local = Path(root).resolve()
            self.url = self.base = str(self.local)
            self.fs = LocalFileSystem()

    def object_store(self) -> DataRoot | None:
        """This root when it is an object store (where quarantine, models and reports are uploaded), else ``None``."""
        return self if self.remote else None

    def confined(self, path: Path | str) -> str:
        """The one confinement check of every path resolution: ``path`` (a string relative to the root, or a local
        ``Path`` under the local folder) as the relative POSIX string it names, or :class:`PathOutsideDataRoot`
        when it is an absolute string, climbs with ``..``, or resolves outside the local folder (through a
        symbolic link; ``..`` in a ``Path`` is resolved, not refused)."""
        pure = PurePosixPath(path) if isinstance(path, str) else None
        resolved = (self.local / path).resolve()
        if (pure is not None and (pure.is_absolute() or ".." in pure.parts)) or not resolved.is_relative_to(self.local):
            raise PathOutsideDataRoot(f"{path}: resolves outside the data folder {self.local}")
        if pure is None:
            return resolved.relative_to(self.local).as_posix()
        return pure.as_posix() if path else ""

    def path(self, rel: str) -> Path:
        """Where ``rel`` is on this host: the file itself on a local root; on an object store its place in the
        local folder (staging, caches, the DuckDB file). Refuses an absolute path or one that climbs out."""
        return self.local / self.confined(rel)

    def key(self, rel: str) -> str:
        """``rel`` as the filesystem's path (an object key on an object store)."""
        return f"{self.base}/{self.confined(rel)}".rstrip("/")

    def relative(self, path: Path | str) -> str:
        """``path`` (under the local folder) as the relative string stored in artefacts."""
        return self.confined(Path(path))

    # -- the layout: where each artefact lives ------------------------------------------------------------------
    def landing(self, task: str) -> Path:
        return self.local / "landing" / task

    def warehouse_dir(self) -> Path:
        return self.local / "warehouse"

    def warehouse_db(self) -> Path:
        return self.warehouse_dir() / "meddiag.duckdb"

    def table(self, task: str, name: str) -> Path:
        """An asset's tables (validated records, split, features): ``[<partition>/]<run>.parquet`` inside, one
        per run that wrote it, never rewritten; viewed from the DuckDB file."""
        return self.asset_values(task)[0] / name

    def values(self, task: str, name: str) -> Path:
        """An asset's other values (model handles, plans, metrics): ``[<partition>/]<run>.json`` inside."""
        return self.asset_values(task)[1] / name

    def asset_values(self, task: str) -> tuple[Path, Path]:
        """The folders of every asset value of ``task``: its tables, its other values."""
        return self.warehouse_dir() / "tables" / task, self.warehouse_dir() / "values" / task

    def cache(self, task: str) -> Path:
        return self.local / "cache" / task

    def models(self, task: str) -> Path:
        return self.local / "models" / task

    def reports(self, task: str) -> Path:
        return self.local / "reports" / task

    def quarantine(self, task: str) -> Path:
        return self.local / "quarantine" / task

    def predictions(self, task: str) -> Path:
        return self.local / "predictions" / task

    # -- files -------------------------------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.key(rel))

    def list(self, rel: str, folders_only: bool = False) -> list[str]:
        """Names in folder ``rel``, sorted, without hidden entries (leftovers of interrupted writes)."""
        try:
            entries = self.fs.ls(self.key(rel), detail=folders_only)  # details cost a stat per entry locally
        except (FileNotFoundError, NotADirectoryError):
            return []
        if folders_only:
            entries = [e["name"] for e in entries if e["type"] == "directory"]
        return sorted(n for n in (PurePosixPath(e).name for e in entries) if not n.startswith("."))

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.key(rel))

    def write_bytes(self, rel: str, data: bytes) -> str:
        if self.remote:
            self.fs.pipe_file(self.key(rel), data)
        else:
            atomic_write_bytes(self.path(rel), data)
        return rel

    def write_once(self, rel: str, data: bytes) -> bool:
        """Create ``rel`` holding ``data`` unless it exists (False then, and nothing changes): local by a hard
        link of a complete temporary file, which fails if the name exists; on S3 a conditional put (If-None-Match)."""
        if not self.remote:
            return atomic_create(self.path(rel), data)
        try:
            self.fs.pipe_file(self.key(rel), data, mode="create")
        except FileExistsError:
            return False
        return True

    def remove(self, rel: str) -> None:
        """Delete file or folder ``rel`` if it is there (forgetting a batch's records, resetting a task)."""
        if self.fs.exists(self.key(rel)):
            self.fs.rm(self.key(rel), recursive=True)

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def write_json(self, rel: str, obj: Any) -> str:
        """Strict JSON (no NaN, no objects JSON cannot hold): a value that does not survive the round trip fails here."""
        return self.write_bytes(rel, (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode())

    def read_parquet(self, rel: str) -> pl.DataFrame:
        with self.fs.open(self.key(rel), "rb") as fh:
            return pl.read_parquet(fh)

    def parquet_width(self, rel: str) -> int:
        with self.fs.open(self.key(rel), "rb") as fh:
            return len(pl.read_parquet_schema(fh))

    def write_parquet(self, rel: str, frame: pl.DataFrame, metadata: dict[str, str] | None = None) -> str:
        """LZ4: written and read several times faster than DuckDB's or zstd compression (bench/README.md)."""
        if not self.remote:
            atomic_write(self.path(rel), lambda tmp: frame.write_parquet(tmp, compression="lz4", metadata=metadata))
            return rel
        buffer = io.BytesIO()
        frame.write_parquet(buffer, compression="lz4", metadata=metadata)
        return self.write_bytes(rel, buffer.getvalue())

    def publish_dir(self, local: Path, rel: str) -> str:
        """Publish the complete local folder ``local`` as ``rel``, which must not exist: never rewritten. Local:
        one rename (``local`` is inside the root). Object store: every file uploaded, ``manifest.json`` last and
        only if absent, so the folder exists for readers (who look for its manifest) once whole, and a second
        publish is refused; ``local`` is removed afterwards."""
        if not self.remote:
            publish_new_dir(local, self.path(rel))
            return rel
        if not (local / MANIFEST).is_file():
            raise ValueError(f"{rel}: a published folder needs its {MANIFEST}")
        if self.exists(f"{rel}/{MANIFEST}"):
            raise FileExistsError(f"{rel}: already exists and is immutable")
        for file in sorted(p for p in local.rglob("*") if p.is_file() and p != local / MANIFEST):
            self.fs.put_file(str(file), self.key(f"{rel}/{file.relative_to(local).as_posix()}"))
        if not self.write_once(f"{rel}/{MANIFEST}", (local / MANIFEST).read_bytes()):
            raise FileExistsError(f"{rel}: published by another run meanwhile; it is immutable")
        shutil.rmtree(local, ignore_errors=True)
        return rel

    def local_dir(self, rel: str) -> Path:
        """A local folder holding published, immutable folder ``rel`` (a model version's part), for libraries
        that read files. Local root: the folder itself. Object store: downloaded once into ``.objects/<rel>`` of
        the local folder (built aside, then renamed into place), never stale since the folder never changes."""
        if not self.remote:
            return self.path(rel)
        cached = self.path(f".objects/{self.confined(rel)}")
        if cached.is_dir():
            return cached
        keys = self.fs.find(self.key(rel))
        if not keys:
            raise FileNotFoundError(f"{rel}: no such folder in the data root")
        building = staging_dir(cached)
        for key in keys:
            target = building / PurePosixPath(key).relative_to(self.key(rel))
            target.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(key, str(target))
        try:
            os.rename(building, cached)
        except OSError:  # another process cached it first: the same immutable files
            shutil.rmtree(building, ignore_errors=True)
        return cached

    def replace_files(self, rel: str, files: dict[str, bytes]) -> str:
        """Folder ``rel`` becomes exactly ``files`` (a copy for people, such as ``reports/<task>/latest/``). Local:
        built aside and swapped in by one rename of a link. Object store: a put per file (each atomic, the set
        not), then files no longer named are removed."""
        if not self.remote:
            copy = staging_dir(self.path(rel))
            for name, data in files.items():
                atomic_write_bytes(copy / name, data)
            publish_dir(copy, self.path(rel))
            return rel
        for name, data in files.items():
            self.write_bytes(f"{rel}/{name}", data)
        for name in set(self.list(rel)) - set(files):
            self.fs.rm(self.key(f"{rel}/{name}"), recursive=True)
        return rel

    def upload_tree(self, local: Path, rel: str) -> str:
        """Copy local file or folder ``local`` (links not followed: a link is skipped, never read) to ``rel``."""
        if local.is_symlink() or not local.exists():
            return rel
        if local.is_file():
            self.fs.put_file(str(local), self.key(rel))
            return rel
        for file in sorted(local.rglob("*")):
            if file.is_file() and not file.is_symlink():
                self.fs.put_file(str(file), self.key(f"{rel}/{file.relative_to(local).as_posix()}"))
        return rel

    def take_ready_folders(self, rel: str, into: Path, marker: str | None, quiet_s: float) -> list[str]:
        """Move the complete folders under prefix ``rel`` of an object store (batches landed there) into the local
        folder ``into``, where today's ingestion reads them. Complete: holding ``marker`` at its top, or (``None``)
        no object newer than ``quiet_s`` seconds. Each is downloaded into a hidden folder (which scans skip), renamed
        into place, then deleted from the store: it has landed locally, and is never lost on the way. A name
        already in ``into`` stays in the store (land a corrected batch under a new name). Returns the names moved."""
        if not self.remote:
            return []
        batches: dict[str, list[dict]] = {}
        for key, info in self.fs.find(self.key(rel), detail=True).items():
            name, _, inner = PurePosixPath(key).relative_to(self.key(rel)).as_posix().partition("/")
            if inner and not name.startswith((".", "_")):
                batches.setdefault(name, []).append({**info, "inner": inner})
        moved = []
        for name, objects in sorted(batches.items()):
            complete = (
                any(o["inner"] == marker for o in objects)
                if marker
                else time.time() - max(o["LastModified"].timestamp() for o in objects) >= quiet_s
            )
            if not complete or (into / name).exists():
                continue
            if not all(self._names_inside(o["inner"]) for o in objects):  # a key (data) names no file inside the batch
                log.warning(
                    "batch %s in the object store's landing prefix %s: a file name climbs out of the batch "
                    "('..'); left there, not ingested",
                    name,
                    rel,
                )
                continue
            self._download_batch(objects, into, name)
            self.fs.rm(self.key(f"{rel}/{name}"), recursive=True)
            moved.append(name)
        return moved

    def _names_inside(self, rel: str) -> bool:
        try:
            self.confined(rel)
        except PathOutsideDataRoot:
            return False
        return True

    def _download_batch(self, objects: list[dict], into: Path, name: str) -> None:
        building = staging_dir(into / name)
        try:
            for obj in objects:
                target = building / obj["inner"]
                target.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(obj["name"], str(target))
            os.rename(building, into / name)
        finally:
            shutil.rmtree(building, ignore_errors=True)


def open_plan(plan: dict, root: DataRoot) -> dict:
    """The plan with its one folder, the image cache, resolved against the data root: for this step only."""
    return {**plan, "cache_dir": str(root.path(plan["cache_dir"]))} if "cache_dir" in plan else plan
