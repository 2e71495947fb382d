"""Volume readers: one record per volume, in imaging's record schema plus ``depth``.

``npz``: MedMNIST's 3D layout, ``{train,val,test}_images`` uint8 (N, D, H, W) and ``{train,val,test}_labels``
(N, 1) class indices; every ``*.npz`` of the batch is read with ``allow_pickle=False``; each record keeps the
file's own split in ``predefined_split``; ``source`` = ``file.npz#<split>:<i>``; ``id`` = ``<hash>_<split>_<i>``
(the hash over the batch and the file's path, as imaging's npz: :func:`npz_record_id`). Before any voxel is
decoded, each images array's ``.npy`` header (read from the zip member, nothing inflated beyond it) must declare
uint8 (N, D, H, W) volumes of at least ``volume.size`` along each axis and at most ``volume.max_voxels`` voxels,
no array may be an object array or declare more data than its zip entry holds, and the file's arrays (their sizes
from the zip directory) must fit ``volume.max_decoded_mb_per_batch`` with the batch's other files. A file that fails any check, or holds a label
outside the spec's ``classes``, is rejected whole with the reason (quarantined), the batch's other files are read.

``dicom_series`` / ``nifti``: ``labels.csv`` (required) names each record's series folder or file in
``volume.file_column``; each is read by ``imaging.volume_io.read_volume`` (imported when used) and refused there
with a reason. A row whose label is outside the spec's ``classes`` rejects its volume alone; a row repeating an
earlier row's volume, or naming a path that is not an entry of the batch, is rejected under its row number.

Each volume is decoded once here: its record carries the sha256 of its voxels and their range in [0, 1];
:func:`load_volume` given that sha256 refuses a volume that changed since, so the voxels validated are the ones
cached and trained on.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zipfile
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from meddiag_pipelines.imaging.readers import (
    INTENSITY_MAX,
    INTENSITY_MIN,
    LABELS_CSV,
    ImageBatchError,
    ImageReadResult,
    ImageRejected,
    records_schema,
)
from meddiag_pipelines.imaging.readers.listing import _image_file, _read_labels, _row_meta, normalise_rel, walk_files
from meddiag_pipelines.imaging.readers.npz import (
    cached_npz_array,
    check_npz_keys,
    checked_labels,
    load_npz_arrays,
    npz_label,
    npz_members,
    npz_record_id,
)
from meddiag_pipelines.ingestion.landing import UnsafePath, confined_path, display_name
from meddiag_pipelines.specs import canonical_label

if TYPE_CHECKING:
    from meddiag_pipelines.imaging.volume_io import Volume
    from meddiag_pipelines.specs import TaskSpec, VolumeSpec

_MB = 2**20


def volume_schema(spec: TaskSpec) -> dict[str, pl.DataType]:
    return {**records_schema(spec), "depth": pl.Int64}


def _voxel_sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _declared(zf: zipfile.ZipFile, key: str, size: int) -> tuple[tuple[int, ...], np.dtype, int]:
    """The shape and dtype an npz member's ``.npy`` header declares, read without inflating its data, and the bytes
    its zip entry holds after that header (``size``: from the zip directory); an object array is refused."""
    try:
        with zf.open(f"{key}.npy") as member:
            version = np.lib.format.read_magic(member)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(member)
            held = max(size - member.tell(), 0)
    # zipfile: RuntimeError for an encrypted member, NotImplementedError for an unknown compression method
    except (ValueError, OSError, zipfile.BadZipFile, KeyError, RuntimeError, NotImplementedError) as exc:
        raise ImageRejected(f"{key}: its .npy header cannot be read (malformed, encrypted or not an array)") from exc
    if dtype.hasobject:
        raise ImageRejected(f"{key} is an object array (stored as a pickle, which is never loaded)")
    return tuple(int(d) for d in shape), dtype, held


def _check_declared(zf: zipfile.ZipFile, members: dict[str, int], volume: VolumeSpec) -> None:
    """Every images array declares uint8 (N, D, H, W) volumes within ``volume.max_voxels``; no array declares more
    data than its zip entry holds (NumPy would allocate the declared size before finding the data missing)."""
    declared = {key: _declared(zf, key, size) for key, size in sorted(members.items())}
    for key, (shape, dtype, _) in declared.items():
        if not key.endswith("_images"):
            continue
        if len(shape) != 4:
            raise ImageRejected(f"{key} declares shape {shape}; a MedMNIST 3D npz holds (N, D, H, W) volumes")
        if dtype != np.uint8:
            raise ImageRejected(f"{key} declares dtype {dtype}; MedMNIST volumes are uint8")
        if min(shape[1:]) < volume.size:  # the file alone, not its batch (validation's volume_size would be)
            raise ImageRejected(
                f"{key} holds {'x'.join(map(str, shape[1:]))} volumes, smaller than volume.size ({volume.size}) "
                "along an axis (they would be up-sampled)"
            )
        voxels = math.prod(shape[1:])
        if voxels > volume.max_voxels:
            raise ImageRejected(
                f"{key} declares {'x'.join(map(str, shape[1:]))} volumes ({voxels:,} voxels), over "
                f"volume.max_voxels ({volume.max_voxels:,})"
            )
    for key, (shape, dtype, held) in declared.items():
        if math.prod(shape) * dtype.itemsize > held:
            raise ImageRejected(
                f"{key} declares {math.prod(shape) * dtype.itemsize:,} bytes of data but its zip entry holds {held:,}"
            )


def _check_npz(path: Path, volume: VolumeSpec, used: list[float]) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Split -> (volumes, labels or None) after every check; ``used``: decoded bytes of the batch so far (one item,
    updated). Raises ImageRejected for the whole file."""
    with open(path, "rb") as fh:
        members = npz_members(fh)
        check_npz_keys(members)
        try:
            with zipfile.ZipFile(fh) as zf:
                _check_declared(zf, members, volume)
        except zipfile.BadZipFile as exc:
            raise ImageRejected("not a valid npz file (its zip directory cannot be read)") from exc
        nbytes = sum(members.values())
        if used[0] + nbytes > volume.max_decoded_mb_per_batch * _MB:
            raise ImageRejected(
                f"its arrays would decode to {nbytes / _MB:.1f} MB, taking the batch over "
                f"volume.max_decoded_mb_per_batch ({volume.max_decoded_mb_per_batch:g} MB); land it "
                "in another batch"
            )
        used[0] += nbytes
        arrays = load_npz_arrays(fh, members)
    return {
        split: (images, None if labels is None else checked_labels(split, labels, len(images), False))
        for split, (images, labels) in arrays.items()
    }


