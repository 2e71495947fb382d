"""The layout of a labels batch: a landed batch whose files (CSV or Parquet) hold only the task's id and label
columns gives the outcomes of cases already scored. Ingestion recognises it here and records it apart from
records (``ingestion.batches``); ``monitoring.labels`` joins it to the predictions. Errors name the file and the
problem, never an id or a label value.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

LABEL_FILES = (".csv", ".parquet")


class LabelsError(ValueError):
    pass


def is_labels_batch(columns: list[str], id_column: str, label_column: str) -> bool:
    """A file (or batch) holding exactly the id and label columns: outcomes for cases already scored."""
    return set(columns) == {id_column, label_column}


def file_columns(path: Path) -> list[str] | None:
    """The columns of a CSV or Parquet file, read from its header alone; ``None`` for another file, or one whose
    header cannot be read (the records reader then says why)."""
    suffix = path.suffix.lower()
    if suffix not in LABEL_FILES or path.is_symlink() or not path.is_file():
        return None  # links and special files are the records reader's to refuse, never opened here
    try:
        if suffix == ".csv":
            return pl.read_csv(path, n_rows=0, infer_schema=False).columns
        return list(pl.read_parquet_schema(path))
    except (pl.exceptions.PolarsError, OSError, TypeError, ValueError):  # TypeError: a name polars cannot take
        return None
    return None


def is_labels_files(files: list[Path], id_column: str, label_column: str) -> bool:
    """Every file of a landed batch holds only the id and label columns: a labels batch, not records."""
    return bool(files) and all(is_labels_batch(file_columns(f) or [], id_column, label_column) for f in files)


def _read_file(path: Path) -> pl.DataFrame:
    try:
        if path.suffix.lower() == ".csv":
            return pl.read_csv(path, infer_schema=False)  # every column as text: ids keep their leading zeros
        return pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as err:
        kind = path.suffix.lstrip(".")
        raise LabelsError(f"{path.name}: not a readable {kind} file ({type(err).__name__})") from None


def read_labels_batch(files: list[Path], id_column: str, label_column: str) -> pl.DataFrame:
    """``id`` and ``label`` (strings) of every file of a labels batch. Refuses a file with other columns, an empty
    id or label, or an id given two different labels."""
    frames = []
    for path in sorted(files):
        if path.suffix.lower() not in LABEL_FILES:
            raise LabelsError(f"{path.name}: a labels batch holds CSV or Parquet files only")
        frame = _read_file(path)
        if not is_labels_batch(frame.columns, id_column, label_column):
            raise LabelsError(
                f"{path.name}: a labels file holds exactly the columns {id_column!r} and "
                f"{label_column!r}; it has {len(frame.columns)} column(s)"
            )
        frame = frame.select(
            pl.col(id_column).cast(pl.String).str.strip_chars().alias("id"),
            pl.col(label_column).cast(pl.String).str.strip_chars().alias("label"),
        )
        blank = frame.filter(pl.col("id").fill_null("").eq("") | pl.col("label").fill_null("").eq("")).height
        if blank:
            raise LabelsError(f"{path.name}: {blank} row(s) have an empty id or label")
        frames.append(frame)
    if not frames:
        raise LabelsError("a labels batch without any CSV or Parquet file")
    labels = pl.concat(frames).unique()
    conflicting = labels.filter(pl.col("id").is_duplicated())["id"].n_unique()
    if conflicting:
        raise LabelsError(f"labels batch: {conflicting} id(s) are given two different labels")
    return labels
