"""Train / validation / test assignment by a stable hash of the patient (or record) id, with copies grouped.

Rows are grouped into components: two labelled rows belong together when they share the patient key
(``patient_id``, else ``id``) or their content (normalised text, pixel hash, identical feature row: see
:func:`content_keys`). A component's split is the stable hash of its smallest patient key, so all of one
patient's records and every copy of one content share a split, a patient that shares no content with
another keeps the split of its own key, and a new batch moves an existing row only when it links the row's
component to another. Where the data brings its own split (an npz's ``predefined_split``), that split is
kept. Rows without a label are cases to score: their split is ``score`` and they link nothing.
"""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl

from meddiag_pipelines.specs import BATCH_COLUMN, INTERNAL_PREFIX, TaskSpec
from meddiag_pipelines.validation.suites import feature_columns

SPLIT_COLUMN = f"{INTERNAL_PREFIX}split"
# A val / test row of a dataset's own split (MedMNIST npz) that copies a row of its own train split.
COPY_OF_TRAIN_COLUMN = f"{INTERNAL_PREFIX}copy_of_train"
CONTENT_COLUMN = f"{INTERNAL_PREFIX}content"  # the content key while the split is assigned (not kept)
SPLITS = ("train", "val", "test")
IMAGE_CONTENT = "sha256"  # the pixel hash the image readers compute
NO_PATIENT = "\0record:"  # key prefix of a row without a patient id (no real id holds a NUL)


class SplitError(ValueError):
    pass


def key_columns_in(frame: pl.DataFrame, spec: TaskSpec) -> list[str]:
    """What a features table keeps of a split row beside the model inputs: id, label, patient, subgroups, split,
    batch and copy mark, those ``frame`` has, in its order."""
    keys = {spec.id, spec.label, spec.patient_id, *spec.subgroups, SPLIT_COLUMN, BATCH_COLUMN, COPY_OF_TRAIN_COLUMN}
    return [c for c in frame.columns if c in keys]


