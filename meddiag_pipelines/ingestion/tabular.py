"""Read one tabular batch (CSV and Parquet files) into one Polars frame, or reject it with a reason."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from meddiag_pipelines.ingestion.errors import BatchRejected
from meddiag_pipelines.ingestion.landing import LandedBatch
from meddiag_pipelines.specs import TaskSpec

READERS = {".csv": "csv", ".parquet": "parquet"}


def check_file(batch: LandedBatch, rel: str, max_file_mb: float) -> Path:
    """Refuse links, paths leaving the batch and oversized files before anything is parsed."""
    path = batch.path / rel
    if path.is_symlink():
        raise BatchRejected(rel, "is a symbolic link; landing files must be regular files")
    if not path.resolve().is_relative_to(batch.path.resolve()):
        raise BatchRejected(rel, "resolves outside its batch folder")
    size_mb = path.stat().st_size / 2**20
    if size_mb > max_file_mb:
        raise BatchRejected(rel, f"is {size_mb:.1f} MB, over the limit of {max_file_mb} MB (landing.max_file_mb)")
    return path


def _read_file(path: Path, rel: str) -> pl.DataFrame:
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise BatchRejected(rel, f"unsupported file type {path.suffix!r}; expected one of {sorted(READERS)}")
    if path.stat().st_size == 0:
        raise BatchRejected(rel, "is empty (zero bytes)")
    try:
        if kind == "csv":
            frame = pl.read_csv(path, infer_schema_length=None, raise_if_empty=True)
        else:
            frame = pl.read_parquet(path)
    except Exception as exc:  # polars raises several error types; each becomes a reason, never a crash
        raise BatchRejected(rel, f"cannot be read as {kind}: {type(exc).__name__}: {str(exc)[:300]}") from exc
    if frame.height == 0:
        raise BatchRejected(rel, "holds a header but no rows")
    return frame


def _as_float(frame: pl.DataFrame, column: str, rel: str) -> pl.Expr:
    if frame.schema[column] == pl.Null or frame.schema[column].is_numeric():
        return pl.col(column).cast(pl.Float64)
    try:
        frame[column].cast(pl.Float64, strict=True)
    except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as exc:
        raise BatchRejected(rel, f"column {column!r} is declared numeric but holds {frame.schema[column]} values "
                                 "that are not numbers") from exc  # fmt: skip
    return pl.col(column).cast(pl.Float64)


def normalise(frame: pl.DataFrame, spec: TaskSpec, rel: str) -> pl.DataFrame:
    """Key columns as text; declared-numeric and all numeric columns as Float64 (so batches agree whether a
    column came as integers or decimals); empty labels as null (cases to score); 'not recorded' codes as null."""
    keys = [c for c in (spec.id, spec.label, spec.patient_id, *spec.subgroups) if c and c in frame.columns]
    frame = frame.with_columns(pl.col(c).cast(pl.String).str.strip_chars() for c in keys)
    numeric = [c for c in frame.columns if c not in keys and (c in spec.numeric or frame.schema[c].is_numeric())]
    frame = frame.with_columns(_as_float(frame, c, rel) for c in numeric)
    if spec.label in frame.columns:
        frame = frame.with_columns(
            pl.when(pl.col(spec.label) == "").then(None).otherwise(pl.col(spec.label)).alias(spec.label)
        )
    for column, codes in spec.null_values.items():
        if column in frame.columns:
            dtype = frame.schema[column]
            codes_typed = pl.Series(codes).cast(dtype, strict=False).drop_nulls()
            frame = frame.with_columns(
                pl.when(pl.col(column).is_in(codes_typed.implode())).then(None).otherwise(pl.col(column)).alias(column)
            )
    return frame


def read_tabular_batch(batch: LandedBatch, spec: TaskSpec) -> pl.DataFrame:
    if not batch.files:
        raise BatchRejected(batch.batch_id, "holds no data files")
    frames = []
    for rel in batch.files:
        path = check_file(batch, rel, spec.landing.max_file_mb)
        frames.append(normalise(_read_file(path, rel), spec, rel))
    try:
        frame = pl.concat(frames, how="diagonal_relaxed")
    except Exception as exc:
        raise BatchRejected(batch.batch_id, f"its files have incompatible columns: {exc}") from exc
    return frame
