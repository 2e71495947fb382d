"""Train / validation / test assignment by a stable hash of the patient (or record) id.

The split of a patient depends only on its id and the spec's salt, so a new batch never moves an existing
patient to another split, and all of one patient's records share a split. Rows without a label are cases
to score: their split is ``score``.
"""

from __future__ import annotations

import hashlib

import polars as pl

from meddiag_pipelines.ingestion.landing import INTERNAL_PREFIX
from meddiag_pipelines.specs import TaskSpec

SPLIT_COLUMN = f"{INTERNAL_PREFIX}split"
SPLITS = ("train", "val", "test")


class SplitError(ValueError):
    pass


def unit_hash(key: str, salt: str) -> float:
    """A pseudo-uniform number in [0, 1) from SHA-256, stable across library versions and machines
    (polars' own hash is not guaranteed stable between releases)."""
    digest = hashlib.sha256(f"{salt}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(records: pl.DataFrame, spec: TaskSpec) -> pl.DataFrame:
    group = spec.patient_id or spec.id
    keys = records.select(pl.col(group).cast(pl.String).unique().alias("_key"))
    keys = keys.with_columns(
        pl.Series("_u", [unit_hash(k, spec.split.salt) for k in keys["_key"].to_list()], dtype=pl.Float64)
    )
    records = records.with_columns(pl.col(group).cast(pl.String).alias("_key")).join(keys, on="_key", how="left")
    u = pl.col("_u")
    train_cut = spec.split.train
    val_cut = spec.split.train + spec.split.val
    split = (
        pl.when(pl.col(spec.label).is_null()).then(pl.lit("score"))
        .when(u < train_cut).then(pl.lit("train"))
        .when(u < val_cut).then(pl.lit("val"))
        .otherwise(pl.lit("test"))
    )  # fmt: skip
    return records.with_columns(split.alias(SPLIT_COLUMN)).drop("_key", "_u")


def check_split(frame: pl.DataFrame, spec: TaskSpec) -> dict[str, dict[str, int]]:
    """Counts per split and class; every split must hold every class it needs to be learnt and judged.
    Multi-label tasks (``image.multi_label``): positives per finding, and only training must hold a positive of
    every finding (a finding absent from val / test is left out of the macro figures by the evaluator)."""
    labelled = frame.filter(pl.col(SPLIT_COLUMN) != "score")
    if spec.image is not None and spec.image.multi_label:
        return _check_multilabel_split(labelled, spec)
    counts = labelled.group_by(SPLIT_COLUMN, spec.label).len()
    table: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
    for split, label, n in counts.iter_rows():
        table[split][label] = n
    classes = sorted(labelled[spec.label].unique().to_list())
    for split in SPLITS:
        missing = [c for c in classes if c not in table[split]]
        # Multi-class val/test may lack a rare class; training may not, nor any split of a binary task.
        needed = missing if spec.is_binary or split == "train" else []
        if needed:
            raise SplitError(f"task {spec.name}: the {split} split has no rows of class {needed}; add data or change split fractions")
    return table


def _check_multilabel_split(labelled: pl.DataFrame, spec: TaskSpec) -> dict[str, dict[str, int]]:
    """Per split: ``n`` labelled rows and the positives of each finding (labels are '|'-joined finding indices,
    '' = no finding)."""
    indices = labelled.select(
        SPLIT_COLUMN, pl.col(spec.label).cast(pl.String).str.split("|").alias("_finding")
    ).explode("_finding").filter(pl.col("_finding").is_not_null() & (pl.col("_finding") != ""))
    positives = indices.group_by(SPLIT_COLUMN, "_finding").len()
    seen = sorted({int(i) for i in indices["_finding"].to_list()})
    names = list(spec.classes) if spec.classes else [str(i) for i in range(max(seen, default=0) + 1)]
    if seen and seen[-1] >= len(names):
        raise SplitError(f"task {spec.name}: finding index {seen[-1]} is outside the {len(names)} findings of the spec")
    table: dict[str, dict[str, int]] = {s: {"n": 0, **{n: 0 for n in names}} for s in SPLITS}
    for split, n in labelled.group_by(SPLIT_COLUMN).len().iter_rows():
        table[split]["n"] = n
    for split, finding, n in positives.iter_rows():
        table[split][names[int(finding)]] = n
    missing = [n for n in names if table["train"][n] == 0]
    if missing:
        raise SplitError(f"task {spec.name}: the train split has no positive of finding {missing}; add data or change split fractions")
    if table["val"]["n"] == 0 or table["test"]["n"] == 0:
        raise SplitError(f"task {spec.name}: the val and test splits need labelled rows; add data or change split fractions")
    return table
