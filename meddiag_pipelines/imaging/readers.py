"""Image readers: one per format behind one interface (no Dagster here).

``read_image_batch(batch_dir, spec)`` dispatches on ``spec.image.format`` (or, without it, on the format
detected from what landed: :func:`detect_format`) and returns an
:class:`ImageReadResult`: one record per readable image plus a list of ``(file, problem)`` for every file
that could not be used. One bad file never raises; a batch that cannot be read at all (an unreadable or
malformed ``labels.csv``, a batch folder that does not exist) raises :class:`ImageBatchError`.

Formats
-------
``folder``  PNG / JPEG files and ``labels.csv`` (columns: ``spec.image.file_column`` = path relative to the
            batch folder, ``spec.label``, optional ``spec.id`` (else the id is the relative path),
            ``spec.patient_id``, ``spec.subgroups``). Without ``labels.csv`` every image in the folder is
            an unlabelled case to score. With it, image files that the CSV does not list are rejected
            ("not listed"), so a typo never turns a labelled image into an unlabelled one silently.
``dicom``   DICOM files and the same ``labels.csv``. Pixel values go through the Modality LUT (rescale
            slope / intercept), then the VOI LUT or window centre / width, then to [0, 1]; MONOCHROME1 is
            inverted so that bright always means dense. Multi-frame files: ONE record per file, the middle
            frame (``source`` = ``file.dcm#<frame>``) -- a per-file label applies to the study, and a
            record per frame would leak frames of one file across splits whenever ``patient_id`` is
            missing (``read_dicom_batch(..., frames="all")`` gives one record per frame instead, with ids
            ``<id>#<frame>``). Without a ``patient_id`` column the DICOM PatientID is used. Compressed
            transfer syntaxes are decoded when pydicom can do it with the installed packages (RLE, and
            JPEG / JPEG 2000 through Pillow); others are rejected naming the transfer syntax.
``npz``     MedMNIST layout: ``{train,val,test}_images`` uint8 ``(N,H,W)`` or ``(N,H,W,3)`` and
            ``{train,val,test}_labels`` ``(N,1)`` class indices or ``(N,k)`` 0/1 (``spec.image.multi_label``).
            Every ``*.npz`` in the batch folder is read with ``allow_pickle=False``. Each record keeps the
            npz's own split in ``predefined_split``; ``source`` = ``file.npz#<split>:<i>``; ``id`` =
            ``<hash>_<split>_<i>``, the hash over the batch and the file's path (:func:`npz_record_id`).
            Labels: the class index as a string (``"0"``, ``"1"``...); multi-label: the ``|``-joined
            indices of the positive findings in ascending order (``"0|5"``), and ``""`` for a labelled
            image with no finding (see :func:`multilabel_matrix`). An images key without its labels key
            gives unlabelled records (label null). Unknown keys, object arrays, members that are not
            ``.npy`` arrays (a raw pickle), bad shapes / dtypes are rejected for the whole file (the file is
            the unit: the other npz files of the batch are read).

Safety: ``labels.csv`` and every path it names are confined to the batch folder before any stat or open (no
absolute paths, no ``..``, no symbolic links anywhere on the way, regular files only: a FIFO is never opened);
``./x.png`` and ``sub/x.png`` name files of the batch. Before any pixel is decoded a file is refused when it is
larger on disk than ``landing.max_file_mb``, when its header declares more than ``spec.image.max_pixels`` pixels,
or when its decoded size (PNG / JPEG: width x height x bands x bytes; DICOM: Rows x Columns x NumberOfFrames x
SamplesPerPixel x BitsAllocated / 8, a deflated data set also bounded while it inflates; npz: its members' sizes
from the zip directory) exceeds ``image.max_decoded_mb_per_file``, or would take the batch over
``image.max_decoded_mb_per_batch``.

Each image is decoded once at ingestion: its record carries the sha256 of its native pixels and the intensity
range of the decoded image (``intensity_min`` / ``intensity_max``, after windowing, in [0, 1]).
:func:`load_pixels` given that sha256 refuses a file whose pixels changed since, so the pixels validated are the
pixels cached and trained on. Labels are text in :func:`~meddiag_pipelines.specs.canonical_label` form.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import warnings
import zlib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO, Literal

import numpy as np
import polars as pl

from meddiag_pipelines.ingestion.landing import INTERNAL_PREFIX, UnsafePath, confined_file, display_name
from meddiag_pipelines.specs import canonical_label
from meddiag_pipelines.tabular.readers import first_repeat, lf_line_endings

if TYPE_CHECKING:
    from meddiag_pipelines.specs import ImageSpec, TaskSpec

LABELS_CSV = "labels.csv"
FOLDER_SUFFIXES = {".png", ".jpg", ".jpeg"}
DICOM_SUFFIXES = {".dcm", ".dicom"}
NPZ_SPLITS = ("train", "val", "test")
# A DICOM file may hold many frames: its whole pixel data is bounded by this many times max_pixels.
DICOM_TOTAL_PIXELS_FACTOR = 16
INTENSITY_MIN = "intensity_min"  # darkest and brightest value of the decoded image (after windowing, in [0, 1])
INTENSITY_MAX = "intensity_max"
FORMATS = ("folder", "dicom", "npz")
_EXPECTS = {"folder": "PNG/JPEG files and a labels.csv", "dicom": "DICOM files (and a labels.csv)",
            "npz": "MedMNIST .npz files"}  # fmt: skip
_MB = 2**20

_NPZ_SOURCE = re.compile(r"^(?P<file>.+\.npz)#(?P<split>train|val|test):(?P<i>\d+)$")
_FRAME_SOURCE = re.compile(r"^(?P<file>.+)#(?P<frame>\d+)$")


class ImageBatchError(ValueError):
    """A whole batch that cannot be read (its labels.csv is unreadable or lacks a required column)."""


class ImageRejected(ValueError):
    """One image that cannot be used; the message is the problem recorded for it."""


@dataclass
class ImageReadResult:
    """``records``: one row per image (see :func:`records_schema`); ``rejected``: (file, problem)."""

    records: pl.DataFrame
    rejected: list[tuple[str, str]] = field(default_factory=list)


def records_schema(spec: TaskSpec) -> dict[str, pl.DataType]:
    schema: dict[str, pl.DataType] = {"id": pl.Utf8, "label": pl.Utf8, "patient_id": pl.Utf8}
    for col in spec.subgroups:
        schema.setdefault(col, pl.Utf8)
    schema.update(
        {
            "source": pl.Utf8,
            "sha256": pl.Utf8,
            "height": pl.Int64,
            "width": pl.Int64,
            "channels": pl.Int64,
            "bit_depth": pl.Int64,
            "predefined_split": pl.Utf8,
            INTENSITY_MIN: pl.Float64,
            INTENSITY_MAX: pl.Float64,
        }
    )
    return schema


def _image_spec(spec: TaskSpec) -> ImageSpec:
    if spec.image is None:
        raise ImageBatchError(f"task {spec.name!r} has no image section")
    return spec.image


def _frame(rows: list[dict], spec: TaskSpec) -> pl.DataFrame:
    schema = records_schema(spec)
    return pl.DataFrame([{k: r.get(k) for k in schema} for r in rows], schema=schema, orient="row")


def _sha256(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def _pixel_fields(native: np.ndarray, unit: np.ndarray, channels: int) -> dict:
    """The record fields of one decoded image: the hash of its native pixels, the range of what is cached."""
    cached = _to_channels(unit, channels)
    return {"sha256": _sha256(native), INTENSITY_MIN: float(cached.min()), INTENSITY_MAX: float(cached.max())}


def _mb(nbytes: float) -> str:
    return f"{nbytes / _MB:.1f} MB"


@dataclass
class DecodedBudget:
    """Decoded bytes allowed per file and per batch (``image.max_decoded_mb_per_*``), taken before decoding."""

    per_file: float
    per_batch: float
    used: float = 0.0

    @classmethod
    def of(cls, spec: TaskSpec) -> DecodedBudget:
        image = _image_spec(spec)
        return cls(image.max_decoded_mb_per_file * _MB, image.max_decoded_mb_per_batch * _MB)

    def take(self, nbytes: float, what: str) -> None:
        if nbytes > self.per_file:
            raise ImageRejected(f"{what} would decode to {_mb(nbytes)}, over image.max_decoded_mb_per_file "
                                f"({_mb(self.per_file)})")  # fmt: skip
        if self.used + nbytes > self.per_batch:
            raise ImageRejected(f"{what} would decode to {_mb(nbytes)}, taking the batch over "
                                f"image.max_decoded_mb_per_batch ({_mb(self.per_batch)}); land it in another batch")  # fmt: skip
        self.used += nbytes


# --------------------------------------------------------------------------------------------- paths


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


def _walk(batch_dir: Path) -> Iterator[tuple[str, Path]]:
    """Every entry under the batch folder (links not followed), as (relative posix path, path)."""
    for path in sorted(batch_dir.rglob("*")):
        rel = path.relative_to(batch_dir).as_posix()
        if any(part.startswith((".", "_")) for part in PurePosixPath(rel).parts):
            continue  # hidden files, landing markers such as _READY / _ingested
        if path.is_symlink() or path.is_file():
            yield rel, path


# --------------------------------------------------------------------------------------------- labels


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
    file_col = _image_spec(spec).file_column
    if file_col not in df.columns:
        # Its first row is then likely data (a file without a header row): its values are never quoted.
        named = ", ".join(dict.fromkeys(c for c in (file_col, spec.label) if c))
        raise ImageBatchError(f"{LABELS_CSV} has no header row with the columns {named}: its first row does not "
                              f"name the file column {file_col!r} (image.file_column; the row's {len(df.columns)} "
                              "values are not shown)")  # fmt: skip
    internal = [c for c in df.columns if c.startswith(INTERNAL_PREFIX)]
    if internal:
        raise ImageBatchError(f"{LABELS_CSV}: {len(internal)} columns use the pipeline's reserved prefix "
                              f"{INTERNAL_PREFIX!r} (rename them)")  # fmt: skip
    return df.with_columns(pl.col(c).str.strip_chars().replace("", None) for c in df.columns)


def _check_labels_header(text: str) -> None:
    """A repeated column name would be renamed by Polars and one of the two used silently. Told by position: in a
    file without a header row the names are a row of data."""
    header = next(csv.reader(io.StringIO(text)), [])
    repeat = first_repeat(header)
    if repeat:
        i, name = repeat
        raise ImageBatchError(f"{LABELS_CSV}: column {i} repeats the name of column {header.index(name) + 1}; "
                              "which of them to use is ambiguous (rename one)")


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
    present = dict(_walk(batch_dir))

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

    file_col = _image_spec(spec).file_column
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


# --------------------------------------------------------------------------------------------- folder


_BAND_BYTES = {"I;16": 2, "I;16B": 2, "I;16L": 2, "I": 4, "F": 4}


_SUFFIX_FORMAT = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
_SIGNATURES = {"PNG": (b"\x89PNG\r\n\x1a\n",), "JPEG": (b"\xff\xd8\xff",), "GIF": (b"GIF87a", b"GIF89a"),
               "TIFF": (b"II*\x00", b"MM\x00*"), "BMP": (b"BM",), "a zip archive": (b"PK\x03\x04",)}  # fmt: skip


def _signature(head: bytes) -> str:
    """The format that a file's first bytes announce, in words."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[128:132] == b"DICM":
        return "DICOM"
    return next((name for name, magic in _SIGNATURES.items() if head.startswith(magic)), "no known image format")


