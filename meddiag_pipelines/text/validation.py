"""Blocking checks of a text task, each returning ``list[CheckFailure]`` (empty = passed).

* :func:`validate_texts` is the per-batch validator (``validate_pending_batches``) and the suite re-run over
  all validated rows: the GX suite (columns, non-null and unique ids, labels in ``spec.classes``), texts that
  are empty or shorter than ``spec.min_text_chars`` visible characters (``INVISIBLE``), texts carrying decoding damage
  (U+FFFD replacement characters or NUL bytes, the marks of an upstream lossy decode), and ids already
  ingested from earlier batches.
* :func:`unreadable_files` proves that every file the reader rejected (bad encoding, unreadable format) was
  quarantined with its reason and is counted in the ledger, so a bad file is never silently lost.
* :func:`text_duplicates` counts identical texts (``split.text_content_key``: Unicode-normalised, case
  and blanks folded) and those carrying conflicting labels; duplicates are real and only reported. Copies in
  more than one of train / val / test (``TextDuplicates.failures``) fail: a leak that would flatter the
  test metrics, and a bug once the split groups identical content.

Failures never carry a text, an id or any other record value: they give counts only.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from meddiag_pipelines.ingestion.quarantine import REASON_FILE, file_reason
from meddiag_pipelines.specs import TaskSpec
from meddiag_pipelines.split import SPLIT_COLUMN, SPLITS, text_content_key
from meddiag_pipelines.validation.suites import CheckFailure, ids_already_ingested, record_expectations, run_suite

if TYPE_CHECKING:
    import great_expectations.expectations as gxe

REPLACEMENT_CHAR = "\ufffd"
# Characters that print nothing, not counted toward ``min_text_chars``: format characters (zero-width spaces and
# joiners, BOM, word joiner, bidi marks, tags), controls, separators and white space of every kind, combining
# marks with no letter, and the blank Hangul fillers and Braille pattern (Rust regex classes, run by Polars).
INVISIBLE = r"[\p{Cf}\p{Cc}\p{Z}\p{Mn}\p{Me}\s\x{115F}\x{1160}\x{3164}\x{FFA0}\x{2800}]"


def text_expectations(spec: TaskSpec) -> list[gxe.Expectation]:
    return record_expectations(spec, [spec.text])


def short_texts(frame: pl.DataFrame, spec: TaskSpec) -> list[CheckFailure]:
    """Texts that are missing or have fewer than ``spec.min_text_chars`` visible characters: a note of
    zero-width spaces, BOMs or blanks of any kind is empty (``INVISIBLE``)."""
    if spec.text not in frame.columns:
        return []  # reported by the suite as a missing column
    length = pl.col(spec.text).cast(pl.String).str.replace_all(INVISIBLE, "").str.len_chars().fill_null(0)
    n = frame.filter(length < spec.min_text_chars).height
    if not n:
        return []
    return [
        CheckFailure(
            "text_min_length",
            spec.text,
            f"{n} texts are empty or have fewer than {spec.min_text_chars} visible characters",
            n,
        )
    ]


def decoding_damage(frame: pl.DataFrame, spec: TaskSpec) -> list[CheckFailure]:
    """Texts holding U+FFFD or NUL: they were decoded lossily before they landed (e.g. in a Parquet export).
    Files that are not valid UTF-8 never get here: the reader rejects them (see :func:`unreadable_files`)."""
    if spec.text not in frame.columns:
        return []
    text = pl.col(spec.text).cast(pl.String)
    n = frame.filter(text.str.contains(REPLACEMENT_CHAR, literal=True) | text.str.contains("\x00", literal=True)).height
    if not n:
        return []
    return [
        CheckFailure(
            "text_decodes_cleanly",
            spec.text,
            f"{n} texts carry decoding damage (U+FFFD replacement "
            "characters or NUL bytes): re-export them from the source as UTF-8",
            n,
        )
    ]


def validate_texts(frame: pl.DataFrame, spec: TaskSpec, known_ids: set[str] | None = None) -> list[CheckFailure]:
    """The per-batch validator of a text task (``validate_pending_batches``); also run over all validated rows."""
    failures = run_suite(frame, text_expectations(spec), spec.name)
    return (
        failures
        + short_texts(frame, spec)
        + decoding_damage(frame, spec)
        + ids_already_ingested(frame, spec, known_ids)
    )


def _rejected_files(ledger: pl.DataFrame) -> list[tuple[str, str, bool]]:
    """(batch, file, whole batch quarantined?) for every landed file the reader rejected, from the ledger.
    A file named in a ``labels.csv`` that never landed is a problem of that row, not a file to quarantine."""
    out = []
    for row in ledger.iter_rows(named=True):
        reason = json.loads(row["reason"]) if row["reason"] else {}
        landed = set(json.loads(row["files"] or "[]"))
        for item in reason.get("rejected_files") or []:
            rel = item["file"] if isinstance(item, dict) else item[0]
            if rel in landed:
                out.append((row["batch_id"], rel, row["status"] == "quarantined"))
    return out


def unreadable_files(
    ledger: pl.DataFrame, quarantine_dir: Path, is_file: Callable[[Path], bool] = Path.is_file
) -> tuple[int, list[CheckFailure]]:
    """How many landed files were rejected at read (decoding errors, unreadable formats), and a failure for
    any of them that is not in quarantine with its ``reason.json``. A batch with some good files still flows.
    ``is_file``: whether a file of the quarantine exists (it may be in an object store)."""
    rejected = _rejected_files(ledger)
    missing = 0
    for batch, rel, whole in rejected:
        reason = quarantine_dir / batch / REASON_FILE if whole else file_reason(quarantine_dir / batch, rel)
        if not is_file(reason):
            missing += 1
    failures = []
    if missing:
        failures.append(
            CheckFailure(
                "rejected_files_quarantined",
                None,
                f"{missing} of {len(rejected)} files rejected at read are not in quarantine with a reason.json",
                missing,
            )
        )
    return len(rejected), failures


@dataclass(frozen=True)
class TextDuplicates:
    """Copies of one content (``text_content_key``) among the labelled rows of a split: counted, never shown.
    Real corpora carry duplicates; they only corrupt the evaluation when copies sit in different splits."""

    duplicated_texts: int = 0  # distinct contents found in more than one row
    extra_copies: int = 0  # rows beyond the first of each such content
    conflicting_texts: int = 0  # of those, contents carrying more than one label
    conflicting_rows: int = 0
    texts_across_splits: int = 0  # contents in more than one of train / val / test
    rows_across_splits: int = 0

    def metadata(self) -> dict[str, int]:
        return asdict(self)

    def summary(self) -> str:
        if not self.duplicated_texts:
            return "No text appears twice among the labelled rows."
        words = f"{self.duplicated_texts} distinct texts appear more than once ({self.extra_copies} extra copies)"
        if self.conflicting_texts:
            words += f"; {self.conflicting_texts} of them carry conflicting labels ({self.conflicting_rows} rows)"
        if self.texts_across_splits:
            return f"{words}; {self.texts_across_splits} of them are in more than one of train/val/test."
        return f"{words}; the copies of each text share one split, so none leaks into evaluation."

    def failures(self, spec: TaskSpec) -> list[CheckFailure]:
        """A failure only when copies landed in different splits: the split groups identical content, so
        this means the test split would score texts seen in training."""
        if not self.texts_across_splits:
            return []
        return [
            CheckFailure(
                "texts_unique_across_splits",
                spec.text,
                f"{self.texts_across_splits} distinct texts appear in more than one of train/val/test "
                f"({self.rows_across_splits} rows): the test split would score texts seen in "
                "training; the split must keep the copies of a text (text_content_key) together",
                self.texts_across_splits,
            )
        ]


def text_duplicates(split: pl.DataFrame, spec: TaskSpec) -> TextDuplicates:
    """Duplicate texts of the labelled rows (train / val / test; rows to score may repeat a training text)."""
    labelled = split.filter(pl.col(SPLIT_COLUMN).is_in(list(SPLITS)) & pl.col(spec.text).is_not_null())
    keyed = labelled.select(
        text_content_key(spec.text).alias("_key"), pl.col(spec.label).cast(pl.String).alias("_label"), SPLIT_COLUMN
    )
    groups = (
        keyed.group_by("_key")
        .agg(
            pl.len().alias("rows"),
            pl.col("_label").drop_nulls().n_unique().alias("labels"),
            pl.col(SPLIT_COLUMN).n_unique().alias("splits"),
        )
        .filter(pl.col("rows") > 1)
    )
    conflicting = groups.filter(pl.col("labels") > 1)
    across = groups.filter(pl.col("splits") > 1)
    return TextDuplicates(
        duplicated_texts=groups.height,
        extra_copies=int(groups["rows"].sum()) - groups.height,
        conflicting_texts=conflicting.height,
        conflicting_rows=int(conflicting["rows"].sum()),
        texts_across_splits=across.height,
        rows_across_splits=int(across["rows"].sum()),
    )