def unit_hash(key: str, salt: str) -> float:
    """A pseudo-uniform number in [0, 1) from SHA-256, stable across library versions and machines
    (polars' own hash is not guaranteed stable between releases)."""
    digest = hashlib.sha256(f"{salt}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def row_content_key(frame: pl.DataFrame, columns: list[str]) -> pl.Series:
    """Equal for rows whose values in ``columns`` are identical (a copied feature row); null for a row with
    no value at all. Only compared within one frame, so polars' hash is enough here."""
    if not columns:
        return pl.Series(CONTENT_COLUMN, [None] * frame.height, dtype=pl.UInt64)
    empty = pl.all_horizontal(pl.col(c).is_null() for c in columns)
    return frame.select(
        pl.when(empty).then(None).otherwise(pl.struct(columns).hash(seed=0)).alias(CONTENT_COLUMN)
    ).to_series()


def text_content_key(column: str) -> pl.Expr:
    """The key under which two texts are the same content (an expression over ``column``, so it runs at 1M rows):
    NFKC-normalised, lower-cased, runs of blanks collapsed to one space and trimmed; empty text is no content.
    The split groups copies by it; the duplicate check counts by it."""
    text = pl.col(column).cast(pl.String).str.normalize("NFKC").str.to_lowercase()
    return text.str.replace_all(r"\s+", " ").str.strip_chars().replace("", None)


def content_keys(frame: pl.DataFrame, spec: TaskSpec) -> pl.Series | None:
    """The content key of each row for its modality: text = the text, case and blanks folded, image = pixel hash
    (volume: voxel hash), tabular = the feature values of the row. None when the frame lacks what the key is made of."""
    if spec.modality == "text":
        return frame.select(text_content_key(spec.text)).to_series() if spec.text in frame.columns else None
    if spec.modality in ("image", "volume"):  # a volume's key is its voxel hash
        return frame[IMAGE_CONTENT] if IMAGE_CONTENT in frame.columns else None
    return row_content_key(frame, feature_columns(spec, frame.columns))


def component_roots(keys: pl.Series, contents: pl.Series | None, linked: pl.Series) -> pl.Series:
    """For each row, the smallest key of its connected component over (key, content); only rows where
    ``linked`` is true join contents. Null keys (only where the id is null too) form one node."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    frame = pl.DataFrame({"k": keys.cast(pl.String), "linked": linked.fill_null(False)})
    codes = frame.select(pl.col("k").rank("dense").fill_null(0).cast(pl.Int64)).to_series().to_numpy()
    n_keys = int(codes.max(initial=0)) + 1
    rows, cols = np.empty(0, np.int64), np.empty(0, np.int64)
    if contents is not None:
        c = (
            pl.DataFrame({"c": contents, "linked": frame["linked"]})
            .select(pl.when(pl.col("linked")).then(pl.col("c")).rank("dense").cast(pl.Int64))
            .to_series()
        )
        has = c.is_not_null().to_numpy()
        rows, cols = codes[has], c.filter(c.is_not_null()).to_numpy() - 1 + n_keys
    n_nodes = int(cols.max(initial=n_keys - 1)) + 1
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(n_nodes, n_nodes))
    _, labels = connected_components(graph, directed=False)
    return frame.with_columns(pl.Series("_comp", labels[codes])).select(pl.col("k").min().over("_comp")).to_series()


def _group_keys(records: pl.DataFrame, spec: TaskSpec) -> pl.Series:
    """The patient key of each row; a row without a patient id stands alone under its record id (one patient
    per missing id, rather than one patient for all of them)."""
    keys = records[spec.patient_id or spec.id].cast(pl.String)
    if spec.patient_id and spec.id in records.columns:
        keys = keys.fill_null(NO_PATIENT + records[spec.id].cast(pl.String))
    return keys


def fold_groups(rows: pl.DataFrame, spec: TaskSpec, content_columns: list[str]) -> np.ndarray:
    """A group number per row, equal for rows the split keeps together (one patient's, or identical in
    ``content_columns``), so that cross-validation within the split keeps them in one fold too."""
    linked = pl.Series([True] * rows.height)
    roots = component_roots(_group_keys(rows, spec), row_content_key(rows, content_columns), linked)
    return roots.rank("dense").to_numpy()


def assign_split(
    records: pl.DataFrame, spec: TaskSpec, content_key: str | None = None, predefined: str | None = None
) -> pl.DataFrame:
    """``content_key``: a column whose equal values are copies of one content (see :func:`content_keys`);
    ``predefined``: a column holding the data's own split (``train`` / ``val`` / ``test``), kept where set;
    labelled rows without one that share a component with such rows take the first of those splits."""
    labelled = records[spec.label].is_not_null()
    contents = records[content_key] if content_key else None
    roots = component_roots(_group_keys(records, spec), contents, labelled).rename("_key")
    keys = roots.unique().to_frame()
    keys = keys.with_columns(
        pl.Series("_u", [unit_hash(k, spec.split.salt) for k in keys["_key"].to_list()], dtype=pl.Float64)
    )
    records = records.with_columns(roots).join(keys, on="_key", how="left", nulls_equal=True)
    u = pl.col("_u")
    train_cut = spec.split.train
    val_cut = spec.split.train + spec.split.val
    split = (
        pl.when(pl.col(spec.label).is_null())
        .then(pl.lit("score"))
        .when(u < train_cut)
        .then(pl.lit("train"))
        .when(u < val_cut)
        .then(pl.lit("val"))
        .otherwise(pl.lit("test"))
    )
    records = records.with_columns(split.alias(SPLIT_COLUMN))
    if predefined and predefined in records.columns:
        records = _keep_predefined(records, predefined)
    return records.drop("_key", "_u")


def _keep_predefined(records: pl.DataFrame, predefined: str) -> pl.DataFrame:
    order = pl.col(predefined).replace_strict(
        list(SPLITS), list(range(len(SPLITS))), default=None, return_dtype=pl.Int64
    )
    given = pl.when(pl.col(SPLIT_COLUMN) != "score").then(order)
    first = given.min().over("_key")
    chosen = pl.coalesce(given, first)
    return records.with_columns(
        pl.when(chosen.is_not_null())
        .then(chosen.replace_strict(list(range(len(SPLITS))), list(SPLITS), return_dtype=pl.String))
        .otherwise(pl.col(SPLIT_COLUMN))
        .alias(SPLIT_COLUMN)
    )


def split_by_content(
    records: pl.DataFrame, spec: TaskSpec, predefined: str | None = None
) -> tuple[pl.DataFrame, dict[str, int]]:
    """:func:`assign_split` over the modality's :func:`content_keys` (copies share a split), and the duplicate
    counts of :func:`duplicate_contents`; the content key is not kept."""
    keys = content_keys(records, spec)
    if keys is None:
        return drop_unlearnable_classes(assign_split(records, spec, predefined=predefined), spec)
    frame = assign_split(records.with_columns(keys.alias(CONTENT_COLUMN)), spec, CONTENT_COLUMN, predefined)
    duplicates = duplicate_contents(frame, spec, CONTENT_COLUMN)
    frame, dropped = drop_unlearnable_classes(frame.drop(CONTENT_COLUMN), spec)
    return frame, {**duplicates, **dropped}


def drop_unlearnable_classes(frame: pl.DataFrame, spec: TaskSpec) -> tuple[pl.DataFrame, dict]:
    """A multi-class task's labelled rows of a class the train split lacks (too rare to reach it) cannot be
    learnt or judged: they leave the split (they stay in the warehouse) and are reported by class and count."""
    if spec.is_binary or (spec.image is not None and spec.image.multi_label):
        return frame, {}
    labelled = pl.col(SPLIT_COLUMN) != "score"
    trained = set(frame.filter(pl.col(SPLIT_COLUMN) == "train")[spec.label].drop_nulls().to_list())
    lost = frame.filter(labelled & ~pl.col(spec.label).is_in(list(trained)))
    if lost.is_empty():
        return frame, {}
    counts = dict(sorted(lost[spec.label].value_counts().iter_rows()))
    note = ", ".join(f"{c} ({n} rows)" for c, n in counts.items())
    return frame.filter(~labelled | pl.col(spec.label).is_in(list(trained))), {
        "unlearnable_rows": lost.height,
        "unlearnable_classes": f"no training row, left out: {note}",
    }


def duplicate_contents(frame: pl.DataFrame, spec: TaskSpec, content_key: str) -> dict[str, int]:
    """Counts (never contents) over labelled rows: contents seen more than once, the rows that hold them,
    contents carrying more than one label, and contents found in more than one split (only where the data
    brought its own split; otherwise grouping makes it 0)."""
    labelled = frame.filter((pl.col(SPLIT_COLUMN) != "score") & pl.col(content_key).is_not_null())
    groups = (
        labelled.group_by(content_key)
        .agg(
            pl.len().alias("n"),
            pl.col(spec.label).n_unique().alias("labels"),
            pl.col(SPLIT_COLUMN).n_unique().alias("splits"),
        )
        .filter(pl.col("n") > 1)
    )
    conflicting = groups.filter(pl.col("labels") > 1)
    return {
        "duplicate_contents": groups.height,
        "duplicate_rows": int(groups["n"].sum()),
        "conflicting_label_contents": conflicting.height,
        "conflicting_label_rows": int(conflicting["n"].sum()),
        "contents_across_splits": groups.filter(pl.col("splits") > 1).height,
    }


def check_split(frame: pl.DataFrame, spec: TaskSpec, predefined: str | None = None) -> dict[str, dict[str, int]]:
    """Counts per split and class; every split must hold every class it needs to be learnt and judged.
    Multi-label tasks (``image.multi_label``): positives per finding, and only training must hold a positive of
    every finding (a finding absent from val / test is left out of the macro figures by the evaluator).
    ``predefined``: the column holding the data's own split (as for :func:`assign_split`); the error's advice
    names it where the rows keep that split, which no split fraction changes."""
    labelled = frame.filter(pl.col(SPLIT_COLUMN) != "score")
    own = _own_split_rows(labelled, predefined)
    if spec.image is not None and spec.image.multi_label:
        return _check_multilabel_split(labelled, spec, predefined, own)
    counts = labelled.group_by(SPLIT_COLUMN, spec.label).len()
    table: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
    for split, label, n in counts.iter_rows():
        table[split][label] = n
    classes = sorted(labelled[spec.label].unique().to_list())
    if len(classes) == 1:
        raise SplitError(
            f"task {spec.name}: every one of the {labelled.height} labelled rows is of class {classes[0]!r}; a "
            "model needs rows of at least two classes (add data, or check how the label is defined)"
        )
    for split in SPLITS:
        missing = [c for c in classes if c not in table[split]]
        # Multi-class val/test may lack a rare class; training may not, nor any split of a binary task.
        needed = missing if spec.is_binary or split == "train" else []
        if needed:
            lacks = f"no rows of class {needed}" if table[split] else "no labelled rows"
            raise SplitError(_short_split(spec, split, lacks, predefined, own, labelled.height))
    return table


def _own_split_rows(labelled: pl.DataFrame, predefined: str | None) -> int:
    """How many labelled rows keep the data's own split (column ``predefined``)."""
    if not predefined or predefined not in labelled.columns:
        return 0
    return int(labelled[predefined].is_in(list(SPLITS)).sum())


def _short_split(spec: TaskSpec, split: str, lacks: str, predefined: str | None, own: int, labelled: int) -> str:
    """The split error of a split that ``lacks`` something, with the advice that fits where its rows come from:
    the spec's split fractions, or the data's own split (an npz's train_ / val_ / test_ arrays), which they do not
    change."""
    if not own:
        return f"task {spec.name}: the {split} split has {lacks}; add data or change split fractions"
    if own == labelled:
        return (
            f"task {spec.name}: the data's own {split} split (column {predefined!r}, which every labelled row "
            f"keeps) has {lacks}; add such rows to the data's {split} split (an npz's {split}_images / {split}_labels): "
            "the spec's split fractions do not apply to a split the data brings"
        )
    return (
        f"task {spec.name}: the {split} split has {lacks}; {own} of the {labelled} labelled rows keep the data's "
        f"own split (column {predefined!r}), which the spec's split fractions do not change: add data, to the "
        f"data's own {split} split or to the rows without one, or change split fractions"
    )


def _check_multilabel_split(
    labelled: pl.DataFrame, spec: TaskSpec, predefined: str | None, own: int
) -> dict[str, dict[str, int]]:
    """Per split: ``n`` labelled rows and the positives of each finding (labels are '|'-joined finding indices,
    '' = no finding)."""
    indices = (
        labelled.select(SPLIT_COLUMN, pl.col(spec.label).cast(pl.String).str.split("|").alias("_finding"))
        .explode("_finding")
        .filter(pl.col("_finding").is_not_null() & (pl.col("_finding") != ""))
    )
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
        lacks = f"no positive of finding {missing}"
        raise SplitError(_short_split(spec, "train", lacks, predefined, own, labelled.height))
    for split in ("val", "test"):
        if table[split]["n"] == 0:
            raise SplitError(_short_split(spec, split, "no labelled rows", predefined, own, labelled.height))
    return table
