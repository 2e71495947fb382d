"""The model registry on disk: ``<data>/models/<task>/<version>/`` and ``champion.json``.

A version is built in ``.staging/<version>/`` and published by one rename, with its ``manifest.json``
(including the promotion decision) already inside; once published it never changes. ``champion.json``
names the version in use and is replaced atomically. A pinned champion (a rollback) stays until unpinned.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from meddiag_pipelines.atomic import atomic_write_json, publish_new_dir

STAGING = ".staging"


class RegistryError(ValueError):
    pass


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
        return publish_new_dir(staging, self.version_dir(task, version))

    def versions(self, task: str) -> list[str]:
        folder = self.task_dir(task)
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and (p / "manifest.json").exists())

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
