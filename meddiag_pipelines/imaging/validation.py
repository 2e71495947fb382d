"""Image validation: the checks that block an image batch (or the whole task) before anything is learnt.

Decoding is checked by the readers (an unreadable file never becomes a record). On the records this adds:

* GX (via :func:`~meddiag_pipelines.validation.suites.run_suite`): the key columns exist; ids are present and
  unique; the label is in the spec's ``classes``; every record has a pixel hash.
* plain Polars, image by image (counts only, never ids):
  - ``image_channels``  channels must equal ``spec.image.channels`` (a colour photograph in a greyscale task is
    most likely the wrong file; the cache would silently turn it into luma);
  - ``image_size``      npz (MedMNIST) images must be exactly ``size`` x ``size``; other formats must be at least
    ``size`` on their shorter side (smaller images would be up-sampled, inventing detail);
  - ``image_bit_depth`` folder: 8 or 16 bits (1-bit masks and 32-bit float images refused); npz: 8;
    DICOM: 8 to 16 bits stored;
  - ``image_constant``  the decoded intensities (after windowing, in [0, 1]) span less than one grey level
    (``MIN_INTENSITY_RANGE``): a blank or saturated frame;
  - ``duplicate_images_across_splits`` (leakage): the same pixels (sha256) labelled in two of train / val / test
    because of the pipeline's split. Copies across a dataset's own split (a MedMNIST npz whose val / test images
    also appear in its train split) are not ours to fix: they are counted (:func:`split_copy_counts`), marked
    (:func:`mark_copies_of_train`) and warned about, never quarantined;
  - ``duplicate_images_conflicting_labels``: the same pixels twice in one split with different labels;
  - ``ids_unique_across_batches``: ids already ingested from an earlier batch (a re-export).

Duplicates within one split with the same label are not an error (a re-acquisition, a copied file); they are
reported by :func:`duplicate_warnings` for a non-blocking check.

The split used for the duplicate checks is the one the pipeline will assign (:func:`image_split`): the npz
file's own ``predefined_split`` when there is one, else the stable patient-level hash split.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import polars as pl

from meddiag_pipelines.imaging.readers import INTENSITY_MAX, INTENSITY_MIN, source_format
from meddiag_pipelines.specs import TaskSpec
from meddiag_pipelines.split import COPY_OF_TRAIN_COLUMN, SPLIT_COLUMN, SPLITS, split_by_content
from meddiag_pipelines.validation.suites import CheckFailure, ids_already_ingested, record_expectations, run_suite

if TYPE_CHECKING:
    import great_expectations.expectations as gxe

PREDEFINED_SPLIT = "predefined_split"
MIN_INTENSITY_RANGE = 1.0 / 512  # less than one 8-bit grey level between darkest and brightest pixel
IMAGE_COLUMNS = ("sha256", "height", "width", "channels", "bit_depth")
FOLDER_BIT_DEPTHS = (8, 16)
DICOM_BIT_DEPTHS = (8, 16)  # inclusive range of BitsStored


def image_split(records: pl.DataFrame, spec: TaskSpec) -> pl.DataFrame:
    """The split the split asset makes: patients and pixel copies share a split; an npz record keeps its
    file's own split."""
    return split_by_content(records, spec, predefined=PREDEFINED_SPLIT)[0]


def image_expectations(spec: TaskSpec) -> list[gxe.Expectation]:
    import great_expectations.expectations as gxe  # imported here: see validation/suites.py

    return [*record_expectations(spec, list(IMAGE_COLUMNS)), gxe.ExpectColumnValuesToNotBeNull(column="sha256")]


def count_failure(frame: pl.DataFrame, bad: pl.Expr, name: str, column: str, problem: str) -> list[CheckFailure]:
    hits = frame.filter(bad)
    if hits.is_empty():
        return []
    examples = sorted({str(v) for v in hits[column].to_list()})[:5] if column in hits.columns else []
    return [CheckFailure(name, column, f"{hits.height} images {problem}", hits.height, examples)]


