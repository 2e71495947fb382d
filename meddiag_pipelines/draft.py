"""``meddiag init <task> <file-or-folder> [--out FILE]``: a draft task spec from landed data.

The draft is YAML (loadable with ``specs.load_spec``) with a comment on every guess: the modality (tabular
CSV / Parquet; text = a long free-text column, or ``.txt`` files with a ``labels.csv``; image = PNG / JPEG or
DICOM files with a ``labels.csv``, or a MedMNIST ``.npz``; volume = a MedMNIST 3D ``.npz`` (N, D, H, W), NIfTI
files, or DICOM series folders named by a ``labels.csv``), the label and its classes, the id and patient-id
columns, declared types, codes that probably mean "not recorded", subgroup columns. Only column names, counts
and class labels are ever printed, never a value of an id-like or free-text column nor a file name.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from meddiag_pipelines.atomic import atomic_write_text
from meddiag_pipelines.ingestion.errors import BatchRejected
from meddiag_pipelines.ingestion.landing import UnsafePath, confined_file, confined_path, data_files
from meddiag_pipelines.ingestion.tables import read_table_file
from meddiag_pipelines.specs import ROW_ID, TASK_NAME, TaskSpec, canonical_label

TABLE_SUFFIXES = {".csv", ".parquet"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
DICOM_SUFFIXES = {".dcm", ".dicom"}
IMAGE_SIZES = (28, 64, 128, 224)  # the sizes the image cache supports (specs.ImageSpec.size)
VOLUME_SIZES = (16, 28, 32, 48, 64, 96, 128)  # specs.VolumeSpec.size
NIFTI_SUFFIXES = (".nii", ".nii.gz")
LABELS_CSV = "labels.csv"
MAX_CLASSES = 50  # a label with more distinct values is not a class label
MAX_CATEGORIES = 50  # a text column with more distinct values is free text or an identifier, not a category
MIN_TEXT_CHARS = 40  # median length from which a column is free text
LABEL_WORDS = {"label", "target", "outcome", "diagnosis", "class", "y", "dx", "disease", "result", "finding"}
POSITIVE_WORDS = ("1", "yes", "y", "true", "positive", "pos", "malignant", "present", "abnormal", "disease")
NEGATIVE_WORDS = (
    "0",
    "no",
    "n",
    "false",
    "negative",
    "neg",
    "normal",
    "benign",
    "healthy",
    "absent",
    "none",
    "control",
)
ID_WORDS = {"id", "uid", "key", "identifier", "record", "mrn", "no", "number", "code"}
PATIENT_WORDS = {"patient", "subject", "person", "pid", "participant", "individual", "mrn"}
SUBGROUP_WORDS = {
    "sex",
    "gender",
    "site",
    "center",
    "centre",
    "hospital",
    "ethnicity",
    "race",
    "region",
    "country",
    "band",
    "agegroup",
    "ageband",
}
# Measurements for which 0 is not a possible value, so a 0 is a "not recorded" code (Pima diabetes, UCI heart).
ZERO_IMPLAUSIBLE = {
    "pressure",
    "bp",
    "bmi",
    "glucose",
    "cholesterol",
    "chol",
    "insulin",
    "skin",
    "thickness",
    "weight",
    "height",
    "pulse",
    "hr",
    "hemoglobin",
    "haemoglobin",
    "creatinine",
    "sodium",
    "trestbps",
    "restingbp",
    "albumin",
    "platelets",
}
SENTINELS = (-1, 999, 9999)


class DraftError(ValueError):
    """The source cannot be drafted from; the message says why without quoting data."""


@dataclass
class Column:
    name: str
    numeric: bool
    n: int
    n_null: int
    n_unique: int  # distinct non-null values
    median_chars: float = 0.0

    @property
    def words(self) -> set[str]:
        return words(self.name)

    @property
    def unique(self) -> bool:
        return self.n_null == 0 and self.n_unique == self.n


def words(name: str) -> set[str]:
    """``HeartDisease`` -> {heart, disease}; ``age_band`` -> {age, band, ageband}; ``PatientID`` -> {patient, id}."""
    parts = [p.lower() for p in re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+", name)]
    return {*parts, "".join(parts)}


def profile(frame: pl.DataFrame) -> list[Column]:
    columns = []
    for name, dtype in frame.schema.items():
        series = frame[name]
        numeric = dtype.is_numeric()
        chars = 0.0 if numeric else float(series.cast(pl.String).str.len_chars().median() or 0)
        columns.append(Column(name, numeric, frame.height, series.null_count(), series.drop_nulls().n_unique(), chars))
    return columns


@dataclass
class Draft:
    """Lines of the YAML draft, each key with its comment."""

    lines: list[str]

    def key(self, key: str, value: object, comment: str = "") -> None:
        self.lines.append(f"{key}: {_yaml(value)}" + (f"  # {comment}" if comment else ""))

    def note(self, text: str) -> None:
        self.lines.append(f"# {text}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _yaml(value: object) -> str:
    """A flow YAML value; strings are JSON-quoted (valid YAML whatever characters a column name holds)."""
    return json.dumps(value, ensure_ascii=False)


# -- guesses over a table -----------------------------------------------------------------------------------------
def guess_text(columns: list[Column]) -> Column | None:
    texts = [c for c in columns if not c.numeric and c.median_chars >= MIN_TEXT_CHARS and c.n_unique > c.n // 2]
    return max(texts, key=lambda c: c.median_chars, default=None)


def guess_label(columns: list[Column]) -> Column | None:
    keys = ID_WORDS | PATIENT_WORDS | SUBGROUP_WORDS
    candidates = [c for c in columns if 2 <= c.n_unique <= MAX_CLASSES and c.median_chars < MIN_TEXT_CHARS]
    named = [c for c in candidates if c.words & LABEL_WORDS]
    return named[-1] if named else next((c for c in reversed(candidates) if not c.words & keys), None)


def guess_id(columns: list[Column]) -> Column | None:
    unique = [c for c in columns if c.unique and c.median_chars < MIN_TEXT_CHARS]
    named = [c for c in unique if c.words & ID_WORDS or c.name.lower().endswith("id")]
    return named[0] if named else next((c for c in unique if not c.numeric), None)


def guess_patient(columns: list[Column]) -> Column | None:
    return next((c for c in columns if c.words & PATIENT_WORDS and 1 < c.n_unique < c.n - c.n_null), None)


def guess_subgroups(columns: list[Column]) -> list[Column]:
    return [c for c in columns if c.words & SUBGROUP_WORDS and 2 <= c.n_unique <= 20]


def suspected_null_codes(frame: pl.DataFrame, column: Column) -> tuple[list[int], str]:
    """Codes in a numeric column that probably mean "not recorded", and why (counts only)."""
    series = frame[column.name].drop_nulls()
    codes, why = [], []
    zeros = int((series == 0).sum())
    if zeros and column.words & ZERO_IMPLAUSIBLE:
        codes.append(0)
        why.append(f"0 in {zeros} row(s), implausible for this measurement")
    for code in SENTINELS:
        hits = int((series == code).sum())
        rest = series.filter(series != code)
        if hits and not rest.is_empty() and _outside(code, rest):
            codes.append(code)
            why.append(f"{code} in {hits} row(s), outside the other values")
    return codes, "; ".join(why)


def _outside(code: int, rest: pl.Series) -> bool:
    return (code < 0 and rest.min() >= 0) or (code > 0 and rest.max() * 5 < code)


DEFAULT_MAX_NULL_RATE = TaskSpec.model_fields["max_null_rate"].default


# -- the draft ------------------------------------------------------------------------------------------------------
def draft_spec(task: str, source: Path) -> str:
    if not TASK_NAME.match(task):
        raise DraftError(
            f"task name {task!r} must be lower-case letters, digits and underscores, starting with a letter"
        )
    source = Path(source)
    if source.is_symlink() or not (source.is_file() or source.is_dir()):
        raise DraftError(f"{source}: not a regular file or folder")
    folder, files = (source.parent, [source.name]) if source.is_file() else (source, _batch_files(source))
    draft = Draft([f"# Draft spec for {task}, guessed from {source.name}: check every commented guess."])
    draft.key("name", task)
    suffixes = {Path(f).suffix.lower() for f in files}
    if ".npz" in suffixes:
        _draft_npz(draft, folder, [f for f in files if f.lower().endswith(".npz")])
    elif listed := _listed_volumes(folder, files):
        _draft_volumes(draft, *listed)
    elif suffixes & (IMAGE_SUFFIXES | DICOM_SUFFIXES):
        _draft_images(draft, folder, files, "dicom" if suffixes & DICOM_SUFFIXES else "folder")
    elif ".txt" in suffixes and LABELS_CSV in {Path(f).name for f in files}:
        _draft_txt(draft, folder, files)
    else:
        tables = [f for f in files if Path(f).suffix.lower() in TABLE_SUFFIXES]
        if not tables:
            raise DraftError(f"{source}: no CSV, Parquet, image, DICOM, .npz or .txt + {LABELS_CSV} found")
        _draft_table(draft, _read_tables(folder, tables))
    return draft.text()


def _batch_files(folder: Path) -> list[str]:
    """Regular data files of a batch folder (markers, hidden files, links and FIFOs left out, counted by the
    problem, never named: a DICOM slice's file name may hold the patient's)."""
    found, skipped = [], {}
    for rel in data_files(folder):
        try:
            confined_file(folder, rel.as_posix())
        except UnsafePath as exc:
            skipped[str(exc)] = skipped.get(str(exc), 0) + 1
            continue
        found.append(rel.as_posix())
    for problem, n in sorted(skipped.items()):
        print(f"init: skipped {n} file(s): {problem}", file=sys.stderr)
    return found


def _read_table(folder: Path, rel: str) -> pl.DataFrame:
    try:
        return read_table_file(confined_file(folder, rel), rel)
    except (UnsafePath, BatchRejected) as exc:
        raise DraftError(f"{rel}: {exc}") from None


def _read_tables(folder: Path, rels: list[str]) -> pl.DataFrame:
    frames = [_read_table(folder, rel) for rel in rels]
    try:
        return pl.concat(frames, how="diagonal_relaxed")
    except Exception as exc:  # noqa: BLE001 - polars raises several kinds; the message may quote values
        raise DraftError(f"the tables {rels} have incompatible columns ({type(exc).__name__})") from None


def _draft_table(draft: Draft, frame: pl.DataFrame) -> None:
    columns = profile(frame)
    text = guess_text(columns)
    if text:
        draft.key(
            "modality", "text", f"column {text.name!r} holds free text (median {text.median_chars:.0f} characters)"
        )
        draft.key("text", text.name)
    else:
        draft.key("modality", "tabular", f"{frame.height} rows, {frame.width} columns")
    keys = _draft_keys(draft, frame, [c for c in columns if c is not text])
    if not text:
        _draft_types(draft, frame, [c for c in columns if c.name not in keys])


def _draft_keys(draft: Draft, frame: pl.DataFrame, columns: list[Column]) -> set[str]:
    """label, positive / classes, id, patient_id, subgroups; returns the columns used as keys."""
    label = guess_label(columns)
    if label is None:
        draft.key("label", "label", "NO label column found (2 to 50 distinct values): name yours")
    else:
        why = "its name" if label.words & LABEL_WORDS else "the last column with few distinct values"
        draft.key("label", label.name, f"chosen by {why}; {label.n_null} rows without a label are cases to score")
        _draft_classes(draft, frame, label)
    rest = [c for c in columns if c is not label]
    ident = guess_id(rest)
    if ident is None:
        draft.note(
            f"id: no unique id-like column found, so rows get {ROW_ID} = <batch>/<file>#<row>; name a "
            "unique record id column here if the data has one (re-exports are then recognised)"
        )
    else:
        draft.key("id", ident.name, f"unique in all {ident.n} rows")
    patient = guess_patient([c for c in rest if c is not ident])
    if patient is not None:
        draft.key(
            "patient_id",
            patient.name,
            f"{patient.n_unique} patients for {patient.n} rows: a patient's records share a split",
        )
    subgroups = guess_subgroups([c for c in rest if c not in (ident, patient)])
    if subgroups:
        draft.key("subgroups", [c.name for c in subgroups], "reported separately, chosen by name")
    return {c.name for c in (label, ident, patient) if c is not None}


def _draft_classes(draft: Draft, frame: pl.DataFrame, label: Column) -> None:
    counts = frame[label.name].drop_nulls().map_elements(canonical_label, return_dtype=pl.String).value_counts()
    counts = {k: int(n) for k, n in counts.iter_rows() if k is not None}
    classes = sorted(counts)
    if len(classes) == 2:
        positive = next((c for c in classes if c.lower() in POSITIVE_WORDS), None) or next(
            (c for c, other in (classes, classes[::-1]) if other.lower() in NEGATIVE_WORDS), None
        )
        rarer = min(classes, key=lambda c: (counts[c], c))
        why = (
            "the rarer class"
            if positive is None
            else "by its name, and the rarer class"
            if positive == rarer
            else f"by its name, though {rarer!r} is rarer: check which is the finding"
        )
        positive = positive or rarer
        draft.key("positive", positive, f"{why}; {counts[positive]} of {sum(counts.values())} labelled rows")
    rare = [c for c in classes if counts[c] < 10]
    draft.key(
        "classes",
        classes,
        f"{len(classes)} classes in the data"
        + (f"; {len(rare)} with fewer than 10 rows (every class must reach the training split)" if rare else ""),
    )


def _draft_types(draft: Draft, frame: pl.DataFrame, columns: list[Column]) -> None:
    codes = {c.name: suspected_null_codes(frame, c) for c in columns if c.numeric}
    codes = {k: v for k, v in codes.items() if v[0]}
    missing = {c.name: _missing_share(frame, c, codes.get(c.name, ([], ""))[0]) for c in columns}
    # A declared column must meet max_null_rate; a sparser one is left undeclared, so it is kept with missing handling.
    sparse = [c for c in columns if missing[c.name] > DEFAULT_MAX_NULL_RATE]
    dense = [c for c in columns if c not in sparse]
    numeric = [c for c in dense if c.numeric]
    categorical = [c for c in dense if not c.numeric and c.n_unique <= MAX_CATEGORIES]
    excluded = [c for c in columns if not c.numeric and c.n_unique > MAX_CATEGORIES]
    if numeric:
        draft.key("numeric", [c.name for c in numeric], "numeric in the data")
    if categorical:
        draft.key("categorical", [c.name for c in categorical], f"text with at most {MAX_CATEGORIES} distinct values")
    if excluded:
        draft.key(
            "exclude",
            [c.name for c in excluded],
            "many distinct text values: free text or identifiers, never features unless declared",
        )
    if codes:
        draft.lines.append("null_values:  # codes suspected to mean 'not recorded'")
        for name, (values, why) in codes.items():
            draft.lines.append(f"  {_yaml(name)}: {_yaml(values)}  # {why}")
    if sparse:
        shares = ", ".join(f"{c.name} ({missing[c.name]:.0%})" for c in sparse)
        draft.note(
            f"over half missing, so not declared (kept with missing indicators; declaring one makes it "
            f"required): {shares}"
        )


def _missing_share(frame: pl.DataFrame, column: Column, codes: list[int]) -> float:
    """The share of rows without a value once the suspected 'not recorded' codes count as missing."""
    coded = int(frame[column.name].cast(pl.Float64).is_in([float(c) for c in codes]).sum()) if codes else 0
    return (column.n_null + coded) / column.n if column.n else 0.0


# -- folders of files -----------------------------------------------------------------------------------------------
def _labels(draft: Draft, folder: Path, files: list[str]) -> pl.DataFrame | None:
    labels = next((f for f in files if Path(f).name == LABELS_CSV), None)
    if labels is None:
        draft.note(f"no {LABELS_CSV}: every file is an unlabelled case to score")
        return None
    return _read_table(folder, labels)


def _draft_txt(draft: Draft, folder: Path, files: list[str]) -> None:
    n = sum(f.lower().endswith(".txt") for f in files)
    draft.key("modality", "text", f"{n} .txt files described by {LABELS_CSV}")
    draft.key("text", "text", "the name the text of each .txt file gets")
    frame = _labels(draft, folder, files)
    _draft_keys(draft, frame, [c for c in profile(frame) if c.name != "file"])


def _draft_images(draft: Draft, folder: Path, files: list[str], fmt: str) -> None:
    suffixes = DICOM_SUFFIXES if fmt == "dicom" else IMAGE_SUFFIXES
    images = [f for f in files if Path(f).suffix.lower() in suffixes]
    draft.key("modality", "image", f"{len(images)} {fmt.upper() if fmt == 'dicom' else 'PNG / JPEG'} files")
    frame = _labels(draft, folder, files)
    if frame is not None:
        file_column = _file_column(frame, suffixes)
        _draft_keys(draft, frame, [c for c in profile(frame) if c.name != file_column])
    else:
        file_column = "file"
        draft.key("label", "label")
        draft.key("id", "id", "the file's path")
    size, channels = _image_shape(folder, images, fmt)
    draft.lines.append("image:")
    draft.lines.append(f"  format: {fmt}")
    draft.lines.append(f"  file_column: {_yaml(file_column)}  # the column of {LABELS_CSV} naming each file")
    draft.lines.append(f"  size: {size}  # the largest cache size not above the smallest side seen")
    draft.lines.append(f"  channels: {channels}")


def _file_column(frame: pl.DataFrame, suffixes: set[str] | tuple[str, ...]) -> str:
    """The labels.csv column whose values are file names ending in one of ``suffixes`` (``file`` when none is)."""
    for column in frame.columns:
        names = frame[column].cast(pl.String).str.to_lowercase()
        if (names.str.contains("(" + "|".join(map(re.escape, sorted(suffixes))) + ")$").mean() or 0) > 0.9:
            return column
    return "file"


def _folder_column(folder: Path, frame: pl.DataFrame) -> str | None:
    """The labels.csv column whose values are (mostly) folders of the batch: DICOM series, one per row."""
    for column in frame.columns:
        names = frame[column].cast(pl.String).drop_nulls().to_list()
        if names and sum(_is_batch_folder(folder, n) for n in names) > 0.9 * frame.height:
            return column
    return None


def _is_batch_folder(folder: Path, rel: str) -> bool:
    try:
        return confined_path(folder, rel.rstrip("/")).is_dir()
    except UnsafePath:
        return False


def _listed_volumes(folder: Path, files: list[str]) -> tuple[str, pl.DataFrame, str, int] | None:
    """(format, labels.csv, its file column, volumes) for NIfTI files or DICOM series folders that a labels.csv
    names; ``None`` for any other source."""
    nifti = [f for f in files if f.lower().endswith(NIFTI_SUFFIXES)]
    labels = next((f for f in files if Path(f).name == LABELS_CSV), None)
    if labels is None:
        if nifti:
            raise DraftError(f"{len(nifti)} NIfTI files but no {LABELS_CSV} naming each volume in a 'file' column")
        return None
    frame = _read_table(folder, labels)
    if nifti:
        return "nifti", frame, _file_column(frame, NIFTI_SUFFIXES), len(nifti)
    column = _folder_column(folder, frame)
    return None if column is None else ("dicom_series", frame, column, frame.height)


def _draft_volumes(draft: Draft, fmt: str, frame: pl.DataFrame, file_column: str, n: int) -> None:
    what = f"{n} NIfTI files" if fmt == "nifti" else f"{n} DICOM series folders"
    draft.key("modality", "volume", f"{what} named by {LABELS_CSV}")
    _draft_keys(draft, frame, [c for c in profile(frame) if c.name != file_column])
    draft.lines.append("volume:")
    draft.lines.append(f"  format: {fmt}")
    draft.lines.append(f"  file_column: {_yaml(file_column)}  # the column of {LABELS_CSV} naming each volume")
    draft.lines.append("  # size: 28 (the default; 64 for finer detail), resampled to size^3 voxels")
    draft.lines.append(
        "  # intensity: {ct_window: [-1000, 400]} for CT in HU, {percentile: [0.5, 99.5]} for MR; "
        "unset: each volume's own range"
    )


def _image_shape(folder: Path, images: list[str], fmt: str) -> tuple[int, int]:
    """(cache size, channels) from the headers of up to 20 images (no pixel decoded)."""
    sides, channels = [], 1
    for rel in images[:20]:
        try:
            path = confined_file(folder, rel)
            if fmt == "dicom":
                import pydicom

                ds = pydicom.dcmread(path, stop_before_pixels=True)
                sides.append(min(int(ds.Rows), int(ds.Columns)))
                channels = max(channels, int(getattr(ds, "SamplesPerPixel", 1)))
            else:
                from PIL import Image

                with Image.open(path) as im:
                    sides.append(min(im.size))
                    channels = max(channels, 3 if im.mode in ("RGB", "RGBA", "P") else 1)
        except Exception:  # noqa: BLE001 - an unreadable image is the reader's to report
            continue
    smallest = min(sides, default=IMAGE_SIZES[0])
    return max((s for s in IMAGE_SIZES if s <= smallest), default=IMAGE_SIZES[0]), min(channels, 3)


def _draft_npz(draft: Draft, folder: Path, files: list[str]) -> None:
    shapes, labels = {}, []
    for rel in files:
        try:
            path = confined_file(folder, rel)
            with np.load(path, allow_pickle=False) as npz:
                labels += [np.asarray(npz[k]) for k in npz.files if k.endswith("_labels")]
            shapes.update(_npz_shapes(path))
        except (UnsafePath, ValueError, OSError, zipfile.BadZipFile) as exc:
            raise DraftError(f"{rel}: not a readable MedMNIST npz ({type(exc).__name__})") from None
    shape = next((s for k, s in shapes.items() if k.endswith("_images")), None)
    if shape is None or len(shape) not in (3, 4):
        raise DraftError(f"{files[0]}: no (N, H, W[, C]) or (N, D, H, W) *_images array found")
    volume = len(shape) == 4 and shape[3] not in (1, 3)  # MedMNIST 3D: (N, D, H, W), no channel axis
    multi = any(a.ndim == 2 and a.shape[1] > 1 for a in labels)
    n = sum(s[0] for k, s in shapes.items() if k.endswith("_images"))
    noun = "volumes" if volume else "images"
    draft.key(
        "modality",
        "volume" if volume else "image",
        f"MedMNIST npz: {n} {noun} in {len(files)} file(s); its train/val/test split is kept",
    )
    draft.key("label", "label", "the class index as text")
    if labels and not multi:
        classes = sorted({str(int(v)) for a in labels for v in np.ravel(a)}, key=int)
        draft.key("classes", classes, f"{len(classes)} class indices")
        if len(classes) == 2:
            draft.key("positive", classes[1], "the higher index")
    draft.key("id", "id", "<file>_<split>_<index>")
    if volume:
        _npz_volume_section(draft, min(shape[1:]))
        return
    draft.lines.append("image:")
    draft.lines.append("  format: npz")
    side = shape[1]
    size = side if side in IMAGE_SIZES else max((s for s in IMAGE_SIZES if s <= side), default=IMAGE_SIZES[0])
    draft.lines.append(
        f"  size: {size}"
        + ("" if side in IMAGE_SIZES else f"  # the images are {side} px: npz images must match the size exactly")
    )
    draft.lines.append(f"  channels: {3 if len(shape) == 4 and shape[3] == 3 else 1}")
    if multi:
        draft.lines.append("  multi_label: true  # the labels hold one 0/1 column per finding")


def _npz_volume_section(draft: Draft, side: int) -> None:
    """``volume:`` for a MedMNIST 3D npz whose smallest axis is ``side`` voxels (its volumes must be at least
    ``size`` along every axis)."""
    size = max((s for s in VOLUME_SIZES if s <= side), default=VOLUME_SIZES[0])
    draft.lines.append("volume:")
    draft.lines.append("  format: npz")
    draft.lines.append(f"  size: {size}" + ("" if size == side else f"  # the volumes are {side} voxels on a side"))


def _npz_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Array shapes from the npy headers inside the zip, without loading the images."""
    shapes = {}
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            with zf.open(name) as fh:
                version = np.lib.format.read_magic(fh)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shapes[name.removesuffix(".npy")] = read(fh)[0]
    return shapes


# -- command line (its arguments: meddiag_pipelines/__main__.py) ----------------------------------------------------
def run(args: argparse.Namespace) -> int:
    try:
        text = draft_spec(args.task, args.source)
    except DraftError as exc:
        print(f"init: {exc}", file=sys.stderr)
        return 2
    if args.out:
        atomic_write_text(args.out, text)
        print(f"init: draft spec written to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
