"""Image readers: one per format behind one interface (no Dagster here).

``read_image_batch(batch_dir, spec)`` dispatches on ``spec.image.format`` and returns an
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
            ``<stem>_<split>_<i>``. Labels: the class index as a string (``"0"``, ``"1"``...); multi-label:
            the ``|``-joined indices of the positive findings in ascending order (``"0|5"``), and ``""``
            for a labelled image with no finding (see :func:`multilabel_matrix`). An images key without
            its labels key gives unlabelled records (label null). Unknown keys, object arrays, bad
            shapes / dtypes are rejected for the whole file.

Safety: paths are confined to the batch folder (no absolute paths, no ``..``, no symbolic links anywhere
on the way); images whose header declares more than ``spec.image.max_pixels`` pixels are refused before
any pixel is decoded (decompression-bomb guard).
"""

from __future__ import annotations

import hashlib
import re
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Literal

import numpy as np
import polars as pl

from meddiag_pipelines.ingestion.landing import UnsafePath, confined_file

if TYPE_CHECKING:
    from meddiag_pipelines.specs import ImageSpec, TaskSpec

LABELS_CSV = "labels.csv"
FOLDER_SUFFIXES = {".png", ".jpg", ".jpeg"}
DICOM_SUFFIXES = {".dcm", ".dicom"}
NPZ_SPLITS = ("train", "val", "test")
# A DICOM file may hold many frames: its whole pixel data is bounded by this many times max_pixels.
DICOM_TOTAL_PIXELS_FACTOR = 16
# An npz member larger than this (uncompressed) is refused before it is inflated (zip-bomb guard).
NPZ_MAX_ARRAY_BYTES = 8 * 2**30

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


# --------------------------------------------------------------------------------------------- paths


def safe_path(batch_dir: Path, rel: str) -> Path:
    """The file ``rel`` inside ``batch_dir``; raises :class:`ImageRejected` if it would escape it."""
    try:
        return confined_file(batch_dir, rel)
    except UnsafePath as exc:
        raise ImageRejected(str(exc)) from None


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
    csv = batch_dir / LABELS_CSV
    if not csv.exists() and not csv.is_symlink():
        return None
    if csv.is_symlink():
        raise ImageBatchError(f"{LABELS_CSV}: symbolic link refused")
    try:
        df = pl.read_csv(csv, infer_schema=False)
    except Exception as exc:  # noqa: BLE001 - polars raises several kinds
        raise ImageBatchError(f"{LABELS_CSV}: cannot read: {exc}") from exc
    file_col = _image_spec(spec).file_column
    if file_col not in df.columns:
        raise ImageBatchError(f"{LABELS_CSV}: missing the file column {file_col!r} (has {df.columns})")
    return df.with_columns(pl.col(c).str.strip_chars().replace("", None) for c in df.columns)


def _row_meta(row: dict, rel: str, spec: TaskSpec) -> dict:
    meta = {
        "id": row.get(spec.id) or rel,
        "label": row.get(spec.label),
        "patient_id": row.get(spec.patient_id) if spec.patient_id else None,
    }
    for col in spec.subgroups:
        meta[col] = row.get(col)
    return meta


def _listed_files(
    batch_dir: Path, spec: TaskSpec, suffixes: set[str] | None
) -> tuple[list[tuple[str, dict]], list[tuple[str, str]]]:
    """(relative file, metadata) for every image to read, and the rejections found on the way.

    ``suffixes`` names the image files of the format (None: any file but labels.csv).
    """
    labels = _read_labels(batch_dir, spec)
    rejected: list[tuple[str, str]] = []
    todo: list[tuple[str, dict]] = []

    def is_image(rel: str) -> bool:
        if rel == LABELS_CSV:
            return False
        return suffixes is None or PurePosixPath(rel).suffix.lower() in suffixes

    if labels is None:
        for rel, path in _walk(batch_dir):
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
    for row in labels.iter_rows(named=True):
        rel = row.get(file_col)
        if rel is None:
            rejected.append((LABELS_CSV, f"a row has an empty {file_col!r}: {row}"))
            continue
        listed.add(rel)
        meta = _row_meta(row, rel, spec)
        if meta["id"] in seen_ids:
            rejected.append((rel, f"duplicate id {meta['id']!r} in {LABELS_CSV}"))
            continue
        seen_ids.add(meta["id"])
        todo.append((rel, meta))
    for rel, _ in _walk(batch_dir):
        if is_image(rel) and rel not in listed:
            rejected.append((rel, f"image file not listed in {LABELS_CSV}"))
    return todo, rejected


