"""The model registry in the data root: ``models/<task>/<version>/`` and ``champion.json``, every read and
write through ``storage.DataRoot`` (a local folder or an object store).

A version is built in a local folder, ``.staging/<version>/`` (in the local folder of the data root), and
published with its ``manifest.json`` (including the promotion decision): on a local root by one rename, on an
object store by uploading its files, the manifest last (a version exists once its manifest does); once
published it never changes. A staged version whose run died before publishing is removed by a later publish of
the task once it is an hour old. ``champion.json`` names the version in use and is replaced atomically (a whole
file, or one put). A pinned champion (a rollback) stays until unpinned.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from meddiag_pipelines.atomic import STALE_AFTER_S, atomic_write_json
from meddiag_pipelines.storage import MANIFEST, DataRoot

STAGING = ".staging"


class RegistryError(ValueError):
    pass


def _last_change(folder: Path) -> float:
    try:
        return max(p.stat().st_mtime for p in [folder, *folder.rglob("*")])
    except OSError:  # an entry vanished while we looked: something is writing there now
        return time.time()


class ModelRegistry:
    def __init__(self, root: DataRoot, prefix: str = "models"):
        self.root = root
        self.prefix = prefix

    def rel(self, *parts: str) -> str:
        """A registry path relative to the data root."""
        return "/".join(p for p in (self.prefix, *parts) if p)

    def task_dir(self, task: str) -> Path:
        """The task's registry folder on this host (on an object store, in the local folder: only staging)."""
        return self.root.path(self.rel(task))

    def staging_dir(self, task: str, version: str) -> Path:
        """The local folder in which ``version`` is built."""
        path = self.task_dir(task) / STAGING / version
        path.mkdir(parents=True, exist_ok=True)
        return path

    def version_rel(self, task: str, version: str) -> str:
        return self.rel(task, version)

    def version_dir(self, task: str, version: str) -> Path:
        """A local folder holding published ``version`` (on an object store, a cached copy)."""
        return self.root.local_dir(self.version_rel(task, version))

    def published(self, task: str, version: str) -> bool:
        return self.root.exists(self.rel(task, version, MANIFEST))

    def publish(self, task: str, version: str, manifest: dict) -> str:
        staging = self.staging_dir(task, version)
        atomic_write_json(staging / MANIFEST, {**manifest, "version": version})
        published = self.root.publish_dir(staging, self.version_rel(task, version))
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
        return self.root.list(self.rel(), folders_only=True)

    def versions(self, task: str) -> list[str]:
        folders = self.root.list(self.rel(task), folders_only=True)
        return [v for v in folders if self.published(task, v)]

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
        try:
            return self.root.read_json(self.rel(task, version, MANIFEST))
        except FileNotFoundError:
            raise RegistryError(f"task {task!r} has no published version {version!r}; known: {self.versions(task)}") from None

    def read_file(self, task: str, version: str, name: str) -> bytes | None:
        """One file of a published version (``None``: it has none of that name)."""
        try:
            return self.root.read_bytes(self.rel(task, version, name))
        except FileNotFoundError:
            return None

    def champion(self, task: str) -> dict | None:
        try:
            return self.root.read_json(self.rel(task, "champion.json"))
        except FileNotFoundError:
            return None

    def set_champion(self, task: str, version: str, reason: str, pinned: bool = False) -> dict:
        self.manifest(task, version)  # refuses an unknown version
        pointer = {"version": version, "since": time.time(), "reason": reason, "pinned": pinned}
        self.root.write_json(self.rel(task, "champion.json"), pointer)
        return pointer
