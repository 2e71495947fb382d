"""The model registry in the data root: ``models/<task>/<version>/`` and ``champion.json``, every read and
write through ``storage.DataRoot`` (a local folder or an object store).

A version is built in a local folder, ``.staging/<version>/`` (in the local folder of the data root), and
published with its ``manifest.json`` (including the promotion decision): on a local root by one rename, on an
object store by uploading its files, the manifest last (a version exists once its manifest does); once
published it never changes. A staged version whose run died before publishing is removed by a later publish of
the task once it is an hour old. One set of training inputs (a fingerprint) gives at most one version, whatever
the Dagster instance lets run at once: a publish claims the manifest's fingerprint, create-once
(``.fingerprints/<fingerprint>/<n>``, ``DataRoot.write_once``), and publishes nothing when another version holds
it. ``champion.json`` names the version in use and is replaced atomically (a whole file, or one put). A pinned
champion (a rollback) stays until unpinned.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from meddiag_pipelines.atomic import STALE_AFTER_S, atomic_write_json
from meddiag_pipelines.storage import MANIFEST, DataRoot

STAGING = ".staging"
FINGERPRINTS = ".fingerprints"


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
        """Publish staged ``version`` with ``manifest``, unless another version holds the manifest's fingerprint:
        this staging is then discarded, and the holder published if its run died after claiming (a claim is made
        once the staged version is complete, so here it can be finished). Returns the version holding these
        inputs: ``version`` once published."""
        if self.published(task, version):
            raise FileExistsError(f"{self.version_rel(task, version)}: already published, and a version is immutable")
        atomic_write_json(self.staging_dir(task, version) / MANIFEST, {**manifest, "version": version})
        fingerprint = manifest.get("fingerprint")
        holder = self.claim_fingerprint(task, fingerprint, version) if fingerprint else version
        if holder != version:
            self.discard_staged(task, version)
        self._publish_staged(task, holder)
        self.sweep_staging(task)
        return holder

    def _publish_staged(self, task: str, version: str) -> None:
        """Publish ``version`` if its complete staging folder is on this host and it is not published yet; another
        process publishing it at the same moment is no error."""
        staged = self.task_dir(task) / STAGING / version
        if self.published(task, version) or not (staged / MANIFEST).is_file():
            return
        try:
            self.root.publish_dir(staged, self.version_rel(task, version))
        except (FileExistsError, FileNotFoundError):
            if not self.published(task, version):
                raise

    def claim_fingerprint(self, task: str, fingerprint: str, version: str) -> str:
        """The version that publishes the inputs ``fingerprint``: ``version`` when this call claims them, else the
        version of the claim in force. Claims are numbered and each is created once, so of two runs claiming at
        once one wins; a claim whose version is still unpublished after ``STALE_AFTER_S`` (its run died before
        publishing) gives way to the next number."""
        folder = self.rel(task, FINGERPRINTS, fingerprint)
        while True:
            numbers = [int(n) for n in self.root.list(folder) if n.isdigit()]
            last = max(numbers, default=-1)
            if last >= 0:
                claim = self.root.read_json(f"{folder}/{last}")
                if self.published(task, claim["version"]) or time.time() - claim["at"] < STALE_AFTER_S:
                    return claim["version"]
            mine = json.dumps({"version": version, "at": time.time()}).encode()
            if self.root.write_once(f"{folder}/{last + 1}", mine):
                return version

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
            raise RegistryError(
                f"task {task!r} has no published version {version!r}; known: {self.versions(task)}"
            ) from None

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
