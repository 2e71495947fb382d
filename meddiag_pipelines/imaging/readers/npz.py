"""The ``npz`` format: MedMNIST ``.npz`` files, sized from their zip directory and loaded without pickle."""

from __future__ import annotations

import hashlib
import json
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from meddiag_pipelines.imaging.readers.listing import _image_file, walk_files
from meddiag_pipelines.imaging.readers.records import (
    DecodedBudget,
    ImageReadResult,
    ImageRejected,
    _frame,
    _image_spec,
    _pixel_fields,
)
from meddiag_pipelines.ingestion.landing import batch_key
from meddiag_pipelines.specs import canonical_label

if TYPE_CHECKING:
    from meddiag_pipelines.specs import TaskSpec

NPZ_SPLITS = ("train", "val", "test")


def npz_members(fh: BinaryIO) -> dict[str, int]:
    """Key -> uncompressed size of every array in the npz, read from the zip directory (nothing inflated; a
    member never inflates beyond the size its directory entry declares)."""
    try:
        with zipfile.ZipFile(fh) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ImageRejected("not a valid npz file (its zip directory cannot be read)") from exc
    members = {info.filename.removesuffix(".npy"): info.file_size for info in infos}
    if len(members) < len(infos):  # NumPy would read one of the namesakes, the others never checked
        raise ImageRejected(f"its zip holds {len(infos) - len(members)} member(s) under a name already used")
    return members


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


def _check_npz_file(
    fh: BinaryIO, spec: TaskSpec, budget: DecodedBudget
) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    image_spec = _image_spec(spec)
    members = npz_members(fh)
    check_npz_keys(members)
    budget.take(sum(members.values()), f"the arrays of this npz ({len(members)})")
    out = load_npz_arrays(fh, members)
    for split, (images, labels) in out.items():
        key = f"{split}_images"
        if images.dtype != np.uint8:
            raise ImageRejected(f"{key} has dtype {images.dtype}; MedMNIST images are uint8")
        if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] not in (1, 3)):
            raise ImageRejected(f"{key} has shape {images.shape}; expected (N,H,W) or (N,H,W,3)")
        n, h, w = images.shape[:3]
        if h * w > image_spec.max_pixels:
            raise ImageRejected(f"{key}: {h}x{w} images exceed max_pixels {image_spec.max_pixels}")
        out[split] = (images, None if labels is None else checked_labels(split, labels, n, image_spec.multi_label))
    return out


def check_npz_keys(members: dict[str, int]) -> None:
    """Only MedMNIST's keys, and at least one images array (member names come from the file: counted, never
    quoted)."""
    allowed = {f"{s}_{kind}" for s in NPZ_SPLITS for kind in ("images", "labels")}
    unknown = sorted(set(members) - allowed)
    if unknown:
        raise ImageRejected(f"unexpected keys ({len(unknown)} arrays): a MedMNIST npz holds only {sorted(allowed)}")
    if not any(f"{s}_images" in members for s in NPZ_SPLITS):
        raise ImageRejected(f"no train_images / val_images / test_images array (it holds {len(members)} arrays)")


def load_npz_arrays(fh: BinaryIO, members: dict[str, int]) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Split -> (images, labels or None) of an npz whose keys were checked, loaded without pickle."""
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
        raise ImageRejected(
            "an npz array cannot be read (object arrays are refused, or its header is malformed)"
        ) from exc
    except Exception as exc:  # noqa: BLE001
        raise ImageRejected("unreadable or corrupt npz (a member does not inflate or is truncated)") from exc
    return out


def checked_labels(split: str, labels: np.ndarray, n: int, multi_label: bool) -> np.ndarray:
    """The ``split``'s labels as int64 (n, k) after the shape, dtype and domain checks."""
    lkey = f"{split}_labels"
    if labels.ndim == 1:
        labels = labels[:, None]
    if labels.ndim != 2 or labels.shape[0] != n:
        raise ImageRejected(f"{lkey} has shape {labels.shape}; expected ({n}, 1) or ({n}, k) to match {split}_images")
    if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.bool_)):
        if not (np.issubdtype(labels.dtype, np.floating) and np.all(labels == np.round(labels))):
            raise ImageRejected(f"{lkey} has dtype {labels.dtype}; expected integer labels")
    labels = labels.astype(np.int64)
    if multi_label:
        if not np.isin(labels, (0, 1)).all():
            raise ImageRejected(f"{lkey}: multi-label targets must be 0/1")
    else:
        if labels.shape[1] != 1:
            raise ImageRejected(
                f"{lkey} has {labels.shape[1]} columns but the spec is not multi_label (set image.multi_label)"
            )
        if (labels < 0).any():
            raise ImageRejected(f"{lkey}: negative class index")
    return labels


def npz_label(row: np.ndarray, multi_label: bool) -> str:
    if multi_label:
        return "|".join(str(i) for i in np.flatnonzero(row))
    return canonical_label(int(row[0]))


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
    batch = batch_key(batch_dir)
    for rel, _ in walk_files(batch_dir):
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
                    "label": None if labels is None else npz_label(labels[i], image_spec.multi_label),
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


@lru_cache(maxsize=4)
def cached_npz_array(path: str, mtime_ns: int, key: str, max_bytes: float) -> np.ndarray:
    """One images array of an npz, sized from the zip directory first; kept for the next records of the file."""
    with open(path, "rb") as fh:
        members = npz_members(fh)
        if key not in members:
            raise ImageRejected(f"the npz no longer holds {key}")
        DecodedBudget(max_bytes, max_bytes).take(members[key], f"the npz array {key}")
        fh.seek(0)
        with np.load(fh, allow_pickle=False) as npz:
            return _npz_member(npz, key)
