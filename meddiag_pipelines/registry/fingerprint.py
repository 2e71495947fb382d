"""What a model is trained from, as one hash: a run whose fingerprint equals a published version's publishes
nothing (no new data, spec or code since that version), so an unchanged nightly run never adds a version.

The inputs: the content hashes of the validated batches that bring labelled rows (in batch order; a batch of
cases to score only changes no model), the spec's model-relevant settings (everything but what only decides
when and how a model is shown, promoted or landed), and the code version.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import polars as pl

from meddiag_pipelines import __version__
from meddiag_pipelines.specs import TaskSpec

# Settings that change no trained model nor the thresholds a version carries.
MODEL_IRRELEVANT = {"description", "owner", "schedule", "landing", "promotion"}


def model_settings(spec: TaskSpec) -> dict:
    return spec.model_dump(mode="json", exclude=MODEL_IRRELEVANT)


def code_version() -> str:
    """The package version, plus the git commit when git answers within 5 s (no git, no repo or a hung git:
    the version alone)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):  # SubprocessError: TimeoutExpired
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def training_fingerprint(batch_hashes: list[str], spec: TaskSpec, code_version: str) -> str:
    payload = {"batches": list(batch_hashes), "spec": model_settings(spec), "code": code_version}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def trained_batch_hashes(ledger: pl.DataFrame, labelled_batches: set[str]) -> list[str]:
    """Content hashes of the validated ledger rows whose batch brings labelled rows, in batch order."""
    rows = ledger.filter((pl.col("status") == "validated") & pl.col("batch_id").is_in(sorted(labelled_batches)))
    return rows.sort("batch_id")["content_hash"].to_list()
