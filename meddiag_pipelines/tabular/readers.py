"""Read one tabular batch (CSV and Parquet files) into one Polars frame, or reject it with a reason.

Each file is read by :func:`~meddiag_pipelines.ingestion.tables.read_table_file` (encodings, line endings, column
names and types: that module's docstring). NaN in a numeric column means "not recorded" (it becomes null);
infinities, and finite values beyond float32 (the models' precision: XGBoost would refuse them in every later
run), are refused.

Key columns (id, patient id, label, subgroups) are text, never inferred: ``0001`` keeps its zeros, and label
values take one form (:func:`specs.canonical_label`) whether the file stored them as int, float, bool or text.
A file must name at least one of the task's columns, and the columns of a batch's files must be distinct
ignoring case.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from meddiag_pipelines.ingestion.errors import BatchRejected
from meddiag_pipelines.ingestion.landing import LandedBatch
from meddiag_pipelines.ingestion.tables import (
    check_case_distinct,
    check_file,
    polars_problem,
    read_table_file,
    settled_types,
)
from meddiag_pipelines.specs import ROW_ID, TaskSpec, canonical_label

FLOAT32_MAX = float(np.finfo(np.float32).max)  # features are float32: a larger finite value becomes infinite


def _names_a_task_column(frame: pl.DataFrame, spec: TaskSpec, rel: str) -> None:
    """A file that names none of the task's columns has no header row (its first row is data) or belongs to
    another export: refused before its names reach the ledger, and without quoting them."""
    declared = {spec.label, spec.id, spec.patient_id, *spec.subgroups, *spec.numeric, *spec.categorical, *spec.exclude}
    if not declared & set(frame.columns):
        raise BatchRejected(
            rel,
            f"has no header row with the task's columns (label {spec.label!r}, id {spec.id!r}): "
            "its first row names none of them and is not shown, as it may be a row of data",
        )


def key_columns(spec: TaskSpec) -> list[str]:
    """Columns that are text whatever they look like: identifiers, the label and the subgroups."""
    return [c for c in dict.fromkeys((spec.id, spec.label, spec.patient_id, *spec.subgroups)) if c]


def _as_float(frame: pl.DataFrame, column: str, rel: str) -> pl.Expr:
    if frame.schema[column] == pl.Null or frame.schema[column].is_numeric():
        return pl.col(column).cast(pl.Float64)
    try:
        frame[column].cast(pl.Float64, strict=True)
    except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as exc:
        raise BatchRejected(
            rel, f"column {column!r} is declared numeric but holds {frame.schema[column]} values that are not numbers"
        ) from exc
    return pl.col(column).cast(pl.Float64)


def _canonical_labels(frame: pl.DataFrame, label: str) -> pl.DataFrame:
    """Label values in :func:`canonical_label` form (``1``, ``1.0``, ``True``, ``"1.0"`` -> ``"1"``); empty -> null
    (a case to score). Mapped over the distinct values only: a label column has few."""
    text = frame[label].cast(pl.String)  # booleans become "true" / "false", which canonical_label knows
    distinct = text.drop_nulls().unique().to_list()
    mapping = {v: canonical_label(v) for v in distinct}
    return frame.with_columns(text.replace_strict(mapping, default=None, return_dtype=pl.String).alias(label))


def _check_magnitudes(frame: pl.DataFrame, numeric: list[str], rel: str) -> None:
    """Infinities, and finite values that float32 cannot hold, would break every later training run."""
    counts = frame.select(
        *(pl.col(c).is_infinite().sum().alias(f"inf{i}") for i, c in enumerate(numeric)),
        *((pl.col(c).abs() > FLOAT32_MAX).sum().alias(f"big{i}") for i, c in enumerate(numeric)),
    ).row(0)
    for i, column in enumerate(numeric):
        infinite, beyond = counts[i], counts[len(numeric) + i] - counts[i]
        if infinite:
            raise BatchRejected(rel, f"column {column!r} holds {infinite} infinite values")
        if beyond:
            raise BatchRejected(
                rel,
                f"column {column!r} holds {beyond} values whose magnitude exceeds the float32 "
                "range (about 3.4e38) the models compute in; rescale the column or mark them "
                "as not recorded",
            )


def normalise(frame: pl.DataFrame, spec: TaskSpec, rel: str) -> pl.DataFrame:
    """Key columns as text; declared-numeric and all numeric columns as Float64 (so batches agree whether a
    column came as integers or decimals) with NaN as null, infinities and values beyond float32 refused; labels
    in canonical form, empty labels as null (cases to score), as are all rows of a file without the label column;
    'not recorded' codes as null."""
    frame = settled_types(frame, spec, rel)
    keys = [c for c in key_columns(spec) if c in frame.columns]
    frame = frame.with_columns(pl.col(c).cast(pl.String).str.strip_chars() for c in keys if c != spec.label)
    numeric = [c for c in frame.columns if c not in keys and (c in spec.numeric or frame.schema[c].is_numeric())]
    frame = frame.with_columns(_as_float(frame, c, rel) for c in numeric)
    if numeric:
        frame = frame.with_columns(pl.col(c).fill_nan(None) for c in numeric)  # first: Polars orders NaN above all
        _check_magnitudes(frame, numeric, rel)
    if spec.label in frame.columns:
        frame = _canonical_labels(frame, spec.label)
    else:  # new cases as a hospital exports them, without the outcome: every row is a case to score
        frame = frame.with_columns(pl.lit(None, dtype=pl.String).alias(spec.label))
    for column, codes in spec.null_values.items():
        if column in frame.columns:
            dtype = frame.schema[column]
            codes_typed = pl.Series(codes).cast(dtype, strict=False).drop_nulls()
            frame = frame.with_columns(
                pl.when(pl.col(column).is_in(codes_typed.implode())).then(None).otherwise(pl.col(column)).alias(column)
            )
    return frame


def _with_row_ids(frame: pl.DataFrame, spec: TaskSpec, batch_id: str, rel: str) -> pl.DataFrame:
    """A spec that names no id (the default ``row_id``) on data without that column: each row's id is
    ``<batch>/<file>#<row>``, unique across batches. A named id column that is missing stays missing (validation
    says so)."""
    if spec.id != ROW_ID or ROW_ID in frame.columns:
        return frame
    rows = frame.with_row_index(ROW_ID, offset=1)
    return rows.with_columns((pl.lit(f"{batch_id}/{rel}#") + pl.col(ROW_ID).cast(pl.String)).alias(ROW_ID))


def read_tabular_batch(batch: LandedBatch, spec: TaskSpec) -> pl.DataFrame:
    if not batch.files:
        raise BatchRejected(batch.batch_id, "holds no data files")
    frames = []
    for rel in batch.files:
        path = check_file(batch, rel, spec.landing.max_file_mb)
        frame = read_table_file(path, rel, key_columns(spec), spec.landing.max_file_mb, batch.digests.get(rel))
        _names_a_task_column(frame, spec, rel)
        frames.append(normalise(_with_row_ids(frame, spec, batch.batch_id, rel), spec, rel))
    try:
        frame = pl.concat(frames, how="diagonal_relaxed")
    except (Exception, pl.exceptions.PanicException) as exc:
        raise BatchRejected(batch.batch_id, f"its files have incompatible columns: {polars_problem(exc)}") from exc
    check_case_distinct(frame.columns, batch.batch_id)  # two files may each be fine alone
    return frame