def _npz_rows(batch: str, rel: str, arrays: dict[str, tuple[np.ndarray, np.ndarray | None]]) -> list[dict]:
    rows = []
    for split, (volumes, labels) in arrays.items():
        d, h, w = volumes.shape[1:]
        for i, vol in enumerate(volumes):
            rows.append(
                {
                    "id": npz_record_id(batch, rel, split, i),
                    "patient_id": None,
                    "label": None if labels is None else npz_label(labels[i], False),
                    "source": f"{rel}#{split}:{i}",
                    "sha256": _voxel_sha(vol),
                    "depth": int(d),
                    "height": int(h),
                    "width": int(w),
                    "channels": 1,
                    "bit_depth": 8,
                    "predefined_split": split,
                    INTENSITY_MIN: float(vol.min()) / 255.0,
                    INTENSITY_MAX: float(vol.max()) / 255.0,
                }
            )
    return rows


def read_npz_volumes(batch_dir: Path, spec: TaskSpec) -> ImageReadResult:
    rows: list[dict] = []
    rejected: list[tuple[str, str]] = []
    used = [0.0]
    for rel, _ in walk_files(batch_dir):
        if not rel.lower().endswith(".npz"):
            continue
        try:
            arrays = _check_npz(_image_file(batch_dir, rel, spec), spec.volume, used)
        except ImageRejected as exc:
            rejected.append((rel, str(exc)))
            continue
        file_rows = _npz_rows(display_name(batch_dir.name), rel, arrays)
        outside = _outside_classes([r["label"] for r in file_rows], spec)
        if outside:
            rejected.append(
                (rel, f"{outside} of its labels are outside the task's classes ({', '.join(spec.classes)})")
            )
            continue
        rows += file_rows
    return ImageReadResult(_frame(rows, spec), rejected)


def _outside_classes(labels: list[str | None], spec: TaskSpec) -> int:
    """How many ``labels`` lie outside the spec's declared classes, so that the file or series holding them is
    rejected alone (validation would refuse the whole batch); 0 when the spec declares none (the first validated
    batch then fixes the domain). Counted, never shown: a stray label may be another column's content."""
    if not spec.classes:
        return 0
    classes = {canonical_label(c) for c in spec.classes}
    return sum(label is not None and label not in classes for label in labels)


