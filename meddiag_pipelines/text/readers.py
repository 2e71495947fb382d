"""Read one landed batch of free text into records, scrubbing PHI as soon as a text is decoded.

Formats found in a batch folder (searched recursively; hidden files and ``_``-prefixed markers are skipped):

* ``*.csv`` and ``*.parquet``: one row per record with the spec's ``text``, ``label`` and ``id`` columns;
* ``*.jsonl`` / ``*.ndjson``: one JSON object per line with the same keys (blank lines are skipped; a line
  that is not a JSON object rejects the whole file, naming the line);
* a folder holding ``labels.csv`` and ``.txt`` files: ``labels.csv`` has a ``file`` column (the text file,
  relative to the folder), a label column (the spec's label name, or ``label``), optionally the spec's id
  column (or ``id``; default: the file name without ``.txt``), the patient id and subgroup columns.

Every entry of the batch, and every file a ``labels.csv`` row names, goes through
``ingestion.landing.confined_file`` before it is opened or even stat'ed: links, FIFOs, devices and names that
leave the batch are refused, never followed or read. A problem with one file rejects that file alone, as
(its batch-relative name, problem); a problem with a ``labels.csv`` row (a file that is missing or outside the
batch, an empty name or id) is reported against that ``labels.csv``, with the row number. Problems are plain
words that never quote the data: parser messages (csv, polars, pyarrow, json) can carry up to hundreds of
characters of a note, so they are mapped to "line 12: a quoted field is never closed" and the like.

Decoding: UTF-8, with or without a byte-order mark; anything else (Latin-1, UTF-16, ...) rejects the file
with the reason. A missing label column or an empty label means "unlabelled, to be scored" (label null);
labels are stored in ``specs.canonical_label`` form (JSON ``1`` or ``true``, CSV ``"1.0"`` -> ``"1"``).
Texts longer than ``MAX_TEXT_CHARS`` are truncated (counted in ``TextReadResult.truncated``).
``TextReadResult.files_read`` lists exactly the files whose content was read (a ``labels.csv`` and each
``.txt`` file it brought in count separately).

The raw text is never kept: each text is scrubbed (``deid.rules.scrub``) right after it is decoded; the records
only ever hold the scrubbed text. Texts shorter than ``spec.min_text_chars`` are kept for validation to judge.
A text whose scrubbing takes longer than ``MEDDIAG_DEID_SECONDS`` (default 5 s) is never stored unscrubbed:
its file is rejected, naming the row, and the rest of the batch flows on.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import polars as pl
from polars.exceptions import PanicException

from meddiag_pipelines.deid.rules import ScrubTimeout, scrub
from meddiag_pipelines.ingestion.errors import BatchRejected
from meddiag_pipelines.ingestion.landing import UnsafePath, batch_key, confined_file, display_name, is_data_file
from meddiag_pipelines.ingestion.tables import first_repeat, lf_line_endings, settled_types
from meddiag_pipelines.specs import ROW_ID, TaskSpec, canonical_label

MAX_TEXT_CHARS = 100_000
DEID_SECONDS_VARIABLE = "MEDDIAG_DEID_SECONDS"
DEFAULT_DEID_SECONDS = 5.0  # a 100,000-character note takes well under a second
# Scrub a little past the cut so that an identifier straddling it is still recognised whole.
_SCRUB_MARGIN = 512
LABELS_FILE = "labels.csv"
TABLE_SUFFIXES = {".csv", ".parquet", ".jsonl", ".ndjson"}
_MAX_ROW_PROBLEMS = 20  # row problems of one labels.csv spelled out in its rejection; the rest are counted


@dataclass
class TextReadResult:
    records: pl.DataFrame
    rejected: list[tuple[str, str]] = field(default_factory=list)
    truncated: int = 0  # texts cut to MAX_TEXT_CHARS
    files_read: list[str] = field(default_factory=list)


class _Reject(Exception):
    """One file (or one labels.csv row) cannot be used; the message is the problem, never the data."""


def deid_time_limit() -> float:
    """The seconds one text may take to de-identify: ``MEDDIAG_DEID_SECONDS``, else ``DEFAULT_DEID_SECONDS``."""
    raw = os.environ.get(DEID_SECONDS_VARIABLE, "").strip()
    if not raw:
        return DEFAULT_DEID_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise ValueError(f"{DEID_SECONDS_VARIABLE} must be a positive number of seconds, not {raw!r}")
    return seconds


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
        raise _Reject(
            "contains NUL bytes: it looks like UTF-16 (without a byte-order mark) or binary; re-save it as UTF-8"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        hint = " (it looks like UTF-16)" if data[:200].count(b"\x00") > 10 else " (Latin-1 / Windows-1252?)"
        raise _Reject(
            f"is not valid UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start}{hint}; re-save it as UTF-8"
        ) from None


def _read_bytes(path: Path, spec: TaskSpec) -> bytes:
    """The bytes of a confined file, opened without following a link and without blocking, so a FIFO swapped in
    after the check is refused rather than waited on; its size is checked before it is read."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise _Reject("is not a regular file; only regular files are read")
        if info.st_size > spec.landing.max_file_mb * 1024 * 1024:
            raise _Reject(f"is {info.st_size / 1024 / 1024:.1f} MB, over the {spec.landing.max_file_mb:g} MB limit")
        return fh.read()