def image_property_failures(frame: pl.DataFrame, spec: TaskSpec) -> list[CheckFailure]:
    """Channels, size, bit depth and constant intensities against the spec (see the module docstring)."""
    image = spec.image
    assert image is not None, "image tasks only"
    missing = [c for c in IMAGE_COLUMNS if c not in frame.columns]
    if missing:
        return [CheckFailure("image_columns", None, f"image columns missing: {missing}")]
    failures = count_failure(
        frame,
        pl.col("channels") != image.channels,
        "image_channels",
        "channels",
        f"have another number of channels than the spec's {image.channels}",
    )
    formats = _formats(frame, spec)
    for fmt in formats.unique().sort().to_list():  # a task without image.format may hold batches of each format
        failures += _format_failures(frame.filter(formats == fmt), spec, fmt)
    failures += constant_intensity_failures(frame)
    return failures


def constant_intensity_failures(frame: pl.DataFrame, blank: str = "blank or saturated") -> list[CheckFailure]:
    """Records whose pixels (or voxels) span less than one grey level: nothing to learn from."""
    if INTENSITY_MIN not in frame.columns or INTENSITY_MAX not in frame.columns:
        return []
    spread = pl.col(INTENSITY_MAX) - pl.col(INTENSITY_MIN)
    constant = spread.fill_null(0.0) < MIN_INTENSITY_RANGE
    return count_failure(frame, constant, "image_constant", INTENSITY_MAX, f"have constant intensities ({blank})")


def _formats(frame: pl.DataFrame, spec: TaskSpec) -> pl.Series:
    """The format each record was read with (the spec's, or the one detected for its batch)."""
    declared = spec.image.format if spec.image else None
    sources = frame["source"].to_list() if "source" in frame.columns else [""] * frame.height
    return pl.Series("format", [source_format(s or "", declared) for s in sources], dtype=pl.String)


def _format_failures(frame: pl.DataFrame, spec: TaskSpec, fmt: str) -> list[CheckFailure]:
    """Size and bit depth of the records of one format."""
    size = spec.image.size
    if fmt == "npz":
        failures = count_failure(
            frame,
            (pl.col("height") != size) | (pl.col("width") != size),
            "image_size",
            "height",
            f"are not {size} x {size} px as the spec expects",
        )
    else:
        failures = count_failure(
            frame,
            pl.min_horizontal("height", "width") < size,
            "image_size",
            "height",
            f"are smaller than the spec's {size} px on a side (they would be up-sampled)",
        )
    if fmt == "dicom":
        low, high = DICOM_BIT_DEPTHS
        bad_depth = ~pl.col("bit_depth").is_between(low, high)
        allowed = f"{low} to {high} bits stored"
    else:
        depths = [8] if fmt == "npz" else list(FOLDER_BIT_DEPTHS)
        bad_depth = ~pl.col("bit_depth").is_in(depths)
        allowed = " or ".join(str(d) for d in depths) + " bits"
    failures += count_failure(
        frame, bad_depth.fill_null(True), "image_bit_depth", "bit_depth", f"have a bit depth other than {allowed}"
    )
    return failures


def _duplicate_groups(frame: pl.DataFrame, spec: TaskSpec) -> pl.DataFrame:
    """One row per sha256 seen on more than one labelled record: how many, in how many splits, how many labels,
    and ``ours``: whether copies are in more than one split because of the pipeline (its hash split, or two files
    each with its own split). Copies across ONE dataset file's own split are its authors', reported, not blocked."""
    labelled = image_split(frame, spec).filter(pl.col(SPLIT_COLUMN) != "score")
    official = (
        pl.col(PREDEFINED_SPLIT).is_in(list(SPLITS)) if PREDEFINED_SPLIT in labelled.columns else pl.lit(False)
    ).fill_null(False)
    source_file = pl.col("source").str.replace(r"#[^#]*$", "") if "source" in labelled.columns else pl.lit("")
    groups = (
        labelled.with_columns(official.alias("_official"), source_file.alias("_file"))
        .group_by("sha256")
        .agg(
            pl.len().alias("n"),
            pl.col(SPLIT_COLUMN).n_unique().alias("n_splits"),
            pl.col(SPLIT_COLUMN).filter(pl.col("_official")).n_unique().alias("n_official_splits"),
            pl.col("_file").filter(pl.col("_official")).n_unique().alias("n_official_files"),
            (~pl.col("_official")).any().alias("has_ours"),
            pl.col(spec.label).n_unique().alias("n_labels"),
        )
        .filter(pl.col("n") > 1)
    )
    ours = (pl.col("n_splits") > 1) & (
        (pl.col("n_official_files") > 1) | (pl.col("has_ours") & (pl.col("n_splits") > pl.col("n_official_splits")))
    )
    return groups.with_columns(ours.alias("ours"))