def _expected_format(fh: BinaryIO, suffix: str) -> str:
    """The Pillow format that the file's extension names, once its signature (first bytes) is that format's: a
    GIF, BMP, WebP or TIFF saved as ``.png`` is refused, not decoded by whatever Pillow recognises."""
    expected = _SUFFIX_FORMAT.get(suffix.lower())
    if expected is None:
        raise ImageRejected(f"extension {suffix or '(none)'!r}: the folder format reads .png, .jpg and .jpeg files")
    found = _signature(fh.read(132))
    fh.seek(0)
    if found != expected:
        raise ImageRejected(f"file signature mismatch: its first bytes are {found}, not {expected} as its "
                            f"{suffix} extension says")  # fmt: skip
    return expected


def _open_pil(path: Path, max_pixels: int, budget: DecodedBudget):
    """The image decoded, after its signature, declared size and decoded size passed; one handle throughout."""
    with open(path, "rb") as fh:
        return _decode_pil(fh, _expected_format(fh, path.suffix), max_pixels, budget)


def _decode_pil(fh: BinaryIO, fmt: str, max_pixels: int, budget: DecodedBudget):
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(fh, formats=[fmt])
            w, h = im.size
            if w * h > max_pixels:
                raise ImageRejected(f"decompression-bomb guard: {w}x{h} = {w * h} pixels > max_pixels {max_pixels}")
            budget.take(w * h * len(im.getbands()) * _BAND_BYTES.get(im.mode, 1), f"a {w}x{h} {im.format} image")
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
            im.load()
            im = ImageOps.exif_transpose(im)
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected("decompression-bomb guard: Pillow refused the image's declared size") from exc
    except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError...
        raise ImageRejected("not a readable PNG / JPEG image (corrupt, truncated or another format)") from exc
    return im