def _frame(rows: list[dict], spec: TaskSpec) -> pl.DataFrame:
    schema = volume_schema(spec)
    return pl.DataFrame([{k: r.get(k) for k in schema} for r in rows], schema=schema, orient="row")


def listed_record_id(batch: str, rel: str) -> str:
    """The id of the volume ``rel`` of ``batch`` when labels.csv gives none: 96 bits of a SHA-256 over both (JSON,
    as :func:`npz_record_id`), so that no folder or file name (which may carry a patient's name) becomes an id."""
    return "vol_" + hashlib.sha256(json.dumps([batch, rel]).encode()).hexdigest()[:24]


def read_listed_volumes(batch_dir: Path, spec: TaskSpec) -> ImageReadResult:
    """``dicom_series`` / ``nifti``: one record per labels.csv row, read by ``imaging.volume_io``; a row with no
    file, repeating an id or naming a volume an earlier row named, is rejected under its row number (never under an
    empty or repeated name). A batch without labels.csv is refused whole; a NIfTI file no row names is rejected."""
    from meddiag_pipelines.imaging.volume_io import VolumeRefused, read_volume

    labels = _read_labels(batch_dir, spec)
    file_col, batch = spec.volume.file_column, display_name(batch_dir.name)
    if labels is None:
        raise ImageBatchError(
            f"no {LABELS_CSV}: a {spec.volume.format} batch names each record's volume in its {file_col!r} column"
        )
    rows: list[dict] = []
    rejected: list[tuple[str, str]] = []
    seen: set[str] = set()
    named: dict[str, int] = {}  # volume -> the row that named it first
    for n, row in enumerate(labels.iter_rows(named=True), start=1):
        rel = normalise_rel(row.get(file_col) or "").rstrip("/")
        meta = {**_row_meta(row, rel, spec), "id": row.get(spec.id) or listed_record_id(batch, rel)}
        if not rel:
            rejected.append((f"{LABELS_CSV} row {n}", f"empty {file_col!r} column"))
            continue
        if meta["id"] in seen:
            rejected.append((f"{LABELS_CSV} row {n}", f"duplicate id in {LABELS_CSV} (only the first row is used)"))
            continue
        if rel in named:
            rejected.append(
                (f"{LABELS_CSV} row {n}", f"names the volume of row {named[rel]} again (one volume is one record)")
            )
            continue
        named[rel] = n
        try:
            confined_path(batch_dir, rel)
        except UnsafePath as exc:  # a path outside the batch, or one it lacks, is data: named by its row only
            inside = _batch_entry(batch_dir, rel)
            rejected.append((rel, f"{rel}: {exc}") if inside else (f"{LABELS_CSV} row {n}", str(exc)))
            continue
        if _outside_classes([meta["label"]], spec):
            rejected.append((rel, f"its label is outside the task's classes ({', '.join(spec.classes)})"))
            continue
        try:
            volume = read_volume(batch_dir, rel, spec.volume.format, max_voxels=spec.volume.max_voxels)
        except (VolumeRefused, ImageRejected) as exc:
            rejected.append((rel, str(exc)))
            continue
        seen.add(meta["id"])
        d, h, w = volume.array.shape
        low, high = float(np.nanmin(volume.array)), float(np.nanmax(volume.array))
        rows.append(
            {
                **meta,
                "source": rel,
                "sha256": _voxel_sha(volume.array),
                "depth": d,
                "height": h,
                "width": w,
                "channels": 1,
                "bit_depth": 16,
                "predefined_split": None,
                INTENSITY_MIN: 0.0,
                INTENSITY_MAX: 1.0 if high > low else 0.0,
            }
        )
    if spec.volume.format == "nifti":
        rejected += _unlisted_nifti(batch_dir, set(named))
    return ImageReadResult(_frame(rows, spec), _kept_apart(rejected, [r["source"] for r in rows]))


def _batch_entry(batch_dir: Path, rel: str) -> bool:
    """``rel`` names an entry of the batch (a link in it included), never a path above or outside it."""
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or "\x00" in rel:  # lexists raises on a NUL byte
        return False
    return os.path.lexists(batch_dir / rel)


def _unlisted_nifti(batch_dir: Path, named: set[str]) -> list[tuple[str, str]]:
    """NIfTI files of the batch that no labels.csv row names (as imaging's listing rejects unlisted images)."""
    from meddiag_pipelines.imaging.volume_io import NIFTI_SUFFIXES

    return [
        (rel, f"volume file not listed in {LABELS_CSV}")
        for rel, _ in walk_files(batch_dir)
        if rel.lower().endswith(NIFTI_SUFFIXES) and rel not in named
    ]


