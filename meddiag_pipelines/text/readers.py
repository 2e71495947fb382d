"""Read one landed batch of free text into records, scrubbing PHI as soon as a text is decoded.

Formats found in a batch folder (searched recursively; hidden files and ``_``-prefixed markers are skipped):

* ``*.csv`` and ``*.parquet``: one row per record with the spec's ``text``, ``label`` and ``id`` columns;
* ``*.jsonl`` / ``*.ndjson``: one JSON object per line with the same keys (blank lines are skipped; a line
  that is not a JSON object rejects the whole file, naming the line);
* a folder holding ``labels.csv`` and ``.txt`` files: ``labels.csv`` has a ``file`` column (the text file,
  relative to the folder), a label column (the spec's label name, or ``label``), optionally the spec's id
  column (or ``id``; default: the file name without ``.txt``), the patient id and subgroup columns.

Decoding: UTF-8, with or without a byte-order mark; anything else (Latin-1, UTF-16, ...) rejects the file
with the reason. A missing label column or an empty label means "unlabelled, to be scored" (label null).
Texts longer than ``MAX_TEXT_CHARS`` are truncated (counted in ``TextReadResult.truncated``). A bad file
never raises: it lands in ``rejected`` as (path relative to the batch folder, problem).

The raw text is never kept: each text is scrubbed (``deid.scrub``) right after it is decoded; the records
only ever hold the scrubbed text. Texts shorter than ``spec.min_text_chars`` are kept for validation to judge.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from meddiag_pipelines.specs import TaskSpec
from meddiag_pipelines.text.deid import scrub

MAX_TEXT_CHARS = 100_000
# Scrub a little past the cut so that an identifier straddling it is still recognised whole.
_SCRUB_MARGIN = 512
LABELS_FILE = "labels.csv"
TABLE_SUFFIXES = {".csv", ".parquet", ".jsonl", ".ndjson"}


@dataclass
class TextReadResult:
    records: pl.DataFrame
    rejected: list[tuple[str, str]] = field(default_factory=list)
    truncated: int = 0  # texts cut to MAX_TEXT_CHARS
    files_read: list[str] = field(default_factory=list)


class _Reject(Exception):
    """One file cannot be used; the message is the problem."""


def output_columns(spec: TaskSpec) -> list[str]:
    cols = ["id", "label"]
    if spec.patient_id:
        cols.append("patient_id")
    cols += [g for g in spec.subgroups if g not in cols]
    return [*cols, "text"]


def empty_records(spec: TaskSpec) -> pl.DataFrame:
    return pl.DataFrame(schema={c: pl.String for c in output_columns(spec)})


def decode_utf8(data: bytes) -> str:
    """UTF-8 text with an optional BOM stripped; raise ``_Reject`` with a clear reason otherwise."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise _Reject("is UTF-16 encoded (it starts with a UTF-16 byte-order mark); re-save it as UTF-8")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if b"\x00" in data[:4096]:
        raise _Reject("contains NUL bytes: it looks like UTF-16 (without a byte-order mark) or binary; re-save it as UTF-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        hint = " (it looks like UTF-16)" if data[:200].count(b"\x00") > 10 else " (Latin-1 / Windows-1252?)"
        raise _Reject(
            f"is not valid UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start}{hint}; re-save it as UTF-8"
        ) from None


def _read_bytes(path: Path, spec: TaskSpec) -> bytes:
    size = path.stat().st_size
    if size > spec.landing.max_file_mb * 1024 * 1024:
        raise _Reject(f"is {size / 1024 / 1024:.1f} MB, over the {spec.landing.max_file_mb:g} MB limit")
    return path.read_bytes()


def _text_value(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


class _Collector:
    """Accumulates scrubbed rows; the raw text never leaves ``add``."""

    def __init__(self, spec: TaskSpec):
        self.spec = spec
        self.columns = output_columns(spec)
        self.rows: list[dict[str, str | None]] = []
        self.truncated = 0

    def make_row(self, get, where: str) -> dict[str, str | None]:
        """``get(name)`` returns a raw value or None; builds one scrubbed output row."""
        spec = self.spec
        rec_id = _text_value(get(spec.id))
        if rec_id is None or not rec_id.strip():
            raise _Reject(f"{where}: the id column {spec.id!r} is empty")
        raw = _text_value(get(spec.text))
        text = None
        if raw is not None:
            if len(raw) > MAX_TEXT_CHARS:
                self.truncated += 1
                text = scrub(raw[: MAX_TEXT_CHARS + _SCRUB_MARGIN])[:MAX_TEXT_CHARS]
            else:
                text = scrub(raw)
        label = _text_value(get(spec.label))
        if label is not None and not label.strip():
            label = None
        row: dict[str, str | None] = {"id": rec_id.strip(), "label": label.strip() if label else None}
        if spec.patient_id:
            pid = _text_value(get(spec.patient_id))
            row["patient_id"] = pid.strip() if pid and pid.strip() else None
        for g in spec.subgroups:
            if g not in row:
                v = _text_value(get(g))
                row[g] = v if v and v.strip() else None
        row["text"] = text
        return row


def _check_columns(columns: list[str], spec: TaskSpec, what: str) -> None:
    missing = [c for c in (spec.id, spec.text) if c not in columns]
    if missing:
        raise _Reject(f"{what} lacks the column(s) {missing} (has {columns[:20]})")


def _rows_from_table(df: pl.DataFrame, spec: TaskSpec, col: _Collector) -> list[dict]:
    _check_columns(df.columns, spec, "the table")
    if df.height == 0:
        raise _Reject("has a header but no rows")
    out = []
    for i, rec in enumerate(df.iter_rows(named=True)):
        out.append(col.make_row(rec.get, f"row {i + 2}"))
    return out


def _read_csv(path: Path, spec: TaskSpec, col: _Collector) -> list[dict]:
    text = decode_utf8(_read_bytes(path, spec))
    if not text.strip():
        raise _Reject("is empty")
    try:
        df = pl.read_csv(io.StringIO(text), infer_schema=False, truncate_ragged_lines=False)
    except Exception as exc:  # polars raises several error types for malformed CSV
        raise _Reject(f"is not a readable CSV: {str(exc).splitlines()[0][:300]}") from None
    return _rows_from_table(df, spec, col)


def _read_parquet(path: Path, spec: TaskSpec, col: _Collector) -> list[dict]:
    size = path.stat().st_size
    if size == 0:
        raise _Reject("is empty")
    if size > spec.landing.max_file_mb * 1024 * 1024:
        raise _Reject(f"is {size / 1024 / 1024:.1f} MB, over the {spec.landing.max_file_mb:g} MB limit")
    try:
        df = pl.read_parquet(path)
    except Exception as exc:
        raise _Reject(f"is not a readable Parquet file: {str(exc).splitlines()[0][:300]}") from None
    return _rows_from_table(df, spec, col)


def _read_jsonl(path: Path, spec: TaskSpec, col: _Collector) -> list[dict]:
    text = decode_utf8(_read_bytes(path, spec))
    if not text.strip():
        raise _Reject("is empty")
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _Reject(f"line {lineno} is not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise _Reject(f"line {lineno} is a JSON {type(obj).__name__}, not an object")
        if spec.id not in obj or spec.text not in obj:
            missing = [k for k in (spec.id, spec.text) if k not in obj]
            raise _Reject(f"line {lineno} lacks the key(s) {missing}")
        value = obj.get(spec.text)
        if value is not None and not isinstance(value, str):
            raise _Reject(f"line {lineno}: {spec.text!r} is a {type(value).__name__}, not a string")
        out.append(col.make_row(obj.get, f"line {lineno}"))
    if not out:
        raise _Reject("has no records")
    return out


def _read_txt_folder(folder: Path, batch_dir: Path, spec: TaskSpec, col: _Collector, rejected: list) -> list[dict]:
    """A folder of .txt files described by labels.csv; a bad .txt file is rejected alone."""
    labels_path = folder / LABELS_FILE
    text = decode_utf8(_read_bytes(labels_path, spec))
    if not text.strip():
        raise _Reject("is empty")
    rows = list(csv.DictReader(io.StringIO(text)))
    header = next(csv.reader(io.StringIO(text)), [])
    if "file" not in header:
        raise _Reject(f"lacks the 'file' column (has {header[:20]})")
    if not rows:
        raise _Reject("has a header but no rows")
    label_col = spec.label if spec.label in header else "label"
    id_col = spec.id if spec.id in header else ("id" if "id" in header else None)
    out = []
    root = folder.resolve()
    for i, rec in enumerate(rows, start=2):
        name = (rec.get("file") or "").strip()
        rel = (folder / name).relative_to(batch_dir).as_posix() if name else f"{LABELS_FILE} row {i}"
        try:
            if not name:
                raise _Reject(f"row {i} of {LABELS_FILE} has no file name")
            path = (folder / name).resolve()
            if not path.is_relative_to(root):
                raise _Reject(f"named in {LABELS_FILE} row {i}, points outside the folder")
            if not path.is_file():
                raise _Reject(f"is named in {LABELS_FILE} row {i} but does not exist")
            body = decode_utf8(_read_bytes(path, spec))
            values: dict[str, Any] = dict(rec)
            values[spec.text] = body
            values[spec.id] = rec.get(id_col) if id_col else Path(name).stem
            values[spec.label] = rec.get(label_col)
            out.append(col.make_row(values.get, f"{LABELS_FILE} row {i}"))
        except _Reject as exc:
            rejected.append((rel, f"{rel}: {exc}"))
        except OSError as exc:
            rejected.append((rel, f"{rel}: cannot be read ({exc.strerror or exc})"))
    return out


_READERS = {".csv": _read_csv, ".parquet": _read_parquet, ".jsonl": _read_jsonl, ".ndjson": _read_jsonl}


def _skipped(path: Path, batch_dir: Path) -> bool:
    return any(part.startswith((".", "_")) for part in path.relative_to(batch_dir).parts)


def _named_txt_files(labels_path: Path) -> set[Path]:
    """The files a labels.csv names (read leniently: its own problems are reported when it is read)."""
    try:
        text = decode_utf8(labels_path.read_bytes())
        return {(labels_path.parent / (r.get("file") or "").strip()).resolve() for r in csv.DictReader(io.StringIO(text))}
    except (_Reject, OSError, csv.Error):
        return set()


def read_text_batch(batch_dir: Path, spec: TaskSpec) -> TextReadResult:
    """Read every supported file of one batch folder; unusable files are listed in ``rejected``."""
    batch_dir = Path(batch_dir)
    root = batch_dir.resolve()
    col = _Collector(spec)
    rows: list[dict] = []
    rejected: list[tuple[str, str]] = []
    files_read: list[str] = []
    paths = sorted(p for p in batch_dir.rglob("*") if not _skipped(p, batch_dir) and not p.is_dir())
    label_files = [p for p in paths if p.name == LABELS_FILE]
    named: set[Path] = set()
    for labels_path in label_files:
        named |= _named_txt_files(labels_path)
    for path in paths:
        rel = path.relative_to(batch_dir).as_posix()
        suffix = path.suffix.lower()
        truncated_before = col.truncated
        try:
            if not path.resolve().is_relative_to(root):
                raise _Reject("is a link that points outside the batch folder")
            if path.name == LABELS_FILE:
                rows += _read_txt_folder(path.parent, batch_dir, spec, col, rejected)
            elif suffix == ".txt":
                if path.resolve() in named:
                    continue  # read through its labels.csv
                raise _Reject(f"is a .txt file that no {LABELS_FILE} names (a text folder needs a {LABELS_FILE})")
            elif suffix in _READERS:
                rows += _READERS[suffix](path, spec, col)
            else:
                raise _Reject(
                    f"has an unsupported format {suffix or '(no extension)'!r}; use CSV, Parquet, JSONL or .txt files + {LABELS_FILE}"
                )
            files_read.append(rel)
        except _Reject as exc:
            col.truncated = truncated_before
            rejected.append((rel, f"{rel}: {exc}"))
        except OSError as exc:
            col.truncated = truncated_before
            rejected.append((rel, f"{rel}: cannot be read ({exc.strerror or exc})"))
    records = pl.DataFrame(rows, schema={c: pl.String for c in col.columns}, orient="row") if rows else empty_records(spec)
    return TextReadResult(records=records, rejected=rejected, truncated=col.truncated, files_read=files_read)