def _pil_info(im) -> tuple[np.ndarray, int, int]:
    """(native pixel array, channels, bit depth)."""
    arr = np.asarray(im)
    mode = im.mode
    bits = {"1": 1, "I;16": 16, "I;16B": 16, "I;16L": 16, "I": 32, "F": 32}.get(mode, 8)
    if mode == "I" and arr.size and int(arr.min()) >= 0 and int(arr.max()) <= 65535:
        bits = 16  # 16-bit PNGs open as mode I in some Pillow versions
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    return arr, channels, bits


def _read_one_png(path: Path, spec: TaskSpec, budget: DecodedBudget) -> dict:
    image = _image_spec(spec)
    im = _open_pil(path, image.max_pixels, budget)
    arr, channels, bits = _pil_info(im)
    return {
        **_pixel_fields(arr, _pil_to_unit(im), image.channels),
        "height": int(arr.shape[0]),
        "width": int(arr.shape[1]),
        "channels": int(channels),
        "bit_depth": int(bits),
    }


def _pil_to_unit(im) -> np.ndarray:
    """A PIL image as float32 (H, W, c) in [0, 1], c in {1, 3}."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im).astype(np.float32)
        scale = 65535.0 if mode != "I" or arr.max(initial=0) <= 65535 else float(arr.max())
        return np.clip(arr / scale, 0, 1)[..., None]
    if mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        return ((arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr))[..., None]
    if mode in ("1", "L", "LA", "P") and not (mode == "P" and "transparency" in im.info):
        if mode == "P":
            im = im.convert("RGB")
            return np.asarray(im, dtype=np.float32) / 255.0
        im = im.convert("L")
        return (np.asarray(im, dtype=np.float32) / 255.0)[..., None]
    im = im.convert("RGB")
    return np.asarray(im, dtype=np.float32) / 255.0


def read_folder_batch(batch_dir: Path, spec: TaskSpec) -> ImageReadResult:
    todo, rejected = _listed_files(batch_dir, spec, FOLDER_SUFFIXES, _read_labels(batch_dir, spec))
    budget = DecodedBudget.of(spec)
    rows: list[dict] = []
    for rel, meta in todo:
        try:
            info = _read_one_png(_image_file(batch_dir, rel, spec), spec, budget)
        except ImageRejected as exc:
            rejected.append((rel, str(exc)))
            continue
        rows.append({**meta, **info, "source": rel, "predefined_split": None})
    return ImageReadResult(_frame(rows, spec), rejected)


# --------------------------------------------------------------------------------------------- dicom


_DEFLATED = "1.2.840.10008.1.2.1.99"
_DEFLATE_CHUNK = 1 << 14  # input read at once: deflate expands at most ~1032x, so under 17 MB out per chunk
_DICOM_HEADER_MAX = 1 << 24  # the inflated elements before the pixel data of a deflated file


def _dcm_header(fh: BinaryIO):
    """The data set up to (not including) its pixel data, never inflating a deflated file beyond its header."""
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import _at_pixel_data, _read_file_meta_info, read_dataset, read_preamble

    fh.seek(0)
    read_preamble(fh, force=False)
    meta = _read_file_meta_info(fh)
    if str(meta.get("TransferSyntaxUID", "")) != _DEFLATED:
        fh.seek(0)
        return pydicom.dcmread(fh, stop_before_pixels=True)
    head = zlib.decompressobj(-zlib.MAX_WBITS).decompress(fh.read(_DEFLATE_CHUNK * 64), _DICOM_HEADER_MAX)
    ds = read_dataset(DicomBytesIO(head), is_implicit_VR=False, is_little_endian=True, stop_when=_at_pixel_data)
    ds.file_meta = meta
    return ds


def _inflated_size_within(fh: BinaryIO, limit: float) -> bool:
    """Whether a deflated DICOM inflates to at most ``limit`` bytes, counted while streaming (nothing kept)."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    fh.seek(0)
    read_preamble(fh, force=False)
    _read_file_meta_info(fh)
    inflater, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
    while chunk := fh.read(_DEFLATE_CHUNK):
        total += len(inflater.decompress(chunk))
        if total > limit:
            return False
    return True


