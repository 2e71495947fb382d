"""The ``folder`` format: PNG / JPEG files (and a ``labels.csv``), decoded with Pillow after their signature,
declared size and decoded size pass."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from meddiag_pipelines.imaging.readers.listing import _image_file, _listed_files, _read_labels
from meddiag_pipelines.imaging.readers.records import (
    DecodedBudget,
    ImageReadResult,
    ImageRejected,
    _frame,
    _image_spec,
    _pixel_fields,
)

if TYPE_CHECKING:
    from meddiag_pipelines.specs import TaskSpec

FOLDER_SUFFIXES = {".png", ".jpg", ".jpeg"}

_BAND_BYTES = {"I;16": 2, "I;16B": 2, "I;16L": 2, "I": 4, "F": 4}

_SUFFIX_FORMAT = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
_SIGNATURES = {
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "JPEG": (b"\xff\xd8\xff",),
    "GIF": (b"GIF87a", b"GIF89a"),
    "TIFF": (b"II*\x00", b"MM\x00*"),
    "BMP": (b"BM",),
    "a zip archive": (b"PK\x03\x04",),
}


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
        raise ImageRejected(
            f"file signature mismatch: its first bytes are {found}, not {expected} as its {suffix} extension says"
        )
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
