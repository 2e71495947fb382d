"""What a model is trained from, as one hash: a run whose fingerprint equals a published version's publishes
nothing (no new data, spec or code since that version), so an unchanged nightly run never adds a version.

The inputs: the content hashes of the validated batches that bring labelled rows (in batch order; a batch of
cases to score only changes no model), the spec's model-relevant settings (everything but what only decides
when and how a model is shown, promoted or landed), and the code version: the package version and a digest of
the package's source, so that a docs or README edit changes nothing and any code edit, committed or not, does.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path

import polars as pl

from meddiag_pipelines import __version__
from meddiag_pipelines.specs import TaskSpec

# Settings that change no trained model nor the thresholds a version carries.
MODEL_IRRELEVANT = {"description", "owner", "schedule", "landing", "promotion", "family"}
PACKAGE = Path(__file__).resolve().parent.parent
# The code: Python source, and the templates of the report and model card a version holds. Not the bundled specs
# (a spec counts through its model settings) nor compiled files.
SOURCE_PATTERNS = ("*.py", "*.j2")


def model_settings(spec: TaskSpec) -> dict:
    return spec.model_dump(mode="json", exclude=MODEL_IRRELEVANT)


def source_digest(package: Path) -> str:
    """SHA-256 over the package's source files (:data:`SOURCE_PATTERNS`): each one's path within ``package``
    and its bytes, in path order."""
    digest = hashlib.sha256()
    paths = sorted({p.relative_to(package).as_posix() for pattern in SOURCE_PATTERNS for p in package.rglob(pattern)})
    for rel in paths:
        data = (package / rel).read_bytes()
        digest.update(f"{rel}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


@cache
def code_version() -> str:
    """``<package version>+<source digest, 12 hex>``, computed once per process (about 1 MB read)."""
    return f"{__version__}+{source_digest(PACKAGE)[:12]}"


def training_fingerprint(batch_hashes: list[str], spec: TaskSpec, code_version: str) -> str:
    payload = {"batches": list(batch_hashes), "spec": model_settings(spec), "code": code_version}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def trained_batch_hashes(ledger: pl.DataFrame, labelled_batches: set[str]) -> list[str]:
    """Content hashes of the validated ledger rows whose batch brings labelled rows, in batch order."""
    rows = ledger.filter((pl.col("status") == "validated") & pl.col("batch_id").is_in(sorted(labelled_batches)))
    return rows.sort("batch_id")["content_hash"].to_list()