def _decoded_dicom_bytes(ds) -> tuple[int, int, int]:
    """(frames, rows x columns, decoded bytes) from the header: Rows*Columns*NumberOfFrames*SamplesPerPixel*
    BitsAllocated/8."""
    if "Rows" not in ds or "Columns" not in ds:
        raise ImageRejected("DICOM without pixel data (no Rows / Columns: not an image)")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.get("BitsAllocated", 16) or 16)
    except Exception as exc:  # noqa: BLE001
        raise ImageRejected("DICOM without valid Rows / Columns / NumberOfFrames / SamplesPerPixel") from exc
    if rows <= 0 or cols <= 0 or frames <= 0 or samples <= 0 or bits <= 0:
        raise ImageRejected(f"DICOM with an empty image: {rows}x{cols}, {frames} frame(s)")
    return frames, rows * cols, -(-rows * cols * frames * samples * bits // 8)


def _dcm_open(path: Path, spec: TaskSpec, budget: DecodedBudget):
    """The full data set and its number of frames, once its header has passed every size guard. One handle
    throughout: the bytes checked are the bytes decoded, even if the file is replaced meanwhile."""
    with open(path, "rb") as fh:
        return _dcm_read(fh, spec, budget)


def _dcm_read(fh: BinaryIO, spec: TaskSpec, budget: DecodedBudget):
    import pydicom
    from pydicom.errors import InvalidDicomError

    max_pixels = _image_spec(spec).max_pixels
    try:
        header = _dcm_header(fh)
    except InvalidDicomError as exc:
        raise ImageRejected("not a DICOM file (no DICM prefix or file meta information)") from exc
    except Exception as exc:  # noqa: BLE001 - pydicom / zlib messages can quote header bytes
        raise ImageRejected("unreadable or truncated DICOM header") from exc
    frames, pixels, nbytes = _decoded_dicom_bytes(header)
    if pixels > max_pixels or pixels * frames > max_pixels * DICOM_TOTAL_PIXELS_FACTOR:
        raise ImageRejected(f"decompression-bomb guard: {frames} frame(s) of {pixels} pixels exceed max_pixels {max_pixels}")
    budget.take(nbytes, f"DICOM pixel data of {frames} frame(s) x {pixels} pixels")
    tsyntax = header.file_meta.get("TransferSyntaxUID") if hasattr(header, "file_meta") else None
    if str(tsyntax or "") == _DEFLATED and not _inflated_size_within(fh, nbytes + _DICOM_HEADER_MAX):
        raise ImageRejected(f"deflated DICOM inflates beyond its declared pixel data ({_mb(nbytes)}) plus header")
    _check_decoder(tsyntax)
    try:
        fh.seek(0)
        ds = pydicom.dcmread(fh)
    except Exception as exc:  # noqa: BLE001
        raise ImageRejected("unreadable or truncated DICOM") from exc
    if not any(t in ds for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageRejected("DICOM without pixel data (no PixelData element)")
    return ds, frames


def _check_decoder(tsyntax) -> None:
    """Refuse, in plain words, a transfer syntax whose pixel data cannot be decoded here."""
    if tsyntax is None:
        return
    from pydicom.uid import UID

    uid = UID(str(tsyntax))
    if not uid.is_transfer_syntax:
        raise ImageRejected("the file's TransferSyntaxUID is not a known DICOM transfer syntax")
    if not uid.is_compressed:
        return
    from pydicom.pixels.decoders.base import get_decoder

    try:
        decoder = get_decoder(uid)
    except NotImplementedError as exc:
        raise ImageRejected(f"no pixel-data decoder for transfer syntax {uid.name!r}") from exc
    if not decoder.is_available:
        raise ImageRejected(
            f"compressed transfer syntax {uid.name!r} cannot be decoded with the installed packages "
            f"(needs one of: {'; '.join(decoder.missing_dependencies)})"
        )


def _dcm_frame(ds, frame: int) -> np.ndarray:
    from pydicom.pixels import pixel_array

    try:
        arr = pixel_array(ds, index=frame)
    except Exception as exc:  # noqa: BLE001 - pydicom's messages can quote header values
        raise ImageRejected("cannot decode the pixel data (truncated, corrupt, or inconsistent with its header)") from exc
    return arr


def _dcm_to_unit(arr: np.ndarray, ds) -> np.ndarray:
    """One decoded frame as float32 (H, W, c) in [0, 1] after Modality LUT, VOI LUT / window, MONOCHROME1."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if arr.ndim == 3:  # colour: pydicom has already converted YBR to RGB
        bits = int(ds.get("BitsStored", 8) or 8)
        return np.clip(arr.astype(np.float32) / float(2**bits - 1), 0, 1)
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = apply_color_lut(arr, ds).astype(np.float32)
        return np.clip(rgb / float(rgb.max() or 1), 0, 1)
    values = apply_modality_lut(arr, ds)
    voi = ds.get("VOILUTSequence")
    lo = hi = None
    if voi and voi[0].get("LUTDescriptor") is not None and voi[0].get("LUTData") is not None:
        if not np.issubdtype(values.dtype, np.integer):
            values = np.rint(values).astype(np.int64)  # a VOI LUT is indexed by stored integer values
        out = apply_voi_lut(values, ds, prefer_lut=True)
        lo, hi = _voi_lut_range(ds)
        values = out
    elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        values = apply_voi_lut(values, ds, prefer_lut=False)
        lo, hi = _window_output_range(ds)
    values = np.asarray(values, dtype=np.float64)
    if lo is None or hi is None or hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    unit = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    unit = np.clip(unit, 0.0, 1.0).astype(np.float32)
    if photometric == "MONOCHROME1":
        unit = 1.0 - unit
    return unit[..., None]


def _voi_lut_range(ds) -> tuple[float, float]:
    """Smallest and largest entry of the first VOI LUT (the LUT often uses fewer bits than it declares)."""
    item = ds.VOILUTSequence[0]
    data = item.LUTData
    if isinstance(data, bytes | bytearray):
        big = str(ds.file_meta.get("TransferSyntaxUID", "")) == "1.2.840.10008.1.2.2" if hasattr(ds, "file_meta") else False
        lut = np.frombuffer(data, dtype=">u2" if big else "<u2").astype(np.float64)
    else:
        lut = np.asarray(data if isinstance(data, list | tuple) else [data], dtype=np.float64)
    return float(lut.min()), float(lut.max())


def _window_output_range(ds) -> tuple[float, float]:
    """The output range pydicom's apply_windowing maps onto (mirrors pydicom.pixels.processing)."""
    bits = int(ds.BitsStored)
    if ds.get("ModalityLUTSequence"):
        lo, hi = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    return min(lo, hi), max(lo, hi)


def _dcm_decode(ds, frame: int) -> tuple[np.ndarray, np.ndarray]:
    """(native frame, float32 (H, W, c) in [0, 1]) through the whole LUT chain, so a bad LUT rejects now."""
    arr = _dcm_frame(ds, frame)
    try:
        return arr, _dcm_to_unit(arr, ds)
    except Exception as exc:  # noqa: BLE001 - malformed LUT / window values; their message quotes them
        raise ImageRejected("the DICOM's rescale, window or LUT values are malformed and cannot be applied") from exc


def read_dicom_batch(
    batch_dir: Path, spec: TaskSpec, frames: Literal["middle", "all"] = "middle"
) -> ImageReadResult:
    channels = _image_spec(spec).channels
    labels = _read_labels(batch_dir, spec)
    # Without labels.csv, DICOM files without an extension are common: take every file but hidden ones.
    todo, rejected = _listed_files(batch_dir, spec, DICOM_SUFFIXES if labels is not None else None, labels)
    patient_from_file = spec.patient_id is None or labels is None or spec.patient_id not in labels.columns
    budget = DecodedBudget.of(spec)
    rows: list[dict] = []
    for rel, meta in todo:
        try:
            ds, n_frames = _dcm_open(_image_file(batch_dir, rel, spec), spec, budget)
            wanted = [n_frames // 2] if frames == "middle" else list(range(n_frames))
            decoded = [(f, *_dcm_decode(ds, f)) for f in wanted]
        except ImageRejected as exc:
            rejected.append((rel, str(exc)))
            continue
        patient = meta["patient_id"]
        if patient is None and patient_from_file:
            patient = str(ds.get("PatientID") or "") or None
        for f, arr, unit in decoded:
            multi = n_frames > 1
            rows.append(
                {
                    **meta,
                    **_pixel_fields(arr, unit, channels),
                    "id": f"{meta['id']}#{f}" if multi and frames == "all" else meta["id"],
                    "patient_id": patient,
                    "source": f"{rel}#{f}" if multi else rel,
                    "height": int(arr.shape[0]),
                    "width": int(arr.shape[1]),
                    "channels": int(ds.get("SamplesPerPixel", 1) or 1),
                    "bit_depth": int(ds.get("BitsStored", 0) or 0),
                    "predefined_split": None,
                }
            )
    return ImageReadResult(_frame(rows, spec), rejected)


# --------------------------------------------------------------------------------------------- npz


def _npz_members(fh: BinaryIO) -> dict[str, int]:
    """Key -> uncompressed size of every array in the npz, read from the zip directory (nothing inflated; a
    member never inflates beyond the size its directory entry declares)."""
    try:
        with zipfile.ZipFile(fh) as zf:
            return {info.filename.removesuffix(".npy"): info.file_size for info in zf.infolist()}
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ImageRejected("not a valid npz file (its zip directory cannot be read)") from exc


def _npz_member(npz, key: str) -> np.ndarray:
    """One member of an open npz as an array; a member that is not in the .npy format (a raw pickle, any other
    bytes) comes back from NumPy as bytes, never unpickled, and rejects its file."""
    value = npz[key]
    if not isinstance(value, np.ndarray):
        raise ImageRejected(f"{key} is not a NumPy array (raw bytes such as a pickle, which is never loaded)")
    return value


def _check_npz(path: Path, spec: TaskSpec, budget: DecodedBudget) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Split -> (images, labels or None) after every check; raises ImageRejected for the whole file."""
    with open(path, "rb") as fh:  # one handle: the members sized are the members loaded
        return _check_npz_file(fh, spec, budget)


def _check_npz_file(fh: BinaryIO, spec: TaskSpec, budget: DecodedBudget) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    image_spec = _image_spec(spec)
    members = _npz_members(fh)
    allowed = {f"{s}_{kind}" for s in NPZ_SPLITS for kind in ("images", "labels")}
    unknown = sorted(set(members) - allowed)
    # Member names come from the file: counted, never quoted.
    if unknown:
        raise ImageRejected(f"unexpected keys ({len(unknown)} arrays): a MedMNIST npz holds only {sorted(allowed)}")
    if not any(f"{s}_images" in members for s in NPZ_SPLITS):
        raise ImageRejected(f"no train_images / val_images / test_images array (it holds {len(members)} arrays)")
    budget.take(sum(members.values()), f"the arrays of this npz ({len(members)})")
    out: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    try:
        fh.seek(0)
        with np.load(fh, allow_pickle=False) as npz:
            for split in NPZ_SPLITS:
                if f"{split}_images" not in members:
                    if f"{split}_labels" in members:
                        raise ImageRejected(f"{split}_labels without {split}_images")
                    continue
                images = _npz_member(npz, f"{split}_images")
                labels = _npz_member(npz, f"{split}_labels") if f"{split}_labels" in members else None
                out[split] = (images, labels)
    except ImageRejected:
        raise
    except ValueError as exc:  # object arrays refused by allow_pickle=False land here too
        raise ImageRejected("an npz array cannot be read (object arrays are refused, or its header is malformed)") from exc
    except Exception as exc:  # noqa: BLE001
        raise ImageRejected("unreadable or corrupt npz (a member does not inflate or is truncated)") from exc

    for split, (images, labels) in out.items():
        key = f"{split}_images"
        if images.dtype != np.uint8:
            raise ImageRejected(f"{key} has dtype {images.dtype}; MedMNIST images are uint8")
        if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] not in (1, 3)):
            raise ImageRejected(f"{key} has shape {images.shape}; expected (N,H,W) or (N,H,W,3)")
        n, h, w = images.shape[:3]
        if h * w > image_spec.max_pixels:
            raise ImageRejected(f"{key}: {h}x{w} images exceed max_pixels {image_spec.max_pixels}")
        if labels is None:
            continue
        lkey = f"{split}_labels"
        if labels.ndim == 1:
            labels = labels[:, None]
        if labels.ndim != 2 or labels.shape[0] != n:
            raise ImageRejected(f"{lkey} has shape {labels.shape}; expected ({n}, 1) or ({n}, k) to match {key}")
        if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.bool_)):
            if not (np.issubdtype(labels.dtype, np.floating) and np.all(labels == np.round(labels))):
                raise ImageRejected(f"{lkey} has dtype {labels.dtype}; expected integer labels")
        labels = labels.astype(np.int64)
        if image_spec.multi_label:
            if not np.isin(labels, (0, 1)).all():
                raise ImageRejected(f"{lkey}: multi-label targets must be 0/1")
        else:
            if labels.shape[1] != 1:
                raise ImageRejected(
                    f"{lkey} has {labels.shape[1]} columns but the spec is not multi_label (set image.multi_label)"
                )
            if (labels < 0).any():
                raise ImageRejected(f"{lkey}: negative class index")
        out[split] = (images, labels)
    return out


def _npz_label(row: np.ndarray, multi_label: bool) -> str:
    if multi_label:
        return "|".join(str(i) for i in np.flatnonzero(row))
    return canonical_label(int(row[0]))


def multilabel_matrix(labels: list[str | None] | pl.Series, n_labels: int) -> np.ndarray:
    """The (n, n_labels) 0/1 float32 matrix of '|'-joined finding indices ('' = no finding; null = NaN row)."""
    out = np.zeros((len(labels), n_labels), dtype=np.float32)
    for i, lab in enumerate(labels):
        if lab is None:
            out[i] = np.nan
        elif lab != "":
            out[i, [int(x) for x in lab.split("|")]] = 1.0
    return out


def _npz_unit(img: np.ndarray) -> np.ndarray:
    unit = img.astype(np.float32) / 255.0
    return unit[..., None] if unit.ndim == 2 else unit


def npz_record_id(batch: str, rel: str, split: str, i: int) -> str:
    """The id of image ``i`` of ``split`` in the npz ``rel`` of ``batch``: ``<hash>_<split>_<i>``, the hash
    (96 bits of a SHA-256) over the batch and the file's relative path, JSON-encoded so that no two pairs share
    an encoding (``a/b.npz`` and ``a_b.npz`` differ). Another batch holding a ``data.npz`` gets other ids; the
    same batch always the same ones; and no file or batch name is shown where ids are."""
    digest = hashlib.sha256(json.dumps([batch, rel]).encode()).hexdigest()[:24]
    return f"{digest}_{split}_{i}"


def read_npz_batch(batch_dir: Path, spec: TaskSpec) -> ImageReadResult:
    image_spec = _image_spec(spec)
    budget = DecodedBudget.of(spec)
    rows: list[dict] = []
    rejected: list[tuple[str, str]] = []
    batch = display_name(batch_dir.name)
    for rel, _ in _walk(batch_dir):
        if not rel.lower().endswith(".npz"):
            continue
        try:
            arrays = _check_npz(_image_file(batch_dir, rel, spec), spec, budget)
        except ImageRejected as exc:
            rejected.append((rel, str(exc)))
            continue
        for split, (images, labels) in arrays.items():
            channels = 3 if images.ndim == 4 and images.shape[3] == 3 else 1
            h, w = images.shape[1:3]
            for i in range(images.shape[0]):
                row = {
                    **_pixel_fields(images[i], _npz_unit(images[i]), image_spec.channels),
                    "id": npz_record_id(batch, rel, split, i),
                    "label": None if labels is None else _npz_label(labels[i], image_spec.multi_label),
                    "patient_id": None,
                    "source": f"{rel}#{split}:{i}",
                    "height": int(h),
                    "width": int(w),
                    "channels": channels,
                    "bit_depth": 8,
                    "predefined_split": split,
                }
                rows.append(row)
    return ImageReadResult(_frame(rows, spec), rejected)


# --------------------------------------------------------------------------------------------- dispatch


def _file_kind(batch_dir: Path, rel: str) -> str | None:
    """The format one landed file belongs to, from its suffix, else the DICM prefix of a DICOM file."""
    suffix = PurePosixPath(rel).suffix.lower()
    if suffix == ".npz":
        return "npz"
    if suffix in FOLDER_SUFFIXES:
        return "folder"
    if suffix in DICOM_SUFFIXES:
        return "dicom"
    try:
        with open(confined_file(batch_dir, rel), "rb") as fh:
            return "dicom" if fh.read(132)[128:] == b"DICM" else None
    except (UnsafePath, OSError):
        return None  # a link or odd file: the format's reader rejects it by name


def _found(counts: dict[str, int], has_labels: bool) -> str:
    names = {"npz": ".npz", "folder": "PNG/JPEG", "dicom": "DICOM"}
    parts = [f"{n} {names[k]} file{'s' if n != 1 else ''}" for k, n in counts.items() if n]
    parts.append("a labels.csv" if has_labels else "no labels.csv")
    return ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]


def detect_format(batch_dir: Path, declared: str | None = None) -> str:
    """The format of one landed batch: ``declared`` (the spec's ``image.format``) when what landed matches it,
    else the one format found; raises :class:`ImageBatchError` naming what was found and what is expected."""
    counts = dict.fromkeys(FORMATS, 0)
    for rel, _ in _walk(batch_dir):
        kind = None if rel == LABELS_CSV else _file_kind(batch_dir, rel)
        if kind:
            counts[kind] += 1
    found = [k for k in FORMATS if counts[k]]
    has_labels = os.path.lexists(batch_dir / LABELS_CSV)
    if declared is not None:
        if found and not counts[declared]:
            raise ImageBatchError(f"found {_found(counts, has_labels)}; the spec's image.format is {declared!r}, which "
                                  f"expects {_EXPECTS[declared]}")  # fmt: skip
        return declared
    if len(found) > 1:
        raise ImageBatchError(f"found {_found(counts, has_labels)}: one batch holds one image format (set "
                              "image.format to choose one, or land each format in its own batch)")  # fmt: skip
    return found[0] if found else "folder"


def source_format(source: str, declared: str | None = None) -> str:
    """The format a record was read with, from its ``source`` (the spec's ``image.format`` when it says)."""
    if declared is not None:
        return declared
    if _NPZ_SOURCE.match(source):
        return "npz"
    return "folder" if PurePosixPath(source).suffix.lower() in FOLDER_SUFFIXES else "dicom"


def source_file(source: str, declared: str | None = None) -> str:
    """The landed file of a record's source (``file.npz#split:i`` / ``file.dcm#frame`` -> the file)."""
    return source if source_format(source, declared) == "folder" else source.rsplit("#", 1)[0]


def read_image_batch(batch_dir: Path, spec: TaskSpec) -> ImageReadResult:
    """Read one landed batch folder with the reader of its format (:func:`detect_format`)."""
    batch_dir = Path(batch_dir)
    if not batch_dir.is_dir() or batch_dir.is_symlink():
        raise ImageBatchError("the batch is not a folder")
    fmt = detect_format(batch_dir, _image_spec(spec).format)
    if fmt == "folder":
        return read_folder_batch(batch_dir, spec)
    if fmt == "dicom":
        return read_dicom_batch(batch_dir, spec)
    return read_npz_batch(batch_dir, spec)


def _to_channels(unit: np.ndarray, channels: int) -> np.ndarray:
    """(H, W, c) float -> (C, H, W) float32 with C = channels (grey repeated, colour to luma)."""
    if unit.shape[2] == channels:
        out = unit
    elif channels == 3:
        out = np.repeat(unit[..., :1], 3, axis=2)
    else:  # ITU-R 601 luma, as Pillow's convert('L')
        out = (unit[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
    return np.ascontiguousarray(np.transpose(out, (2, 0, 1)), dtype=np.float32)


@lru_cache(maxsize=4)
def _npz_array(path: str, mtime_ns: int, key: str, max_bytes: float) -> np.ndarray:
    """One images array of an npz, sized from the zip directory first; kept for the next records of the file."""
    with open(path, "rb") as fh:
        members = _npz_members(fh)
        if key not in members:
            raise ImageRejected(f"the npz no longer holds {key}")
        DecodedBudget(max_bytes, max_bytes).take(members[key], f"the npz array {key}")
        fh.seek(0)
        with np.load(fh, allow_pickle=False) as npz:
            return _npz_member(npz, key)


def _decode(batch_dir: Path, source: str, spec: TaskSpec) -> tuple[np.ndarray, np.ndarray]:
    """(native pixels, float32 (H, W, c) in [0, 1]) of one record's source, through every guard of the readers."""
    image_spec = _image_spec(spec)
    budget = DecodedBudget.of(spec)
    fmt = source_format(source, image_spec.format)
    if fmt == "npz":
        m = _NPZ_SOURCE.match(source)
        if not m:
            raise ImageRejected("the record's source is not an npz source 'file.npz#split:i'")
        path = _image_file(batch_dir, m["file"], spec)
        key = f"{m['split']}_images"
        images = _npz_array(str(path), path.stat().st_mtime_ns, key, budget.per_file)
        i = int(m["i"])
        if i >= len(images):
            raise ImageRejected(f"the npz's {key} no longer holds image {i}")
        return images[i], _npz_unit(images[i])
    if fmt == "dicom":
        m = _FRAME_SOURCE.match(source)
        rel, frame = (m["file"], int(m["frame"])) if m else (source, 0)
        ds, n_frames = _dcm_open(_image_file(batch_dir, rel, spec), spec, budget)
        if frame >= n_frames:
            raise ImageRejected(f"frame {frame} of a {n_frames}-frame file")
        return _dcm_decode(ds, frame)
    im = _open_pil(_image_file(batch_dir, source, spec), image_spec.max_pixels, budget)
    return np.asarray(im), _pil_to_unit(im)


def load_pixels(batch_dir: Path, source: str, spec: TaskSpec, sha256: str | None = None) -> np.ndarray:
    """One image as float32 (C, H, W) in [0, 1] after windowing; C = ``spec.image.channels``.

    ``source`` is a record's ``source``; ``sha256`` its pixel hash recorded at ingestion. Raises
    :class:`ImageRejected` if the file no longer reads, or if its pixels are not the ones that hash names (the
    file was replaced after it was validated: those pixels were never validated).
    """
    native, unit = _decode(Path(batch_dir), source, spec)
    if sha256 is not None and _sha256(native) != sha256:
        raise ImageRejected("the pixels differ from those validated at ingestion (the file changed since)")
    return _to_channels(unit, _image_spec(spec).channels)


__all__ = [
    "ImageBatchError",
    "ImageReadResult",
    "ImageRejected",
    "DecodedBudget",
    "detect_format",
    "load_pixels",
    "multilabel_matrix",
    "npz_record_id",
    "read_dicom_batch",
    "read_folder_batch",
    "read_image_batch",
    "read_npz_batch",
    "records_schema",
    "safe_path",
    "source_file",
    "source_format",
]