def _can_split(frame: pl.DataFrame, spec: TaskSpec) -> bool:
    needed = {"sha256", spec.label, spec.patient_id or spec.id}
    return not frame.is_empty() and needed <= set(frame.columns)


def duplicate_failures(frame: pl.DataFrame, spec: TaskSpec) -> list[CheckFailure]:
    if not _can_split(frame, spec):
        return []
    groups = _duplicate_groups(frame, spec)
    failures = []
    across = groups.filter(pl.col("ours"))
    if not across.is_empty():
        failures.append(
            CheckFailure(
                "duplicate_images_across_splits",
                "sha256",
                f"{across.height} images appear (identical pixels) in more "
                f"than one of train / val / test ({int(across['n'].sum())} records): leakage between splits",
                across.height,
            )
        )
    conflicting = groups.filter((pl.col("n_splits") == 1) & (pl.col("n_labels") > 1))
    if not conflicting.is_empty():
        failures.append(
            CheckFailure(
                "duplicate_images_conflicting_labels",
                "sha256",
                f"{conflicting.height} images appear twice in one split with different labels",
                conflicting.height,
            )
        )
    return failures


def duplicate_warnings(frame: pl.DataFrame, spec: TaskSpec) -> list[CheckFailure]:
    """Identical images within one split with the same label: not leakage, but worth a look."""
    if not _can_split(frame, spec):
        return []
    groups = _duplicate_groups(frame, spec)
    same = groups.filter((pl.col("n_splits") == 1) & (pl.col("n_labels") == 1))
    warnings = []
    if not same.is_empty():
        warnings.append(
            CheckFailure(
                "duplicate_images_within_split",
                "sha256",
                f"{same.height} images appear more than once within one split ({int(same['n'].sum())} records)",
                same.height,
            )
        )
    official = groups.filter((pl.col("n_splits") > 1) & ~pl.col("ours"))
    if not official.is_empty():
        counts = ", ".join(
            f"{k.replace('_', ' ')}: {v}" for k, v in split_copy_counts(image_split(frame, spec)).items()
        )
        warnings.append(
            CheckFailure(
                "duplicate_images_across_official_splits",
                "sha256",
                f"{official.height} images "
                f"appear in more than one split of the dataset's own split ({counts}); kept, and "
                "evaluated with and without the copies",
                official.height,
            )
        )
    return warnings


_SPLIT_PAIRS = (("val", "train"), ("test", "train"), ("test", "val"))


def split_copy_counts(split_frame: pl.DataFrame) -> dict[str, int]:
    """Per pair of splits, how many records of the later split have the pixels (sha256) of a record of the
    earlier one: ``{"val_in_train": n, "test_in_train": n, "test_in_val": n}``."""
    hashes = {s: split_frame.filter(pl.col(SPLIT_COLUMN) == s)["sha256"] for s in SPLITS}
    return {
        f"{later}_in_{earlier}": int(hashes[later].is_in(hashes[earlier].unique().implode()).sum())
        for later, earlier in _SPLIT_PAIRS
    }


def mark_copies_of_train(split_frame: pl.DataFrame) -> pl.DataFrame:
    """The split frame with :data:`COPY_OF_TRAIN_COLUMN`: True on a val / test record whose pixels are also on a
    train record (after validation only a dataset's own split can leave such copies). The evaluation gives test
    metrics without them by filtering the test rows on ``~COPY_OF_TRAIN_COLUMN``."""
    train = split_frame.filter(pl.col(SPLIT_COLUMN) == "train")["sha256"].unique().implode()
    copy = pl.col(SPLIT_COLUMN).is_in(["val", "test"]) & pl.col("sha256").is_in(train)
    return split_frame.with_columns(copy.fill_null(False).alias(COPY_OF_TRAIN_COLUMN))


