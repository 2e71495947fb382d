"""A batch folder's files: paths confined to the batch, the walk over it, ``labels.csv`` and the list of images
to read with each one's metadata (shared by the folder and DICOM readers)."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import polars as pl

from meddiag_pipelines.imaging.readers.records import _MB, ImageBatchError, ImageRejected, _image_spec, _mb
from meddiag_pipelines.ingestion.landing import UnsafePath, confined_file
from meddiag_pipelines.ingestion.tables import first_repeat, lf_line_endings
from meddiag_pipelines.specs import INTERNAL_PREFIX, canonical_label

if TYPE_CHECKING:
    from meddiag_pipelines.specs import TaskSpec

LABELS_CSV = "labels.csv"


def safe_path(batch_dir: Path, rel: str) -> Path:
    """The file ``rel`` inside ``batch_dir``; raises :class:`ImageRejected` if it would escape it."""
    try:
        return confined_file(batch_dir, rel)
    except UnsafePath as exc:
        raise ImageRejected(str(exc)) from None


def _image_file(batch_dir: Path, rel: str, spec: TaskSpec) -> Path:
    """:func:`safe_path`, and refused when larger on disk than ``landing.max_file_mb``."""
    path = safe_path(batch_dir, rel)
    size = path.lstat().st_size
    if size > spec.landing.max_file_mb * _MB:
        raise ImageRejected(f"file is {_mb(size)} on disk, over landing.max_file_mb ({spec.landing.max_file_mb:g} MB)")
    return path


def normalise_rel(rel: str) -> str:
    """A labels.csv path in the form the batch listing uses: ``./x.png`` -> ``x.png``, ``a//b`` -> ``a/b``."""
    return PurePosixPath(rel).as_posix() if rel else rel


def walk_files(batch_dir: Path) -> Iterator[tuple[str, Path]]:
    """Every entry under the batch folder (links not followed), as (relative posix path, path)."""
    for path in sorted(batch_dir.rglob("*")):
        rel = path.relative_to(batch_dir).as_posix()
        if any(part.startswith((".", "_")) for part in PurePosixPath(rel).parts):
            continue  # hidden files, landing markers such as _READY / _ingested
        if path.is_symlink() or path.is_file():
            yield rel, path


def _read_labels(batch_dir: Path, spec: TaskSpec) -> pl.DataFrame | None:
    """The batch's labels.csv as text columns (None when there is none); confined before it is opened."""
    if not os.path.lexists(batch_dir / LABELS_CSV):
        return None
    try:
        path = confined_file(batch_dir, LABELS_CSV)
    except UnsafePath as exc:
        raise ImageBatchError(f"{LABELS_CSV}: {exc}") from None
    try:
        text = lf_line_endings(path.read_bytes().decode("utf-8-sig"))
        _check_labels_header(text)
        df = pl.read_csv(io.StringIO(text), infer_schema=False)
    except ImageBatchError:
        raise
    except Exception as exc:  # noqa: BLE001 - polars raises several kinds; its message can quote the file
        raise ImageBatchError(f"{LABELS_CSV}: not a readable CSV file (bad quoting, encoding or row lengths)") from exc
    file_col = (spec.image or spec.volume or _image_spec(spec)).file_column  # volume: the series folder or file
    if file_col not in df.columns:
        # Its first row is then likely data (a file without a header row): its values are never quoted.
        named = ", ".join(dict.fromkeys(c for c in (file_col, spec.label) if c))
        raise ImageBatchError(
            f"{LABELS_CSV} has no header row with the columns {named}: its first row does not "
            f"name the file column {file_col!r} ({'volume' if spec.volume else 'image'}.file_column; the row's "
            f"{len(df.columns)} values are not shown)"
        )
    internal = [c for c in df.columns if c.startswith(INTERNAL_PREFIX)]
    if internal:
        raise ImageBatchError(
            f"{LABELS_CSV}: {len(internal)} columns use the pipeline's reserved prefix "
            f"{INTERNAL_PREFIX!r} (rename them)"
        )
    return df.with_columns(pl.col(c).str.strip_chars().replace("", None) for c in df.columns)


def _check_labels_header(text: str) -> None:
    """A repeated column name would be renamed by Polars and one of the two used silently. Told by position: in a
    file without a header row the names are a row of data."""
    header = next(csv.reader(io.StringIO(text)), [])
    repeat = first_repeat(header)
    if repeat:
        first, i, _ = repeat
        raise ImageBatchError(
            f"{LABELS_CSV}: column {i} repeats the name of column {first}; "
            "which of them to use is ambiguous (rename one)"
        )


def _row_meta(row: dict, rel: str, spec: TaskSpec) -> dict:
    meta = {
        "id": row.get(spec.id) or rel,
        "label": canonical_label(row.get(spec.label)),
        "patient_id": row.get(spec.patient_id) if spec.patient_id else None,
    }
    for col in spec.subgroups:
        meta[col] = row.get(col)
    return meta


def _listed_files(
    batch_dir: Path, spec: TaskSpec, suffixes: set[str] | None, labels: pl.DataFrame | None
) -> tuple[list[tuple[str, dict]], list[tuple[str, str]]]:
    """(relative file, metadata) for every image to read, and the rejections found on the way.

    ``suffixes`` names the image files of the format (None: any file but labels.csv). Every row's path is
    confined before it is used; a rejection names the file when the batch holds it, else the labels.csv row
    (its number, never its content)."""
    rejected: list[tuple[str, str]] = []
    todo: list[tuple[str, dict]] = []
    present = dict(walk_files(batch_dir))

    def is_image(rel: str) -> bool:
        if rel == LABELS_CSV:
            return False
        return suffixes is None or PurePosixPath(rel).suffix.lower() in suffixes

    if labels is None:
        for rel, path in present.items():
            if not is_image(rel):
                continue
            if path.is_symlink():
                rejected.append((rel, "symbolic link refused"))
                continue
            todo.append((rel, _row_meta({}, rel, spec)))
        return todo, rejected

    file_col = (spec.image or spec.volume or _image_spec(spec)).file_column  # volume: the series folder or file
    seen_ids: set[str] = set()
    listed: set[str] = set()
    for n, row in enumerate(labels.iter_rows(named=True), start=1):
        where = f"{LABELS_CSV} row {n}"
        rel = normalise_rel(row.get(file_col) or "")
        if not rel:
            rejected.append((where, f"empty {file_col!r} column"))
            continue
        try:
            safe_path(batch_dir, rel)
        except ImageRejected as exc:
            if rel in present:  # a link or odd file of the batch: rejected under its own name
                listed.add(rel)
            rejected.append((rel if rel in present else where, str(exc)))
            continue
        listed.add(rel)
        meta = _row_meta(row, rel, spec)
        if meta["id"] in seen_ids:
            rejected.append((rel, f"duplicate id in {LABELS_CSV} (only the first row is used)"))
            continue
        seen_ids.add(meta["id"])
        todo.append((rel, meta))
    for rel in present:
        if is_image(rel) and rel not in listed:
            rejected.append((rel, f"image file not listed in {LABELS_CSV}"))
    return todo, rejected
