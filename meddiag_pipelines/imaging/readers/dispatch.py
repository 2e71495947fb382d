"""One batch, one format: the format detected from what landed, the batch read with its reader, and one record's
pixels read again from its ``source`` (:func:`load_pixels`)."""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np

from meddiag_pipelines.imaging.readers.dicom import DICOM_SUFFIXES, _dcm_decode, _dcm_open, read_dicom_batch
from meddiag_pipelines.imaging.readers.folder import FOLDER_SUFFIXES, _open_pil, _pil_to_unit, read_folder_batch
from meddiag_pipelines.imaging.readers.listing import LABELS_CSV, _image_file, walk_files
from meddiag_pipelines.imaging.readers.npz import _npz_unit, cached_npz_array, read_npz_batch
from meddiag_pipelines.imaging.readers.records import (
    DecodedBudget,
    ImageBatchError,
    ImageReadResult,
    ImageRejected,
    _image_spec,
    _sha256,
    _to_channels,
)
from meddiag_pipelines.ingestion.landing import UnsafePath, confined_file

if TYPE_CHECKING:
    from meddiag_pipelines.specs import TaskSpec

FORMATS = ("folder", "dicom", "npz")
_EXPECTS = {
    "folder": "PNG/JPEG files and a labels.csv",
    "dicom": "DICOM files (and a labels.csv)",
    "npz": "MedMNIST .npz files",
}

_NPZ_SOURCE = re.compile(r"^(?P<file>.+\.npz)#(?P<split>train|val|test):(?P<i>\d+)$")
_FRAME_SOURCE = re.compile(r"^(?P<file>.+)#(?P<frame>\d+)$")


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
    for rel, _ in walk_files(batch_dir):
        kind = None if rel == LABELS_CSV else _file_kind(batch_dir, rel)
        if kind:
            counts[kind] += 1
    found = [k for k in FORMATS if counts[k]]
    has_labels = os.path.lexists(batch_dir / LABELS_CSV)
    if declared is not None:
        if found and not counts[declared]:
            raise ImageBatchError(
                f"found {_found(counts, has_labels)}; the spec's image.format is {declared!r}, which "
                f"expects {_EXPECTS[declared]}"
            )
        return declared
    if len(found) > 1:
        raise ImageBatchError(
            f"found {_found(counts, has_labels)}: one batch holds one image format (set "
            "image.format to choose one, or land each format in its own batch)"
        )
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
        images = cached_npz_array(str(path), path.stat().st_mtime_ns, key, budget.per_file)
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