def mark_official_copies(frame: pl.DataFrame) -> tuple[pl.DataFrame, dict]:
    """The split frame with copies across a dataset's own split marked (:func:`mark_copies_of_train`), and their
    counts as metadata (validation blocks any copies of ours)."""
    predefined = int(frame[PREDEFINED_SPLIT].is_not_null().sum()) if PREDEFINED_SPLIT in frame.columns else 0
    copies = {f"n_copies_{k}": v for k, v in split_copy_counts(frame).items()}
    return mark_copies_of_train(frame), {"n_predefined_split": predefined, **copies}


def multilabel_domain_failures(frame: pl.DataFrame, spec: TaskSpec) -> list[CheckFailure]:
    """Multi-label labels must be '' or '|'-joined finding indices within ``spec.classes`` (when given)."""
    if spec.label not in frame.columns:
        return []
    k = len(spec.classes) if spec.classes else None
    bad = 0
    for value in frame[spec.label].drop_nulls().cast(pl.String).to_list():
        parts = value.split("|") if value else []
        if not all(x.isdigit() and (k is None or int(x) < k) for x in parts):
            bad += 1
    if not bad:
        return []
    return [
        CheckFailure(
            "multilabel_label_domain",
            spec.label,
            f"{bad} labels are not '|'-joined finding indices {'below ' + str(k) if k else ''}".rstrip(),
            bad,
        )
    ]


Properties = Callable[[pl.DataFrame, TaskSpec], list[CheckFailure]]


def image_failures(
    frame: pl.DataFrame, spec: TaskSpec, name: str | None = None, properties: Properties = image_property_failures
) -> list[CheckFailure]:
    """Every blocking image check on ``frame`` (a batch, or all validated rows); ``properties``: the checks of
    each record's geometry against the spec (the volume modality's own for volumes)."""
    failures = run_suite(frame, image_expectations(spec), name or spec.name)
    failures += properties(frame, spec)
    failures += duplicate_failures(frame, spec)
    return failures


def validate_images(
    frame: pl.DataFrame,
    spec: TaskSpec,
    known_ids: set[str] | None = None,
    earlier: pl.DataFrame | None = None,
    properties: Properties = image_property_failures,
) -> list[CheckFailure]:
    """The validator of one image batch (``ingestion.batches.validate_pending_batches``).

    ``earlier``: rows of already validated batches, so that an image of this batch that is already in another
    split (leakage) quarantines this batch rather than blocking the task.
    """
    failures = image_failures(frame, spec, properties=properties)
    failures += ids_already_ingested(frame, spec, known_ids)
    if earlier is not None and _can_split(earlier, spec) and _can_split(frame, spec):
        shared = [c for c in frame.columns if c in earlier.columns]
        both = pl.concat([earlier.select(shared), frame.select(shared)], how="vertical_relaxed")
        new_hashes = frame["sha256"].drop_nulls().unique().to_list()
        groups = _duplicate_groups(both, spec).filter(pl.col("ours") & pl.col("sha256").is_in(new_hashes))
        if not groups.is_empty() and not any(f.expectation == "duplicate_images_across_splits" for f in failures):
            failures.append(
                CheckFailure(
                    "duplicate_images_across_splits",
                    "sha256",
                    f"{groups.height} images of this batch are already in "
                    "another split from an earlier batch: leakage between splits",
                    groups.height,
                )
            )
    return failures


__all__ = [
    "COPY_OF_TRAIN_COLUMN",
    "count_failure",
    "duplicate_failures",
    "duplicate_warnings",
    "image_expectations",
    "image_failures",
    "image_property_failures",
    "image_split",
    "mark_copies_of_train",
    "mark_official_copies",
    "multilabel_domain_failures",
    "split_copy_counts",
    "validate_images",
]
