"""Class order and label encoding, the same for every model of a task."""

import numpy as np
import polars as pl

from meddiag_pipelines.specs import TaskSpec


def task_kind(spec: TaskSpec) -> str:
    """``binary`` (a ``positive`` class), ``multilabel`` (``image.multi_label``: labels are '|'-joined finding
    indices, '' = no finding) or ``multiclass``."""
    if spec.image is not None and spec.image.multi_label:
        return "multilabel"
    return "binary" if spec.is_binary else "multiclass"


def class_list(spec: TaskSpec, frame: pl.DataFrame) -> list[str]:
    """Class order used by every model: binary tasks put the positive class last; multi-label tasks list the
    findings in index order (``spec.classes``, else the indices seen)."""
    if task_kind(spec) == "multilabel":
        if spec.classes:
            return list(spec.classes)
        seen = [int(i) for v in frame[spec.label].drop_nulls().to_list() for i in str(v).split("|") if i != ""]
        return [str(i) for i in range(max(seen, default=1) + 1)]
    seen = sorted(frame[spec.label].drop_nulls().unique().to_list())
    # A declared class with no rows cannot be learnt (the split leaves out classes training lacks).
    classes = [c for c in spec.classes if spec.is_binary or c in seen] if spec.classes else seen
    if spec.is_binary:
        negatives = [c for c in classes if c != spec.positive]
        if len(negatives) != 1:
            raise ValueError(f"task {spec.name}: binary task needs exactly one negative class, found {len(negatives)}")
        classes = [negatives[0], spec.positive]
    return classes


def encode_labels(labels: pl.Series, classes: list[str], kind: str = "multiclass") -> np.ndarray:
    """Class indices (n,); ``kind="multilabel"``: the (n, len(classes)) 0/1 indicator matrix."""
    if kind == "multilabel":
        return multilabel_matrix(labels.cast(pl.String).to_list(), len(classes)).astype(np.int64)
    codes = labels.cast(pl.String).replace_strict(classes, list(range(len(classes))), return_dtype=pl.Int64)
    if codes.null_count():
        raise ValueError(f"{labels.name}: {codes.null_count()} rows have no label to encode")
    return codes.to_numpy()


def multilabel_matrix(labels: list[str | None] | pl.Series, n_labels: int) -> np.ndarray:
    """The (n, n_labels) 0/1 float32 matrix of '|'-joined finding indices ('' = no finding; null = NaN row)."""
    out = np.zeros((len(labels), n_labels), dtype=np.float32)
    for i, lab in enumerate(labels):
        if lab is None:
            out[i] = np.nan
        elif lab != "":
            out[i, [int(x) for x in lab.split("|")]] = 1.0
    return out
