"""The ``dicom`` format: DICOM files (and a ``labels.csv``), sized from the header before any pixel is decoded,
then through the Modality LUT, the VOI LUT or window, and MONOCHROME1 inversion to [0, 1]."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal

import numpy as np

from meddiag_pipelines.imaging.readers.dicom_safety import (
    DEFLATED,
    HEADER_MAX,
    check_decoder,
    inflates_within,
    read_header,
)
from meddiag_pipelines.imaging.readers.listing import _image_file, _listed_files, _read_labels
from meddiag_pipelines.imaging.readers.records import (
    DecodedBudget,
    ImageReadResult,
    ImageRejected,
    _frame,
    _image_spec,
    _mb,
    _pixel_fields,
)

if TYPE_CHECKING:
    from meddiag_pipelines.specs import TaskSpec

DICOM_SUFFIXES = {".dcm", ".dicom"}

# A DICOM file may hold many frames: its whole pixel data is bounded by this many times max_pixels.
DICOM_TOTAL_PIXELS_FACTOR = 16


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
        header = read_header(fh)
    except InvalidDicomError as exc:
        raise ImageRejected("not a DICOM file (no DICM prefix or file meta information)") from exc
    except Exception as exc:  # noqa: BLE001 - pydicom / zlib messages can quote header bytes
        raise ImageRejected("unreadable or truncated DICOM header") from exc
    frames, pixels, nbytes = _decoded_dicom_bytes(header)
    if pixels > max_pixels or pixels * frames > max_pixels * DICOM_TOTAL_PIXELS_FACTOR:
        raise ImageRejected(
            f"decompression-bomb guard: {frames} frame(s) of {pixels} pixels exceed max_pixels {max_pixels}"
        )
    budget.take(nbytes, f"DICOM pixel data of {frames} frame(s) x {pixels} pixels")
    tsyntax = header.file_meta.get("TransferSyntaxUID") if hasattr(header, "file_meta") else None
    if str(tsyntax or "") == DEFLATED and not inflates_within(fh, nbytes + HEADER_MAX):
        raise ImageRejected(f"deflated DICOM inflates beyond its declared pixel data ({_mb(nbytes)}) plus header")
    check_decoder(tsyntax)
    try:
        fh.seek(0)
        ds = pydicom.dcmread(fh)
    except Exception as exc:  # noqa: BLE001
        raise ImageRejected("unreadable or truncated DICOM") from exc
    if not any(t in ds for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageRejected("DICOM without pixel data (no PixelData element)")
    return ds, frames


def _dcm_frame(ds, frame: int) -> np.ndarray:
    from pydicom.pixels import pixel_array

    try:
        arr = pixel_array(ds, index=frame)
    except Exception as exc:  # noqa: BLE001 - pydicom's messages can quote header values
        raise ImageRejected(
            "cannot decode the pixel data (truncated, corrupt, or inconsistent with its header)"
        ) from exc
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
        big = (
            str(ds.file_meta.get("TransferSyntaxUID", "")) == "1.2.840.10008.1.2.2"
            if hasattr(ds, "file_meta")
            else False
        )
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


def read_dicom_batch(batch_dir: Path, spec: TaskSpec, frames: Literal["middle", "all"] = "middle") -> ImageReadResult:
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
