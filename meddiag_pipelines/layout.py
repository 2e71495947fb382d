"""Where every artefact lives under the data root (``MEDDIAG_DATA_DIR``, default: the repo's ``data/``; or an
object store URL, ``s3://bucket/prefix``: see ``storage.py``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_DATA_DIR = Path(__file__).resolve().parent.parent / "data"


def default_data_dir() -> Path:
    return Path(os.environ.get("MEDDIAG_DATA_DIR") or REPO_DATA_DIR).resolve()


def default_data_root() -> str:
    """``MEDDIAG_DATA_DIR`` as the storage resource takes it: an object store URL as it is, else a local folder."""
    value = os.environ.get("MEDDIAG_DATA_DIR") or ""
    return value if value.startswith("s3://") else str(default_data_dir())


class PathOutsideDataRoot(ValueError):
    """A path that would escape the data folder (``..``, an absolute path or a symbolic link)."""


@dataclass(frozen=True)
class DataLayout:
    """``root``: the local folder (the data root itself, or an object store root's local folder); ``url``: the
    object store root, when there is one (then quarantine, reports, predictions and models live there)."""

    root: Path
    url: str = ""

    def object_store(self):
        """The object-store data root (a ``storage.DataRoot``) when there is one, else ``None``."""
        from meddiag_pipelines.storage import DataRoot  # storage imports this module

        return DataRoot(self.url) if self.url else None

    def landing(self, task: str) -> Path:
        return self.root / "landing" / task

    def warehouse(self) -> Path:
        return self.root / "warehouse"

    def warehouse_db(self) -> Path:
        return self.warehouse() / "meddiag.duckdb"

    def table(self, task: str, name: str) -> Path:
        """An asset's tables (validated records, split, features): ``[<partition>/]<run>.parquet`` inside, one
        per run that wrote it, never rewritten; viewed from the DuckDB file."""
        return self.asset_values(task)[0] / name

    def values(self, task: str, name: str) -> Path:
        """An asset's other values (model handles, plans, metrics): ``[<partition>/]<run>.json`` inside."""
        return self.asset_values(task)[1] / name

    def asset_values(self, task: str) -> tuple[Path, Path]:
        """The folders of every asset value of ``task``: its tables, its other values."""
        return self.warehouse() / "tables" / task, self.warehouse() / "values" / task

    def cache(self, task: str) -> Path:
        return self.root / "cache" / task

    def models(self, task: str) -> Path:
        return self.root / "models" / task

    def reports(self, task: str) -> Path:
        return self.root / "reports" / task

    def quarantine(self, task: str) -> Path:
        return self.root / "quarantine" / task

    def predictions(self, task: str) -> Path:
        return self.root / "predictions" / task

    def confine(self, path: Path) -> Path:
        """Resolve ``path`` and refuse it unless it stays inside the data root."""
        resolved = Path(path).resolve()
        if not resolved.is_relative_to(self.root.resolve()):
            raise PathOutsideDataRoot(f"{path}: resolves outside the data folder {self.root}")
        return resolved