def _text_value(value: Any, where: str) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a JSON "\ud800" escape: no store downstream can hold it
        raise _Reject(f"{where}: a value holds an invalid Unicode escape (a lone surrogate)") from None
    return text


def _label_value(value: Any, where: str) -> str | None:
    """A label in ``canonical_label`` form; NaN (a float column's missing value) is no label."""
    if isinstance(value, float) and math.isnan(value):
        return None
    return canonical_label(_text_value(value, where) if isinstance(value, str) else value)


class _Collector:
    """Builds scrubbed rows; the raw text never leaves ``make_row``."""

    def __init__(self, spec: TaskSpec, deid_seconds: float):
        self.spec = spec
        self.deid_seconds = deid_seconds
        self.columns = output_columns(spec)
        self.truncated = 0
        self.source = ""  # "<batch>/<file>" of the rows being made: the id of a row when the spec names none

    def make_row(self, get, where: str) -> dict[str, str | None]:
        """``get(name)`` returns a raw value or None; builds one scrubbed output row."""
        spec = self.spec
        rec_id = _text_value(get(spec.id), where)
        if rec_id is None and spec.id == ROW_ID:
            rec_id = f"{self.source}#{where}"
        if rec_id is None or not rec_id.strip():
            raise _Reject(f"{where}: the id column {spec.id!r} is empty")
        raw = _text_value(get(spec.text), where)
        text = None if raw is None else self._scrubbed(raw, where)
        row: dict[str, str | None] = {"id": rec_id.strip(), "label": _label_value(get(spec.label), where)}
        if spec.patient_id:
            pid = _text_value(get(spec.patient_id), where)
            row["patient_id"] = pid.strip() if pid and pid.strip() else None
        for g in spec.subgroups:
            if g not in row:
                v = _text_value(get(g), where)
                row[g] = v if v and v.strip() else None
        row["text"] = text
        return row

    def _scrubbed(self, raw: str, where: str) -> str:
        """``raw`` scrubbed (cut to ``MAX_TEXT_CHARS``); a text over the time limit rejects its file."""
        try:
            if len(raw) > MAX_TEXT_CHARS:
                text = scrub(raw[: MAX_TEXT_CHARS + _SCRUB_MARGIN], self.deid_seconds)[:MAX_TEXT_CHARS]
                self.truncated += 1
                return text
            return scrub(raw, self.deid_seconds)
        except ScrubTimeout:
            raise _Reject(
                f"{where}: its text took longer than {self.deid_seconds:g} s to de-identify, so it was not "
                f"stored ({DEID_SECONDS_VARIABLE} sets the limit)"
            ) from None


def _check_columns(columns: list[str], spec: TaskSpec) -> None:
    """Names the missing spec columns only: a file without a header row would show a note as its 'columns'."""
    missing = [c for c in (spec.id, spec.text) if c not in columns and c != ROW_ID]
    if missing:
        raise _Reject(f"lacks the column(s) {missing} (its header row has {len(columns)} columns)")


