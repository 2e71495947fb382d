"""Where every artefact lives under the data root (``MEDDIAG_DATA_DIR``, default: the repo's ``data/``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_DATA_DIR = Path(__file__).resolve().parent.parent / "data"


def default_data_dir() -> Path:
    return Path(os.environ.get("MEDDIAG_DATA_DIR") or REPO_DATA_DIR).resolve()


class PathOutsideDataRoot(ValueError):
    """A path that would escape the data folder (``..``, an absolute path or a symbolic link)."""


@dataclass(frozen=True)
class DataLayout:
    root: Path

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
