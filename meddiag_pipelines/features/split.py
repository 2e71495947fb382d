"""Train / validation / test assignment by a stable hash of the patient (or record) id.

The split of a patient depends only on its id and the spec's salt, so a new batch never moves an existing
patient to another split, and all of one patient's records share a split. Rows without a label are cases
to score: their split is ``score``.
"""

from __future__ import annotations

import hashlib

import polars as pl

from meddiag_pipelines.specs import TaskSpec

SPLIT_COLUMN = "split"
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
    """Counts per split and class; every split must hold every class it needs to be learnt and judged."""
    labelled = frame.filter(pl.col(SPLIT_COLUMN) != "score")
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