def _rows_from_table(df: pl.DataFrame, spec: TaskSpec, col: _Collector) -> list[dict]:
    _check_columns(df.columns, spec)
    if df.height == 0:
        raise _Reject("has a header but no rows")
    return [col.make_row(rec.get, f"row {i + 2}") for i, rec in enumerate(df.iter_rows(named=True))]


# The csv module's messages are fixed strings, but they are still mapped: the words say what to fix.
_CSV_PROBLEMS = (
    ("unexpected end of data", "a quoted field is never closed (truncated file?)"),
    ("expected after", "text follows a closing quote (a quote inside a quoted field must be doubled)"),
    ("new-line character seen in unquoted field", "a line break inside an unquoted field"),
    ("field larger than field limit", "a field is too long to check further"),
)


def csv_problem(text: str) -> str:
    """Where and why ``text`` is not a CSV table, in words that never quote it (polars' own message quotes up to
    hundreds of characters of the raw text around the fault)."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    width = None
    start = 1  # the line the current record starts on
    try:
        for row in reader:
            if width is None:
                width = len(row)
            elif len(row) > width:
                return f"line {start} has {len(row)} fields, the header row has {width}"
            start = reader.line_num + 1
    except csv.Error as exc:
        words = next((plain for key, plain in _CSV_PROBLEMS if key in str(exc)), "it cannot be split into fields")
        return f"line {start}: {words}"
    return "it cannot be split into rows and columns"


def _columns_read(spec: TaskSpec) -> set[str]:
    """The columns of a table whose values the reader uses."""
    return {c for c in (spec.id, spec.text, spec.label, spec.patient_id, *spec.subgroups) if c}


def _check_header(text: str, spec: TaskSpec) -> None:
    """Refuse a header that repeats a column name (Polars would rename the second one and the first would be used
    silently). The name is quoted only when it is one the reader looks for: a file without a header row would
    show a note as its 'columns'."""
    try:
        header = next(csv.reader(io.StringIO(text, newline="")), [])
    except csv.Error:
        return  # the table read says where the text is broken
    repeat = first_repeat(header)
    if repeat:
        first, i, name = repeat
        known = name in _columns_read(spec) or name in ("file", "label", "id")  # labels.csv's own names
        shown = f"the column name {name!r}" if known else f"the name of column {first}"
        raise _Reject(f"column {i} repeats {shown}: which of them to use is ambiguous; rename one")


def _csv_table(path: Path, spec: TaskSpec) -> pl.DataFrame:
    text = decode_utf8(_read_bytes(path, spec))
    if not text.strip():
        raise _Reject("is empty")
    text = lf_line_endings(text)
    _check_header(text, spec)
    try:
        return pl.read_csv(io.StringIO(text), infer_schema=False, truncate_ragged_lines=False)
    except (Exception, PanicException):  # polars raises several types, all quoting the text near the fault
        raise _Reject(f"is not a readable CSV: {csv_problem(text)}") from None


def _read_csv(path: Path, spec: TaskSpec, col: _Collector) -> list[dict]:
    return _rows_from_table(_csv_table(path, spec), spec, col)


def _read_parquet(path: Path, spec: TaskSpec, col: _Collector) -> list[dict]:
    data = _read_bytes(path, spec)
    if not data:
        raise _Reject("is empty")
    try:
        df = pl.read_parquet(io.BytesIO(data))
    except (Exception, PanicException):  # the message may quote metadata or values of the file
        raise _Reject("is not a readable Parquet file (damaged, truncated, or not Parquet)") from None
    used = df.select(c for c in df.columns if c in _columns_read(spec))
    try:  # binary text decoded as UTF-8 (never shown as "b'...'"), other types as the tabular reader reads them
        df = df.with_columns(settled_types(used, spec, path.name).get_columns())
    except BatchRejected as exc:
        raise _Reject(exc.problem) from None
    return _rows_from_table(df, spec, col)


# json's messages are fixed strings too; mapped for the same reason as the csv ones.
_JSON_PROBLEMS = (
    ("Unterminated string", "a string is never closed"),
    ("Invalid control character", "a raw control character inside a string"),
    ("Invalid \\escape", "an invalid backslash escape"),
    ("Expecting property name", "an object key is not a double-quoted string"),
    ("Expecting ','", "a comma is missing"),
    ("Expecting ':'", "a colon is missing"),
    ("Expecting value", "a value is missing or malformed"),
    ("Extra data", "more than one JSON value on the line"),
)


def _json_line(line: str, lineno: int) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        words = next((plain for key, plain in _JSON_PROBLEMS if exc.msg.startswith(key)), "it cannot be parsed")
        raise _Reject(f"line {lineno} is not valid JSON: {words} (column {exc.colno})") from None
    except RecursionError:
        raise _Reject(f"line {lineno} is nested too deeply to read") from None
    except ValueError:  # e.g. an integer over Python's digit limit
        raise _Reject(f"line {lineno} is not valid JSON: a number is too long to read") from None


def _read_jsonl(path: Path, spec: TaskSpec, col: _Collector) -> list[dict]:
    text = decode_utf8(_read_bytes(path, spec))
    if not text.strip():
        raise _Reject("is empty")
    out = []
    # JSON Lines are split on "\n" only: str.splitlines would also split inside strings at U+2028 and the like.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        obj = _json_line(line, lineno)
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


_READERS = {".csv": _read_csv, ".parquet": _read_parquet, ".jsonl": _read_jsonl, ".ndjson": _read_jsonl}


def _entries(batch_dir: Path) -> list[str]:
    """Every data entry of the batch that is not a folder (regular files, links, FIFOs, ...), batch-relative.
    Nothing is opened here (a FIFO cannot block a listing); each entry is confined before any use."""
    found = []
    for p in batch_dir.rglob("*"):
        rel = p.relative_to(batch_dir)
        if is_data_file(rel) and (p.is_symlink() or not p.is_dir()):
            found.append(rel.as_posix())
    return sorted(found)


def _row_problems(problems: list[str]) -> str:
    shown = "; ".join(problems[:_MAX_ROW_PROBLEMS])
    more = f" (and {len(problems) - _MAX_ROW_PROBLEMS} more)" if len(problems) > _MAX_ROW_PROBLEMS else ""
    return f"{len(problems)} rows cannot be used: {shown}{more}"


class _BatchReader:
    """One pass over one batch folder: every row enters through the file it was read from."""

    def __init__(self, batch_dir: Path, spec: TaskSpec, deid_seconds: float):
        self.batch_dir, self.spec = batch_dir, spec
        self.col = _Collector(spec, deid_seconds)
        self.entries = _entries(batch_dir)
        self.listed = set(self.entries)
        self.rows: list[dict] = []
        self.rejected: list[tuple[str, str]] = []
        self.files_read: list[str] = []
        self.claimed: set[str] = set()  # .txt files a labels.csv row took (read or rejected as themselves)

    def run(self) -> TextReadResult:
        labels = [rel for rel in self.entries if PurePosixPath(rel).name == LABELS_FILE]
        for rel in labels:
            self._file(rel, self._txt_folder)
        for rel in self.entries:
            if rel not in self.claimed and rel not in labels:
                self._file(rel, self._table)
        schema = {c: pl.String for c in self.col.columns}
        records = pl.DataFrame(self.rows, schema=schema, orient="row") if self.rows else empty_records(self.spec)
        return TextReadResult(records, self.rejected, self.col.truncated, self.files_read)

    def _reject(self, rel: str, problem: str) -> None:
        self.rejected.append((rel, f"{display_name(rel)}: {problem}"))

    def _file(self, rel: str, read: Callable[[str], list[dict]]) -> None:
        """Read one file; any problem rejects that file alone, in words that never quote its content."""
        truncated = self.col.truncated
        self.col.source = f"{batch_key(self.batch_dir)}/{rel}"
        try:
            rows = read(rel)
        except (_Reject, UnsafePath) as exc:
            problem = str(exc)
        except OSError as exc:
            problem = f"cannot be read ({exc.strerror or type(exc).__name__})"
        except (Exception, PanicException) as exc:  # unforeseen: its message may quote the file, its type cannot
            problem = f"could not be read ({type(exc).__name__})"
        else:
            self.rows += rows
            self.files_read.append(rel)
            return
        self.col.truncated = truncated
        self._reject(rel, problem)

    def _table(self, rel: str) -> list[dict]:
        path = confined_file(self.batch_dir, rel)
        suffix = PurePosixPath(rel).suffix.lower()
        if suffix == ".txt":
            raise _Reject(
                f"is a .txt file that no readable {LABELS_FILE} names (a folder of .txt files needs a {LABELS_FILE})"
            )
        if suffix not in _READERS:
            raise _Reject(
                f"has an unsupported format {suffix or '(no extension)'!r}; use CSV, Parquet, JSONL or "
                f".txt files + {LABELS_FILE}"
            )
        return _READERS[suffix](path, self.spec, self.col)

    def _txt_folder(self, labels_rel: str) -> list[dict]:
        """The .txt files one labels.csv names, each read (or rejected) as its own file; the labels.csv itself
        brings no rows. Row problems are collected into one rejection of the labels.csv."""
        table = _csv_table(confined_file(self.batch_dir, labels_rel), self.spec)
        if "file" not in table.columns:
            raise _Reject(f"lacks the 'file' column (its header row has {len(table.columns)} columns)")
        if table.height == 0:
            raise _Reject("has a header but no rows")
        spec = self.spec
        label_col = spec.label if spec.label in table.columns else "label"
        id_col = spec.id if spec.id in table.columns else ("id" if "id" in table.columns else None)
        folder = PurePosixPath(labels_rel).parent
        problems = []
        for i, rec in enumerate(table.iter_rows(named=True), start=2):
            try:
                self._listed_txt(folder, rec, i, label_col, id_col)
            except _Reject as exc:
                problems.append(f"row {i} {exc}")
        if problems:
            self._reject(labels_rel, _row_problems(problems))
        return []

    def _listed_txt(self, folder: PurePosixPath, rec: dict, i: int, label_col: str, id_col: str | None) -> None:
        """One labels.csv row: its .txt file is read as that file; raise ``_Reject`` for a problem of the row."""
        name = (rec.get("file") or "").strip()
        if not name:
            raise _Reject("has no file name")
        rel = (folder / name).as_posix()
        if rel not in self.listed:
            try:  # the reason: outside the batch, a link, missing...; the named path is never touched
                confined_file(self.batch_dir, rel)
            except UnsafePath as exc:
                raise _Reject(f"names a file that cannot be used: {exc}") from None
            raise _Reject("names a hidden or marker file (names starting with '.' or '_' are never read)")
        if rel in self.claimed:
            raise _Reject("names a file an earlier row already names")
        if PurePosixPath(rel).suffix.lower() != ".txt":
            raise _Reject("names a file that is not a .txt file")
        if id_col and not (rec.get(id_col) or "").strip():
            raise _Reject(f"has an empty {id_col!r}")
        self.claimed.add(rel)
        values: dict[str, Any] = dict(rec)
        values[self.spec.id] = rec.get(id_col) if id_col else PurePosixPath(rel).stem
        values[self.spec.label] = rec.get(label_col)

        def read(txt_rel: str) -> list[dict]:
            values[self.spec.text] = decode_utf8(_read_bytes(confined_file(self.batch_dir, txt_rel), self.spec))
            return [self.col.make_row(values.get, f"{LABELS_FILE} row {i}")]

        self._file(rel, read)


def read_text_batch(batch_dir: Path, spec: TaskSpec, deid_seconds: float | None = None) -> TextReadResult:
    """Read every supported file of one batch folder; unusable files are listed in ``rejected``. ``deid_seconds``:
    the time limit of one text's scrubbing (None: ``deid_time_limit()``)."""
    return _BatchReader(Path(batch_dir), spec, deid_time_limit() if deid_seconds is None else deid_seconds).run()