def _kept_apart(rejected: list[tuple[str, str]], read: list[str]) -> list[tuple[str, str]]:
    """Rejections as ingestion may act on them: a refused series folder or file goes to quarantine whole, so one
    that holds, or lies inside, a volume read for another record is named by its labels.csv value in the problem
    instead (it stays in landing, where that record's voxels are)."""

    def overlaps(rel: str) -> bool:
        return any(rel == s or s.startswith(rel + "/") or rel.startswith(s + "/") for s in read)

    return [
        (f"{LABELS_CSV} entry", f"{problem} (left in landing: another record's volume is read there)")
        if overlaps(rel)
        else (rel, problem)
        for rel, problem in rejected
    ]


def read_volume_batch(batch_dir: Path, spec: TaskSpec) -> ImageReadResult:
    """The records of one landed batch and its rejected files, in the spec's ``volume.format``."""
    if spec.volume.format == "npz":
        return read_npz_volumes(batch_dir, spec)
    return read_listed_volumes(batch_dir, spec)


def resize_cube(unit: np.ndarray, size: int) -> np.ndarray:
    """(D, H, W) float in [0, 1] -> (size, size, size), trilinear (each axis scaled to ``size``)."""
    if unit.shape == (size,) * 3:
        return unit.astype(np.float32, copy=False)
    from scipy.ndimage import zoom

    factors = [size / n for n in unit.shape]
    return np.clip(zoom(unit.astype(np.float32), factors, order=1, grid_mode=True, mode="nearest"), 0.0, 1.0)


def model_axes(volume: Volume, orientation: str) -> Volume:
    """A RAS+ volume (axes x, y, z) in the model's axis order (z, y, x), as an npz volume's (D, H, W) and the spec's
    ``spacing: [z, y, x]``: axis 0 inferior to superior, then posterior to anterior (RAS) or anterior to posterior
    (LPS), then left to right (RAS) or right to left (LPS)."""
    from meddiag_pipelines.imaging.volume_io import Volume

    array = volume.array.transpose(2, 1, 0)
    if orientation == "LPS":
        array = array[:, ::-1, ::-1]
    return Volume(np.ascontiguousarray(array), volume.spacing[::-1], volume.modality)


def _intensity(volume_spec: VolumeSpec) -> dict:
    """The spec's intensity mapping; unset: the volume's own minimum to maximum (percentiles 0 and 100)."""
    if volume_spec.intensity is None:
        return {"percentile": [0.0, 100.0]}
    return volume_spec.intensity.model_dump(exclude_none=True)


def load_volume(batch_dir: Path, source: str, spec: TaskSpec, sha256: str | None) -> np.ndarray:
    """One record's volume as float32 (1, S, S, S) in [0, 1]; :class:`ImageRejected` when it no longer reads or
    its voxels differ from ``sha256`` (the hash validated at ingestion)."""
    volume_spec = spec.volume
    if volume_spec.format == "npz":
        rel, _, where = source.rpartition("#")
        split, _, index = where.partition(":")
        path = _image_file(batch_dir, rel, spec)
        arrays = cached_npz_array(
            str(path), path.stat().st_mtime_ns, f"{split}_images", volume_spec.max_decoded_mb_per_batch * _MB
        )
        if not index.isdigit() or int(index) >= len(arrays):
            raise ImageRejected(f"the npz no longer holds volume {index} of {split}")
        native = arrays[int(index)]
        unit = resize_cube(native.astype(np.float32) / 255.0, volume_spec.size)
    else:
        from meddiag_pipelines.imaging.volume_io import (
            VolumeRefused,
            read_volume,
            to_model_input,
        )

        try:
            read = read_volume(batch_dir, source, volume_spec.format, max_voxels=volume_spec.max_voxels)
        except VolumeRefused as exc:
            raise ImageRejected(str(exc)) from exc
        native = read.array
        unit = np.clip(
            to_model_input(
                model_axes(read, volume_spec.orientation),
                spacing=volume_spec.spacing,
                size=volume_spec.size,
                intensity=_intensity(volume_spec),
            ),
            0.0,
            1.0,
        )
    if sha256 is not None and _voxel_sha(native) != sha256:
        raise ImageRejected("its voxels changed since the batch was validated")
    return unit[None].astype(np.float32, copy=False)


__all__ = ["load_volume", "read_volume_batch", "resize_cube", "volume_schema"]