# --------------------------------------------------------------------------------------------- folder


def _open_pil(path: Path, max_pixels: int):
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
            w, h = im.size
            if w * h > max_pixels:
                raise ImageRejected(f"decompression-bomb guard: {w}x{h} = {w * h} pixels > max_pixels {max_pixels}")
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
            im.load()
            im = ImageOps.exif_transpose(im)
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(f"decompression-bomb guard: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError...
        raise ImageRejected(f"unreadable or corrupt image: {type(exc).__name__}: {exc}") from exc
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


def _read_one_png(path: Path, max_pixels: int) -> dict:
    im = _open_pil(path, max_pixels)
    arr, channels, bits = _pil_info(im)
    return {
        "sha256": _sha256(arr),
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
    max_pixels = _image_spec(spec).max_pixels
    todo, rejected = _listed_files(batch_dir, spec, FOLDER_SUFFIXES)
    rows: list[dict] = []
    for rel, meta in todo:
        try:
            path = safe_path(batch_dir, rel)
            info = _read_one_png(path, max_pixels)
        except ImageRejected as exc:
            rejected.append((rel, str(exc)))
            continue
        rows.append({**meta, **info, "source": rel, "predefined_split": None})
    return ImageReadResult(_frame(rows, spec), rejected)


# --------------------------------------------------------------------------------------------- dicom


def _dcm_open(path: Path, max_pixels: int):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as exc:
        raise ImageRejected(f"not a DICOM file: {exc}") from exc
    except Exception as exc:  # noqa: BLE001
        raise ImageRejected(f"unreadable or truncated DICOM: {type(exc).__name__}: {exc}") from exc
    if not any(t in ds for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageRejected("DICOM without pixel data (no PixelData element)")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except Exception as exc:  # noqa: BLE001
        raise ImageRejected(f"DICOM without valid Rows / Columns / NumberOfFrames: {exc}") from exc
    if rows <= 0 or cols <= 0 or frames <= 0:
        raise ImageRejected(f"DICOM with an empty image: {rows}x{cols}, {frames} frame(s)")
    if rows * cols > max_pixels or rows * cols * frames > max_pixels * DICOM_TOTAL_PIXELS_FACTOR:
        raise ImageRejected(
            f"decompression-bomb guard: {frames} frame(s) of {rows}x{cols} pixels exceed max_pixels {max_pixels}"
        )
    tsyntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if tsyntax is not None and tsyntax.is_compressed:
        from pydicom.pixels.decoders.base import get_decoder

        try:
            decoder = get_decoder(tsyntax)
        except NotImplementedError as exc:
            raise ImageRejected(f"no pixel-data decoder for transfer syntax {tsyntax.name!r}") from exc
        if not decoder.is_available:
            raise ImageRejected(
                f"compressed transfer syntax {tsyntax.name!r} cannot be decoded with the installed packages "
                f"(needs one of: {'; '.join(decoder.missing_dependencies)})"
            )
    return ds, frames


def _dcm_frame(ds, frame: int) -> np.ndarray:
    from pydicom.pixels import pixel_array

    try:
        arr = pixel_array(ds, index=frame)
    except Exception as exc:  # noqa: BLE001
        raise ImageRejected(f"cannot decode the pixel data (truncated or corrupt?): {type(exc).__name__}: {exc}") from exc
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


def read_dicom_batch(
    batch_dir: Path, spec: TaskSpec, frames: Literal["middle", "all"] = "middle"
) -> ImageReadResult:
    max_pixels = _image_spec(spec).max_pixels
    labels_present = (batch_dir / LABELS_CSV).exists()
    # Without labels.csv, DICOM files without an extension are common: take every file but hidden ones.
    todo, rejected = _listed_files(batch_dir, spec, DICOM_SUFFIXES if labels_present else None)
    rows: list[dict] = []
    for rel, meta in todo:
        try:
            path = safe_path(batch_dir, rel)
            ds, n_frames = _dcm_open(path, max_pixels)
            wanted = [n_frames // 2] if frames == "middle" else list(range(n_frames))
            decoded = [(f, _dcm_frame(ds, f)) for f in wanted]
            for f, arr in decoded:  # decode through the whole chain once so a bad LUT rejects now
                _dcm_to_unit(arr, ds)
        except ImageRejected as exc:
            rejected.append((rel, str(exc)))
            continue
        except Exception as exc:  # noqa: BLE001 - malformed LUT / window values
            rejected.append((rel, f"cannot apply the DICOM LUTs: {type(exc).__name__}: {exc}"))
            continue
        patient = meta["patient_id"]
        if patient is None and (spec.patient_id is None or _labels_lack(batch_dir, spec.patient_id)):
            patient = str(ds.get("PatientID") or "") or None
        for f, arr in decoded:
            multi = n_frames > 1
            rows.append(
                {
                    **meta,
                    "id": f"{meta['id']}#{f}" if multi and frames == "all" else meta["id"],
                    "patient_id": patient,
                    "source": f"{rel}#{f}" if multi else rel,
                    "sha256": _sha256(arr),
                    "height": int(arr.shape[0]),
                    "width": int(arr.shape[1]),
                    "channels": int(ds.get("SamplesPerPixel", 1) or 1),
                    "bit_depth": int(ds.get("BitsStored", 0) or 0),
                    "predefined_split": None,
                }
            )
    return ImageReadResult(_frame(rows, spec), rejected)


@lru_cache(maxsize=64)
def _csv_columns(csv: Path, mtime_ns: int) -> tuple[str, ...]:
    return tuple(pl.read_csv(csv, n_rows=0, infer_schema=False).columns)


def _labels_lack(batch_dir: Path, column: str) -> bool:
    csv = batch_dir / LABELS_CSV
    if not csv.exists():
        return True
    return column not in _csv_columns(csv, csv.stat().st_mtime_ns)


# --------------------------------------------------------------------------------------------- npz


def _npz_members(path: Path) -> dict[str, int]:
    """Key -> uncompressed size of every array in the npz, read from the zip directory (nothing inflated)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return {info.filename.removesuffix(".npy"): info.file_size for info in zf.infolist()}
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ImageRejected(f"not a valid npz (zip) file: {exc}") from exc


def _check_npz(path: Path, spec: TaskSpec) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Split -> (images, labels or None) after every check; raises ImageRejected for the whole file."""
    image_spec = _image_spec(spec)
    members = _npz_members(path)
    allowed = {f"{s}_{kind}" for s in NPZ_SPLITS for kind in ("images", "labels")}
    unknown = sorted(set(members) - allowed)
    if unknown:
        raise ImageRejected(f"unexpected keys {unknown}: a MedMNIST npz holds only {sorted(allowed)}")
    if not any(f"{s}_images" in members for s in NPZ_SPLITS):
        raise ImageRejected(f"no train_images / val_images / test_images array (keys: {sorted(members)})")
    for key, size in members.items():
        if size > NPZ_MAX_ARRAY_BYTES:
            raise ImageRejected(f"array {key!r} inflates to {size} bytes > {NPZ_MAX_ARRAY_BYTES} (zip-bomb guard)")
    out: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            for split in NPZ_SPLITS:
                if f"{split}_images" not in members:
                    if f"{split}_labels" in members:
                        raise ImageRejected(f"{split}_labels without {split}_images")
                    continue
                images = npz[f"{split}_images"]
                labels = npz[f"{split}_labels"] if f"{split}_labels" in members else None
                out[split] = (images, labels)
    except ImageRejected:
        raise
    except ValueError as exc:  # object arrays refused by allow_pickle=False land here too
        raise ImageRejected(f"unreadable npz array (object arrays are refused): {exc}") from exc
    except Exception as exc:  # noqa: BLE001
        raise ImageRejected(f"unreadable or corrupt npz: {type(exc).__name__}: {exc}") from exc

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
    return str(int(row[0]))


def multilabel_matrix(labels: list[str | None] | pl.Series, n_labels: int) -> np.ndarray:
    """The (n, n_labels) 0/1 float32 matrix of '|'-joined finding indices ('' = no finding; null = NaN row)."""
    out = np.zeros((len(labels), n_labels), dtype=np.float32)
    for i, lab in enumerate(labels):
        if lab is None:
            out[i] = np.nan
        elif lab != "":
            out[i, [int(x) for x in lab.split("|")]] = 1.0
    return out


def read_npz_batch(batch_dir: Path, spec: TaskSpec) -> ImageReadResult:
    image_spec = _image_spec(spec)
    rows: list[dict] = []
    rejected: list[tuple[str, str]] = []
    for rel, path in _walk(batch_dir):
        if not rel.lower().endswith(".npz"):
            continue
        try:
            safe_path(batch_dir, rel)
            arrays = _check_npz(path, spec)
        except ImageRejected as exc:
            rejected.append((rel, str(exc)))
            continue
        stem = PurePosixPath(rel).with_suffix("").as_posix().replace("/", "_")
        for split, (images, labels) in arrays.items():
            channels = 3 if images.ndim == 4 and images.shape[3] == 3 else 1
            h, w = images.shape[1:3]
            for i in range(images.shape[0]):
                row = {
                    "id": f"{stem}_{split}_{i}",
                    "label": None if labels is None else _npz_label(labels[i], image_spec.multi_label),
                    "patient_id": None,
                    "source": f"{rel}#{split}:{i}",
                    "sha256": _sha256(images[i]),
                    "height": int(h),
                    "width": int(w),
                    "channels": channels,
                    "bit_depth": 8,
                    "predefined_split": split,
                }
                rows.append(row)
    return ImageReadResult(_frame(rows, spec), rejected)


# --------------------------------------------------------------------------------------------- dispatch


def read_image_batch(batch_dir: Path, spec: TaskSpec) -> ImageReadResult:
    """Read one landed batch folder with the reader of ``spec.image.format``."""
    batch_dir = Path(batch_dir)
    if not batch_dir.is_dir():
        raise ImageBatchError(f"{batch_dir}: not a folder")
    fmt = _image_spec(spec).format
    if fmt == "folder":
        return read_folder_batch(batch_dir, spec)
    if fmt == "dicom":
        return read_dicom_batch(batch_dir, spec)
    if fmt == "npz":
        return read_npz_batch(batch_dir, spec)
    raise ImageBatchError(f"unknown image format {fmt!r}")


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
def _npz_array(path: str, mtime_ns: int, key: str) -> np.ndarray:
    with np.load(path, allow_pickle=False) as npz:
        return npz[key]


def load_pixels(batch_dir: Path, source: str, spec: TaskSpec) -> np.ndarray:
    """One image as float32 (C, H, W) in [0, 1] after windowing; C = ``spec.image.channels``.

    ``source`` is a record's ``source``. Raises :class:`ImageRejected` if the file no longer reads.
    """
    batch_dir = Path(batch_dir)
    image_spec = _image_spec(spec)
    fmt = image_spec.format
    if fmt == "npz":
        m = _NPZ_SOURCE.match(source)
        if not m:
            raise ImageRejected(f"{source!r} is not an npz source 'file.npz#split:i'")
        path = safe_path(batch_dir, m["file"])
        images = _npz_array(str(path), path.stat().st_mtime_ns, f"{m['split']}_images")
        img = images[int(m["i"])]
        unit = (img.astype(np.float32) / 255.0)
        unit = unit[..., None] if unit.ndim == 2 else unit
        return _to_channels(unit, image_spec.channels)
    if fmt == "dicom":
        m = _FRAME_SOURCE.match(source)
        rel, frame = (m["file"], int(m["frame"])) if m else (source, 0)
        path = safe_path(batch_dir, rel)
        ds, n_frames = _dcm_open(path, image_spec.max_pixels)
        if frame >= n_frames:
            raise ImageRejected(f"{source}: frame {frame} of a {n_frames}-frame file")
        return _to_channels(_dcm_to_unit(_dcm_frame(ds, frame), ds), image_spec.channels)
    path = safe_path(batch_dir, source)
    return _to_channels(_pil_to_unit(_open_pil(path, image_spec.max_pixels)), image_spec.channels)


def load_pixels_many(batch_dir: Path, sources: list[str], spec: TaskSpec) -> Iterator[np.ndarray]:
    """:func:`load_pixels` for many sources (npz arrays are loaded once per file and split)."""
    for source in sources:
        yield load_pixels(batch_dir, source, spec)


__all__ = [
    "ImageBatchError",
    "ImageReadResult",
    "ImageRejected",
    "load_pixels",
    "load_pixels_many",
    "multilabel_matrix",
    "read_dicom_batch",
    "read_folder_batch",
    "read_image_batch",
    "read_npz_batch",
    "records_schema",
    "safe_path",
]
