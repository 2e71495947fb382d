"""The model registry on disk: ``<data>/models/<task>/<version>/`` and ``champion.json``.

A version is built in ``.staging/<version>/`` and published by one rename, with its ``manifest.json``
(including the promotion decision) already inside; once published it never changes. A staged version whose
run died before publishing is removed by a later publish of the task once it is an hour old. ``champion.json``
names the version in use and is replaced atomically. A pinned champion (a rollback) stays until unpinned.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from meddiag_pipelines.atomic import STALE_AFTER_S, atomic_write_json, publish_new_dir

STAGING = ".staging"


class RegistryError(ValueError):
    pass


def _last_change(folder: Path) -> float:
    try:
        return max(p.stat().st_mtime for p in [folder, *folder.rglob("*")])
    except OSError:  # an entry vanished while we looked: something is writing there now
        return time.time()


class ModelRegistry:
    def __init__(self, root: Path):
        self.root = Path(root)

    def task_dir(self, task: str) -> Path:
        return self.root / task

    def staging_dir(self, task: str, version: str) -> Path:
        path = self.task_dir(task) / STAGING / version
        path.mkdir(parents=True, exist_ok=True)
        return path

    def version_dir(self, task: str, version: str) -> Path:
        return self.task_dir(task) / version

    def publish(self, task: str, version: str, manifest: dict) -> Path:
        staging = self.staging_dir(task, version)
        atomic_write_json(staging / "manifest.json", {**manifest, "version": version})
        published = publish_new_dir(staging, self.version_dir(task, version))
        self.sweep_staging(task)
        return published

    def sweep_staging(self, task: str, older_than_s: float = STALE_AFTER_S) -> list[Path]:
        """Remove staged versions in which nothing changed for ``older_than_s`` (their run died before
        publishing); younger ones may belong to a run still training (checkpoints are written inside)."""
        folder = self.task_dir(task) / STAGING
        if not folder.is_dir():
            return []
        now = time.time()
        stale = [p for p in folder.iterdir() if p.is_dir() and now - _last_change(p) > older_than_s]
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
        return stale

    def tasks(self) -> list[str]:
        """The tasks with a registry folder."""
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")) if self.root.is_dir() else []

    def versions(self, task: str) -> list[str]:
        folder = self.task_dir(task)
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and (p / "manifest.json").exists())

    def version_with_fingerprint(self, task: str, fingerprint: str) -> str | None:
        """The newest published version trained from exactly these inputs (see ``registry.fingerprint``)."""
        for version in reversed(self.versions(task)):
            if self.manifest(task, version).get("fingerprint") == fingerprint:
                return version
        return None

    def discard_staged(self, task: str, version: str) -> None:
        """Remove a staged version that will not be published (a copy of a published one)."""
        shutil.rmtree(self.task_dir(task) / STAGING / version, ignore_errors=True)

    def manifest(self, task: str, version: str) -> dict:
        path = self.version_dir(task, version) / "manifest.json"
        if not path.exists():
            raise RegistryError(f"task {task!r} has no published version {version!r}; known: {self.versions(task)}")
        return json.loads(path.read_text())

    def champion(self, task: str) -> dict | None:
        path = self.task_dir(task) / "champion.json"
        return json.loads(path.read_text()) if path.exists() else None

    def set_champion(self, task: str, version: str, reason: str, pinned: bool = False) -> dict:
        self.manifest(task, version)  # refuses an unknown version
        pointer = {"version": version, "since": time.time(), "reason": reason, "pinned": pinned}
        atomic_write_json(self.task_dir(task) / "champion.json", pointer)
        return pointer
