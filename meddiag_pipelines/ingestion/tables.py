"""Read one CSV or Parquet file into a Polars frame, or reject it with a reason: the table reading the
tabular, text and image readers share (the image readers' ``labels.csv``).

Hostile input never crashes ingestion: every problem a file can have becomes a :class:`BatchRejected` that
names the file and the problem, and never quotes a cell (it may be an identifier).

Encodings (the choice, documented in the README): CSV must be text whose encoding is known without guessing.
UTF-8 is read as is; a byte-order mark is honoured (UTF-8, UTF-16 and UTF-32 with a BOM are decoded). Any
other bytes (Latin-1, Windows-1252, UTF-16 without a BOM) are refused with the offset of the first byte that is
not UTF-8: guessing a legacy code page could silently corrupt names and codes, so the exporter must re-export.

Column types (the choice, documented in the README): later steps and batches meet four only, numbers (Float64),
text, true/false and all-null. A Parquet duration becomes seconds; binary values become UTF-8 text, and a column
that is not UTF-8 refuses its file; dates, times, categoricals and any other flat type become the text a CSV
would hold (:func:`settled_types`); nested values (lists, structs) refuse their file. Each file is read once into
memory and parsed from those bytes, which must match the digest taken when the batch was listed (a file still
being written is refused). Line endings may be LF, CRLF or CR alone.

Column names must be distinct ignoring case (DuckDB folds case) and outside the pipeline's internal namespace.
A file without a header row has a row of data where the names should be, so problems with names are told by
position, never by the name.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import re
import unicodedata
from collections.abc import Callable
from pathlib import Path

import polars as pl

from meddiag_pipelines.ingestion.errors import BatchRejected
from meddiag_pipelines.ingestion.landing import LandedBatch, UnsafePath, confined_file, display_name
from meddiag_pipelines.ingestion.warehouse import dtype_words
from meddiag_pipelines.specs import INTERNAL_PREFIX, TaskSpec

READERS = {".csv": "csv", ".parquet": "parquet"}
MAX_COLUMNS = 1000  # a wider export is almost certainly wrong, and each column costs a warehouse column for ever
MAX_COLUMN_NAME_CHARS = 256
PARQUET_MAX_EXPANSION = 8  # decoded Parquet may be this many times landing.max_file_mb (decompression-bomb guard)
_BOMS = [  # longest first: the UTF-32-LE mark starts with the UTF-16-LE one
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
]
_OTHER_DELIMITERS = (";", "\t", "|")
_LONE_CR = re.compile(r"\r(?!\n)")
_DURATION_UNITS = {"ms": 1e3, "us": 1e6, "ns": 1e9}  # Polars durations: integer counts of these per second


def check_file(batch: LandedBatch, rel: str, max_file_mb: float) -> Path:
    """Refuse undecodable names, anything :func:`confined_file` refuses and oversized files before anything is parsed."""
    shown = display_name(rel)
    if shown != rel:
        raise BatchRejected(shown, "has a file name that is not valid UTF-8; rename it")
    try:
        path = confined_file(batch.path, rel)
    except UnsafePath as exc:
        raise BatchRejected(rel, f"is refused: {exc}") from None
    size_mb = path.stat().st_size / 2**20
    if size_mb > max_file_mb:
        raise BatchRejected(rel, f"is {size_mb:.1f} MB, over the limit of {max_file_mb} MB (landing.max_file_mb)")
    return path


def _decode(raw: bytes, rel: str) -> str:
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            try:
                return raw[len(bom) :].decode(encoding)
            except UnicodeDecodeError as exc:
                raise BatchRejected(
                    rel,
                    f"starts with a {encoding.upper()} byte-order mark but byte {exc.start + len(bom)} "
                    "is not valid in that encoding (truncated or mixed encodings?)",
                ) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        hint = " (it looks like UTF-16 without a byte-order mark)" if b"\0" in raw[:4096] else ""
        raise BatchRejected(
            rel,
            f"is not UTF-8 text: byte {exc.start} is invalid{hint}. Re-export it as UTF-8 "
            "(Latin-1 and other code pages are not guessed)",
        ) from exc
    if "\0" in text:
        raise BatchRejected(rel, "holds NUL characters; it is not a text CSV (UTF-16 without a byte-order mark?)")
    return text


def lf_line_endings(text: str) -> str:
    """CSV text with every line ending as LF: an export that ends lines with CR alone (classic Mac) is otherwise
    one long header line to Polars, which splits rows on LF only (the csv module splits on both). Text without
    a lone CR is returned as is."""
    if _LONE_CR.search(text) is None:
        return text
    return text.replace("\r\n", "\n").replace("\r", "\n")


def check_case_distinct(names: list[str], rel: str) -> None:
    """DuckDB (the warehouse) folds the case of column names: ``Age`` and ``age`` would be one column there."""
    repeat = first_repeat(names, key=str.casefold)
    if repeat:
        first, i, _ = repeat
        raise BatchRejected(
            rel,
            f"columns {first} and {i} (in order of appearance) have names that differ only "
            "in case; the warehouse cannot hold both (rename one)",
        )


def first_repeat(names: list[str], key: Callable[[str], str] = str) -> tuple[int, int, str] | None:
    """The first column whose name (compared by ``key``) an earlier column has: the positions (from 1) of the
    earlier and the repeating column, and the repeated name. Readers would rename or pick one of the two
    silently."""
    seen: dict[str, int] = {}
    for i, name in enumerate(names, start=1):
        first = seen.setdefault(key(name), i)
        if first != i:
            return first, i, name
    return None


def _check_columns(names: list[str], rel: str) -> None:
    if len(names) > MAX_COLUMNS:
        raise BatchRejected(rel, f"has {len(names)} columns, over the limit of {MAX_COLUMNS}")
    for i, name in enumerate(names, start=1):
        if not name.strip():
            raise BatchRejected(rel, f"column {i} has an empty name")
        if len(name) > MAX_COLUMN_NAME_CHARS or any(unicodedata.category(ch) in ("Cc", "Cs") for ch in name):
            raise BatchRejected(rel, f"column {i} has a name that is too long or holds control characters")
        if name.casefold().startswith(INTERNAL_PREFIX):
            raise BatchRejected(
                rel,
                f"column {i} has a name in the pipeline's reserved namespace {INTERNAL_PREFIX!r} "
                "(its own columns); rename it",
            )
    repeat = first_repeat(names)
    if repeat:  # by position: in a file without a header row the names are a row of data
        first, i, _ = repeat
        raise BatchRejected(rel, f"column {i} repeats the name of column {first}")
    check_case_distinct(names, rel)


def _check_csv_shape(text: str, rel: str) -> list[str]:
    """The header, once every row has as many fields as it: a short last row is a truncated file, a short or
    long row elsewhere a broken export; either would silently shift or drop values."""
    csv.field_size_limit(2**31 - 1)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise BatchRejected(rel, "holds no header line")
        if len(header) == 1:
            found = [d for d in _OTHER_DELIMITERS if d in header[0]]
            if found:
                raise BatchRejected(
                    rel,
                    f"has a single column whose name holds {found[0]!r}: the file looks "
                    f"delimited by {found[0]!r}, not by commas; re-export it as comma-separated",
                )
        _check_columns(header, rel)
        for row in reader:
            if row and len(row) != len(header):
                line = reader.line_num
                last = not any(rest for rest in reader)
                if last and len(row) < len(header):
                    raise BatchRejected(
                        rel,
                        f"its last row (line {line}) has {len(row)} fields where the header "
                        f"has {len(header)}: the file looks truncated",
                    )
                raise BatchRejected(rel, f"line {line} has {len(row)} fields where the header has {len(header)}")
    except csv.Error as exc:
        # The csv module's message names the problem (e.g. an unterminated quote), never a value.
        raise BatchRejected(
            rel,
            f"is not well-formed CSV at line {reader.line_num}: {exc} "
            "(an unterminated quote at the end usually means a truncated file)",
        ) from exc
    return header


def polars_problem(exc: BaseException) -> str:
    """A short, value-free description of a Polars/Arrow read failure (their messages may quote cells)."""
    message = str(exc).split("\n", 1)[0]
    known = {
        "out of specification": "not a complete Parquet file (truncated or corrupt)",
        "PAR1": "not a complete Parquet file (truncated or corrupt)",
        "more fields than defined": "a row has more fields than the header",
        "invalid utf-8": "text that is not valid UTF-8",
    }
    for needle, problem in known.items():
        if needle.lower() in message.lower():
            return problem
    return f"{type(exc).__name__}"


def _read_csv(raw: bytes, rel: str, text_columns: list[str]) -> pl.DataFrame:
    text = _decode(raw, rel)
    if not text.strip():
        raise BatchRejected(rel, "holds only whitespace")
    text = lf_line_endings(text)
    header = _check_csv_shape(text, rel)
    as_text = {c: pl.String for c in text_columns if c in header}
    return pl.read_csv(
        io.BytesIO(text.encode("utf-8")), infer_schema_length=None, raise_if_empty=True, schema_overrides=as_text
    )


def _read_parquet(raw: bytes, rel: str, max_file_mb: float) -> pl.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if raw[:4] != b"PAR1" or raw[-4:] != b"PAR1":
        raise BatchRejected(rel, "cannot be read as parquet: the PAR1 markers are missing (truncated or corrupt)")
    parquet = pq.ParquetFile(pa.BufferReader(raw))
    meta = parquet.metadata
    if meta.num_columns > MAX_COLUMNS:
        raise BatchRejected(rel, f"has {meta.num_columns} columns, over the limit of {MAX_COLUMNS}")
    # Decode in slices and stop at the limit: dictionary and run-length encoding let a small file declare
    # a small "uncompressed" size yet decode to gigabytes, so the metadata alone cannot be trusted.
    limit = max_file_mb * PARQUET_MAX_EXPANSION * 2**20
    decoded, slices = 0, []
    for piece in parquet.iter_batches(batch_size=65_536):
        decoded += piece.nbytes
        if decoded > limit:
            raise BatchRejected(
                rel,
                f"decodes to more than {limit / 2**20:.1f} MB ({PARQUET_MAX_EXPANSION} x "
                "landing.max_file_mb): refused as a decompression bomb",
            )
        slices.append(piece)
    _check_columns(parquet.schema_arrow.names, rel)  # before Polars, which refuses a repeated name unnamed
    table = pa.Table.from_batches(slices, schema=parquet.schema_arrow)
    try:
        frame = pl.from_arrow(table)
    except (Exception, pl.exceptions.PanicException) as exc:
        raise BatchRejected(
            rel, _unreadable_column(table) or f"cannot be read as parquet: {polars_problem(exc)}"
        ) from exc
    if not isinstance(frame, pl.DataFrame):
        raise BatchRejected(rel, "cannot be read as parquet: it holds no table")
    nested = [c for c, t in frame.schema.items() if t.is_nested() or t == pl.Object]
    if nested:
        raise BatchRejected(
            rel, f"column {nested[0]!r} holds nested values ({frame.schema[nested[0]]}); only flat columns are accepted"
        )
    return frame


def _unreadable_column(table) -> str | None:
    """Which column of an Arrow table Polars cannot take, and its type (e.g. decimal256), in plain words."""
    for field in table.schema:
        try:
            pl.from_arrow(table.select([field.name]))
        except (Exception, pl.exceptions.PanicException):
            return f"column {field.name!r} has the Arrow type {field.type}, which cannot be read; re-export it as numbers or text"
    return None


def _read_once(path: Path, rel: str, max_file_mb: float, digest: str | None) -> bytes:
    """The file's bytes, read once: what is parsed is what was hashed. ``digest`` (its SHA-256 when the batch was
    listed, as :func:`file_digest` computes it): a file that differs now was still being written."""
    limit = max_file_mb * 2**20
    with open(path, "rb") as fh:
        raw = fh.read(int(limit) + 1 if limit != float("inf") else -1)
    if len(raw) > limit:
        raise BatchRejected(rel, f"grew over the limit of {max_file_mb} MB (landing.max_file_mb) while it was read")
    if digest is not None and hashlib.sha256(raw).hexdigest() != digest:
        raise BatchRejected(
            rel,
            "changed after the batch was listed (its bytes differ from the digest recorded "
            "then): it was still being written; land the batch again once it is complete",
        )
    return raw


def read_table_file(
    path: Path, rel: str, text_columns: list[str] = (), max_file_mb: float = float("inf"), digest: str | None = None
) -> pl.DataFrame:
    """One CSV or Parquet file as a frame, or :class:`BatchRejected`; ``text_columns`` are read as text (CSV);
    ``digest``: see :func:`_read_once`."""
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise BatchRejected(rel, f"unsupported file type {path.suffix!r}; expected one of {sorted(READERS)}")
    raw = _read_once(path, rel, max_file_mb, digest)
    if not raw:
        raise BatchRejected(rel, "is empty (zero bytes)")
    try:
        frame = _read_csv(raw, rel, text_columns) if kind == "csv" else _read_parquet(raw, rel, max_file_mb)
    except BatchRejected:
        raise
    except (Exception, pl.exceptions.PanicException) as exc:  # Polars may even panic; each becomes a reason
        raise BatchRejected(rel, f"cannot be read as {kind}: {polars_problem(exc)}") from exc
    if frame.height == 0:
        raise BatchRejected(rel, "holds a header but no rows")
    return frame


def settled_types(frame: pl.DataFrame, spec: TaskSpec, rel: str) -> pl.DataFrame:
    """Every column as a number, text, true/false or all-null, whatever type a Parquet writer gave it, so that
    later steps and batches meet these four only: durations become seconds; binary values UTF-8 text (refused
    if they are not); dates, times, categoricals and any other flat type the text a CSV would hold (a date is
    then text, judged as such by the feature step)."""
    casts = []
    for column, dtype in frame.schema.items():
        if dtype.is_numeric() or dtype in (pl.String, pl.Boolean, pl.Null):
            continue
        if isinstance(dtype, pl.Duration):
            casts.append(pl.col(column).cast(pl.Int64).cast(pl.Float64) / _DURATION_UNITS[dtype.time_unit])
            continue
        if column in spec.numeric and dtype.is_temporal():  # Polars would cast a date to a count of days
            raise BatchRejected(rel, f"column {column!r} is declared numeric but holds {dtype_words(dtype)} ({dtype})")
        try:
            frame[column].cast(pl.String, strict=True)
        except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as exc:
            what = (
                "binary values that are not UTF-8 text"
                if dtype == pl.Binary
                else f"values of type {dtype} that are not text"
            )
            raise BatchRejected(
                rel,
                f"column {column!r} holds {what}; only numbers, text and true/false values are "
                "read (re-export the column as text)",
            ) from exc
        casts.append(pl.col(column).cast(pl.String))
    return frame.with_columns(casts) if casts else frame
