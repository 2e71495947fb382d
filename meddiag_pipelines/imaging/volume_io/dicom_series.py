"""DICOM series (a folder of slices, or one enhanced multi-frame file) to a :class:`Volume`, every geometry check
made from the headers before any pixel is decoded.

A file inside a series folder is named in messages by its place in the folder ("file 3 of 40 in name order"),
never by its name: exported file names often carry the patient's name."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meddiag_pipelines.imaging.readers.dicom_safety import (
    DEFLATED,
    HEADER_MAX,
    check_decoder,
    inflates_within,
    read_header,
)
from meddiag_pipelines.imaging.readers.listing import walk_files
from meddiag_pipelines.imaging.readers.records import ImageRejected
from meddiag_pipelines.imaging.volume_io.geometry import Volume, VolumeRefused, canonical
from meddiag_pipelines.ingestion.landing import UnsafePath, confined_file

GAP_FACTOR = 1.5  # a step over this many median steps is a missing slice
UNEVEN_TOLERANCE = 0.1  # a step off the median by more than this fraction (and not a gap) is uneven spacing
ORIENTATION_TOLERANCE = 1e-3  # direction cosines that differ by more than this are another orientation
_BYTES_PER_VOXEL_ON_DISK = 8  # a file larger than max_voxels x 8 bytes (+ header) is refused before it is parsed


@dataclass(frozen=True)
class SeriesInfo:
    """One DICOM series of a batch: ``key`` is the sha256 of its SeriesInstanceUID truncated to 16 hex digits (the
    UID itself never leaves this module); ``folders`` the batch-relative folders holding its files ("." for the
    batch folder itself); ``n_slices`` its images (frames of multi-frame files counted)."""

    key: str
    folders: tuple[str, ...]
    n_slices: int
    n_files: int
    modality: str | None


@dataclass
class _Frame:
    """One slice's geometry and rescale, from the headers (``file`` indexes the series' files)."""

    file: int
    frame: int
    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: np.ndarray
    slope: float
    intercept: float


def series_key(uid: str) -> str:
    return hashlib.sha256(str(uid).encode()).hexdigest()[:16]


def _floats(value, n: int) -> np.ndarray | None:
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.isfinite(arr).all() else None


def _header(path: Path, where: str, max_bytes: float | None):
    """The file's data set without its pixel data; ``None`` for a file that is not a DICOM image (a DICOMDIR, a
    report, a README beside the slices). Raises :class:`VolumeRefused` for a DICOM file too large or unreadable."""
    from pydicom.errors import InvalidDicomError

    if max_bytes is not None and path.lstat().st_size > max_bytes:
        raise VolumeRefused(f"{where} is larger on disk than a volume of max_voxels could be")
    try:
        with open(path, "rb") as fh:
            ds = read_header(fh)
    except InvalidDicomError:
        return None  # no DICM prefix: not a slice (a missing slice inside the stack is caught as a gap)
    except Exception:  # noqa: BLE001 - pydicom / zlib messages can quote header bytes
        raise VolumeRefused(f"{where} has an unreadable or truncated DICOM header") from None
    if "Rows" in ds and "SeriesInstanceUID" in ds:
        return ds
    if _is_image_storage(ds):  # pydicom reads a truncated header without error: the slice would vanish unseen
        raise VolumeRefused(
            f"{where} is a DICOM image whose header stops short of Rows / SeriesInstanceUID (truncated)"
        )
    return None  # a DICOMDIR, a structured report, a presentation state beside the slices


def _is_image_storage(ds) -> bool:
    """Whether the file declares an image SOP class ("CT Image Storage", "Enhanced MR Image Storage", ...)."""
    from pydicom.uid import UID

    meta = getattr(ds, "file_meta", None)
    sop = (meta.get("MediaStorageSOPClassUID") if meta is not None else None) or ds.get("SOPClassUID")
    return sop is not None and "Image Storage" in UID(str(sop)).name


def _series_files(batch_dir: Path, rel: str, path: Path, max_bytes: float) -> list[tuple[str, Path, object]]:
    """(reference used in messages, path, header) of every DICOM image file under ``path`` (a folder or a file),
    in name order; a symbolic link, an unreadable or an oversized DICOM file refuses the whole series."""
    if path.is_file():
        ds = _header(path, rel, max_bytes)
        return [] if ds is None else [(rel, path, ds)]
    entries = list(walk_files(path))
    out = []
    for i, (sub, p) in enumerate(entries, start=1):
        where = f"{rel}: file {i} of {len(entries)} (in name order)"
        if p.is_symlink():
            raise VolumeRefused(f"{where} is a symbolic link, refused (links are never followed)")
        try:
            confined_file(batch_dir, f"{rel}/{sub}")
        except UnsafePath as exc:
            raise VolumeRefused(f"{where}: {exc}") from None
        ds = _header(p, where, max_bytes)
        if ds is not None:
            out.append((where, p, ds))
    return out


def _one_series(rel: str, files: list[tuple[str, Path, object]]) -> list[tuple[str, Path, object]]:
    groups: dict[str, list] = defaultdict(list)
    for item in files:
        groups[str(item[2].SeriesInstanceUID)].append(item)
    if not groups:
        raise VolumeRefused(f"{rel} is or holds no DICOM image")
    if len(groups) == 1:
        return next(iter(groups.values()))
    # A study folder holds its scouts (and the odd lone image) beside the volume: those are set aside, not chosen.
    volumes = [files for files in groups.values() if _can_be_volume(files)]
    if len(volumes) == 1:
        return volumes[0]
    aside = len(groups) - len(volumes)
    if not volumes:
        raise VolumeRefused(f"{rel} holds no DICOM series that can be a volume ({aside} localizer or single-image)")
    besides = f" besides {aside} localizer or single-image series" if aside else ""
    raise VolumeRefused(
        f"{rel} holds {len(volumes)} DICOM series that could be volumes{besides}: one record is one series "
        "(name the series' own folder in labels.csv)"
    )


def _can_be_volume(files: list[tuple[str, Path, object]]) -> bool:
    """Not a localizer (ImageType LOCALIZER: a CT scout) and not one single-frame image."""
    for _, _, ds in files:
        image_type = ds.get("ImageType") or []
        if "LOCALIZER" in ([image_type] if isinstance(image_type, str) else [str(v) for v in image_type]):
            return False
    return len(files) > 1 or str(files[0][2].get("NumberOfFrames", "1") or "1").strip() not in ("0", "1")


def _check_same_source(rel: str, headers: list) -> None:
    """Slices of one series must come from one patient, one study and one modality (compared here, never shown)."""
    for tag, what in (("PatientID", "patients"), ("StudyInstanceUID", "studies"), ("Modality", "modalities")):
        values = {str(ds.get(tag, "")) for ds in headers}
        if len(values) > 1:
            raise VolumeRefused(f"{rel}: the series holds slices from {len(values)} {what} ({tag} differs)")


def _check_size(rel: str, headers: list, max_voxels: int) -> tuple[int, int]:
    """(rows, columns), all slices alike and the declared voxels within ``max_voxels``; nothing decoded yet."""
    try:
        sizes = {(int(ds.Rows), int(ds.Columns)) for ds in headers}
        frames = sum(int(ds.get("NumberOfFrames", 1) or 1) for ds in headers)
        samples = {int(ds.get("SamplesPerPixel", 1) or 1) for ds in headers}
    except (TypeError, ValueError):
        raise VolumeRefused(f"{rel}: a slice has no valid Rows / Columns / NumberOfFrames / SamplesPerPixel") from None
    if len(sizes) > 1:
        shown = ", ".join(f"{r}x{c}" for r, c in sorted(sizes))
        raise VolumeRefused(f"{rel}: mixed slice sizes (Rows x Columns: {shown}) in one series")
    ((rows, cols),) = sizes
    if rows <= 0 or cols <= 0 or frames <= 0:
        raise VolumeRefused(f"{rel}: empty slices ({rows}x{cols}, {frames} frames)")
    if samples != {1}:
        raise VolumeRefused(f"{rel}: colour slices (SamplesPerPixel {max(samples)}); a volume is greyscale")
    if rows * cols * frames > max_voxels:
        raise VolumeRefused(
            f"{rel}: declares {frames} slices of {rows}x{cols} = {rows * cols * frames} voxels, over "
            f"max_voxels {max_voxels} (refused before decoding)"
        )
    return rows, cols


def _rescale(item) -> tuple[float, float]:
    seq = item.get("PixelValueTransformationSequence") if item is not None else None
    src = seq[0] if seq else item
    slope, intercept = src.get("RescaleSlope"), src.get("RescaleIntercept")
    try:  # absent or empty: the identity; a slope of 0 is kept (and refused): it would blank the slice
        return 1.0 if slope in (None, "") else float(slope), 0.0 if intercept in (None, "") else float(intercept)
    except (TypeError, ValueError):
        return float("nan"), float("nan")


def _classic_frames(rel: str, series: list) -> list[_Frame]:
    frames = []
    for i, (where, _, ds) in enumerate(series):
        pos, ori = _floats(ds.get("ImagePositionPatient"), 3), _floats(ds.get("ImageOrientationPatient"), 6)
        ps = _floats(ds.get("PixelSpacing"), 2)
        if pos is None or ori is None or ps is None:
            raise VolumeRefused(
                f"{where}: no valid ImagePositionPatient, ImageOrientationPatient or PixelSpacing "
                "(the slice cannot be placed in the volume)"
            )
        frames.append(_Frame(i, 0, pos, ori, ps, *_rescale(ds)))
    return frames


def _group_item(ds, frame_item, name: str):
    """A functional group of one frame: the frame's own, else the shared one (None when neither has it)."""
    for holder in (frame_item, (ds.get("SharedFunctionalGroupsSequence") or [None])[0]):
        if holder is not None and holder.get(name):
            return holder.get(name)[0]
    return None


def _enhanced_frames(where: str, ds) -> list[_Frame]:
    """Per-frame geometry of an enhanced multi-frame file (Plane Position / Plane Orientation / Pixel Measures /
    Pixel Value Transformation functional groups)."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    n = int(ds.get("NumberOfFrames", 1) or 1)
    if not per_frame or len(per_frame) != n:
        raise VolumeRefused(
            f"{where}: a multi-frame file without a per-frame position for each of its {n} frames "
            "(PerFrameFunctionalGroupsSequence): its frames cannot be placed in a volume"
        )
    frames = []
    for f, item in enumerate(per_frame):
        pos_item = _group_item(ds, item, "PlanePositionSequence")
        ori_item = _group_item(ds, item, "PlaneOrientationSequence")
        ps_item = _group_item(ds, item, "PixelMeasuresSequence")
        pos = _floats(pos_item.get("ImagePositionPatient"), 3) if pos_item else None
        ori = _floats(ori_item.get("ImageOrientationPatient"), 6) if ori_item else None
        ps = _floats(ps_item.get("PixelSpacing"), 2) if ps_item else None
        if pos is None or ori is None or ps is None:
            raise VolumeRefused(
                f"{where}: frame {f + 1} has no valid plane position, plane orientation or pixel "
                "spacing (the frame cannot be placed in the volume)"
            )
        tr = _group_item(ds, item, "PixelValueTransformationSequence")
        frames.append(_Frame(0, f, pos, ori, ps, *_rescale(tr if tr is not None else ds)))
    return frames


def _frames(rel: str, series: list) -> list[_Frame]:
    multi = [s for s in series if int(s[2].get("NumberOfFrames", 1) or 1) > 1]
    if not multi:
        return _classic_frames(rel, series)
    if len(series) > 1:
        raise VolumeRefused(
            f"{rel}: a series of {len(series)} files of which {len(multi)} are multi-frame; a "
            "volume is either one enhanced multi-frame file or single-frame slices"
        )
    return _enhanced_frames(series[0][0], series[0][2])


def _order(rel: str, frames: list[_Frame]) -> tuple[list[_Frame], np.ndarray]:
    """Frames sorted along the slice normal (ImagePositionPatient projected on it; never file name or
    InstanceNumber) and the step vector between them, after every check of a regular stack."""
    first = frames[0]
    if any(not np.allclose(f.orientation, first.orientation, atol=ORIENTATION_TOLERANCE) for f in frames):
        raise VolumeRefused(f"{rel}: mixed slice orientations (ImageOrientationPatient differs between slices)")
    if any(not np.allclose(f.pixel_spacing, first.pixel_spacing, rtol=1e-3, atol=1e-4) for f in frames):
        raise VolumeRefused(f"{rel}: mixed pixel spacings (PixelSpacing differs between slices)")
    if not (first.pixel_spacing > 0).all():
        raise VolumeRefused(f"{rel}: PixelSpacing {first.pixel_spacing.tolist()} is not positive (mm)")
    if any(not (np.isfinite(f.slope) and np.isfinite(f.intercept)) or f.slope == 0 for f in frames):
        raise VolumeRefused(f"{rel}: a slice has a malformed or zero RescaleSlope / RescaleIntercept")
    if len(frames) < 2:
        raise VolumeRefused(f"{rel}: a single slice is not a volume (its slice spacing is unknown)")
    row, col = first.orientation[:3], first.orientation[3:]
    normal = np.cross(row, col)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-2):
        raise VolumeRefused(f"{rel}: ImageOrientationPatient rows and columns are not unit, orthogonal directions")
    frames = sorted(frames, key=lambda f: float(f.position @ normal))
    depth = np.array([f.position @ normal for f in frames])
    steps = np.diff(depth)
    median = float(np.median(steps))
    if median <= 1e-3 or (steps <= max(1e-3, 0.01 * median)).any():
        shared = len(frames) - len(np.unique(np.round(depth, 3)))
        raise VolumeRefused(
            f"{rel}: duplicated slice position ({shared} slice(s) at a position another slice already has)"
        )
    if steps.max() > GAP_FACTOR * median:
        raise VolumeRefused(
            f"{rel}: missing slice(s): a gap of {steps.max():.2f} mm where slices are {median:.2f} mm apart"
        )
    if np.abs(steps - median).max() > max(UNEVEN_TOLERANCE * median, 1e-3):
        raise VolumeRefused(f"{rel}: uneven slice spacing (steps from {steps.min():.2f} to {steps.max():.2f} mm)")
    inplane = np.array([f.position - (f.position @ normal) * normal for f in frames])
    if np.abs(inplane - inplane[0]).max() > 0.1 * float(first.pixel_spacing.min()) + 1e-3:
        raise VolumeRefused(f"{rel}: the slices are not stacked along their normal (gantry tilt or shifted slices)")
    return frames, normal * median


def _check_lengths(series: list) -> None:
    """A file with uncompressed pixel data must be at least as long as the pixel data its header declares: a
    header that declares gigabytes in a kilobyte file is refused before anything is allocated or decoded."""
    for where, path, ds in series:
        tsyntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        if tsyntax is None or _is_compressed(tsyntax):
            continue
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        bits = int(ds.get("BitsAllocated", 16) or 16)
        declared = -(-int(ds.Rows) * int(ds.Columns) * frames * bits // 8)
        if path.lstat().st_size < declared:
            raise VolumeRefused(
                f"{where}: the file ({path.lstat().st_size} bytes) is shorter than the pixel data its "
                f"header declares ({declared} bytes)"
            )


def _is_compressed(tsyntax) -> bool:
    from pydicom.uid import UID

    uid = UID(str(tsyntax))
    return not uid.is_transfer_syntax or uid.is_compressed or uid.is_deflated  # unknown: check_decoder refuses it


def _decode_file(where: str, path: Path, header):
    """The full data set of one file, after the deflate bound and decoder check; the geometry read with it must be
    the geometry checked (the file may have been replaced meanwhile)."""
    import pydicom

    tsyntax = header.file_meta.get("TransferSyntaxUID") if hasattr(header, "file_meta") else None
    rows, cols = int(header.Rows), int(header.Columns)
    frames = int(header.get("NumberOfFrames", 1) or 1)
    nbytes = rows * cols * frames * -(-int(header.get("BitsAllocated", 16) or 16) // 8)
    try:
        check_decoder(tsyntax)
        with open(path, "rb") as fh:
            if str(tsyntax or "") == DEFLATED and not inflates_within(fh, nbytes + HEADER_MAX):
                raise VolumeRefused(f"{where}: a deflated DICOM that inflates beyond its declared pixel data")
            fh.seek(0)
            ds = pydicom.dcmread(fh)
    except ImageRejected as exc:
        raise VolumeRefused(f"{where}: {exc}") from None
    except VolumeRefused:
        raise
    except Exception:  # noqa: BLE001
        raise VolumeRefused(f"{where}: unreadable or truncated DICOM") from None
    same = (ds.get("SeriesInstanceUID"), ds.get("Rows"), ds.get("Columns"), ds.get("ImagePositionPatient"))
    if same != tuple(header.get(k) for k in ("SeriesInstanceUID", "Rows", "Columns", "ImagePositionPatient")):
        raise VolumeRefused(f"{where}: the file changed while the series was read")
    return ds


def _pixels(where: str, ds, rows: int, cols: int, frames: int) -> np.ndarray:
    from pydicom.pixels import pixel_array

    if not any(t in ds for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise VolumeRefused(f"{where}: no pixel data")
    _check_native_length(where, ds, rows * cols * frames)
    try:
        arr = pixel_array(ds)
    except Exception:  # noqa: BLE001 - pydicom's messages can quote header values
        raise VolumeRefused(
            f"{where}: cannot decode the pixel data (truncated, corrupt, or inconsistent with its header)"
        ) from None
    arr = arr.reshape((frames, rows, cols)) if arr.size == frames * rows * cols else None
    if arr is None:
        raise VolumeRefused(f"{where}: the decoded pixel data does not match its declared size")
    return arr


def _check_native_length(where: str, ds, voxels: int) -> None:
    """Uncompressed pixel data must be exactly what Rows x Columns x frames x BitsAllocated declare (one pad byte
    allowed): pydicom drops excess bytes as padding, so a header that understates the image would be read cut."""
    tsyntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if "PixelData" not in ds or tsyntax is None or _is_compressed(tsyntax):
        return
    declared = -(-voxels * int(ds.get("BitsAllocated", 16) or 16) // 8)
    held = len(ds.PixelData)
    if held not in (declared, declared + 1):
        raise VolumeRefused(
            f"{where}: its pixel data is {held} bytes where Rows x Columns x BitsAllocated declare {declared}"
        )


def _stack(rel: str, series: list, frames: list[_Frame], rows: int, cols: int) -> np.ndarray:
    """(slices, rows, columns) float32 in physical units, slices in ``frames`` order."""
    from pydicom.pixels import apply_modality_lut

    out = np.empty((len(frames), rows, cols), dtype=np.float32)
    position = {(f.file, f.frame): k for k, f in enumerate(frames)}
    for i, (where, path, header) in enumerate(series):
        ds = _decode_file(where, path, header)
        n = int(header.get("NumberOfFrames", 1) or 1)
        arr = _pixels(where, ds, rows, cols, n)
        for f in range(n):
            frame = frames[position[(i, f)]]
            if n == 1 and ds.get("ModalityLUTSequence"):
                values = apply_modality_lut(arr[f], ds)
            else:
                values = arr[f].astype(np.float64) * frame.slope + frame.intercept
            out[position[(i, f)]] = values
    return out


def read_dicom_series(batch_dir: Path, rel: str, path: Path, max_voxels: int) -> Volume:
    max_bytes = max_voxels * _BYTES_PER_VOXEL_ON_DISK + HEADER_MAX
    series = _one_series(rel, _series_files(batch_dir, rel, path, max_bytes))
    headers = [h for _, _, h in series]
    _check_same_source(rel, headers)
    rows, cols = _check_size(rel, headers, max_voxels)
    frames, step = _order(rel, _frames(rel, series))
    _check_lengths(series)
    first = frames[0]
    row_dir, col_dir = first.orientation[:3], first.orientation[3:]
    affine_lps = np.eye(4)
    # Array axes (slice, row, column): a row index moves along the column direction cosine by PixelSpacing[0],
    # a column index along the row direction cosine by PixelSpacing[1].
    affine_lps[:3, 0] = step
    affine_lps[:3, 1] = col_dir * first.pixel_spacing[0]
    affine_lps[:3, 2] = row_dir * first.pixel_spacing[1]
    affine_lps[:3, 3] = first.position
    affine_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps  # DICOM's LPS to RAS
    modality = headers[0].get("Modality")
    return canonical(_stack(rel, series, frames, rows, cols), affine_ras, str(modality) if modality else None)


def list_dicom_series(batch_dir: Path) -> list[SeriesInfo]:
    """Every DICOM image series under the batch, grouped by SeriesInstanceUID wherever its files lie; links,
    files that are not DICOM images and unreadable headers are skipped (:func:`read_dicom_series` refuses them
    when the series is read)."""
    found: dict[str, dict] = {}
    for rel, path in walk_files(batch_dir):
        if path.is_symlink() or not path.is_file():
            continue
        try:
            ds = _header(path, rel, None)
        except VolumeRefused:
            continue
        if ds is None:
            continue
        entry = found.setdefault(
            str(ds.SeriesInstanceUID), {"folders": set(), "slices": 0, "files": 0, "modality": ds.get("Modality")}
        )
        entry["folders"].add(Path(rel).parent.as_posix())
        entry["files"] += 1
        try:
            entry["slices"] += int(ds.get("NumberOfFrames", 1) or 1)
        except (TypeError, ValueError):
            entry["slices"] += 1
    infos = [
        SeriesInfo(
            series_key(uid),
            tuple(sorted(e["folders"])),
            e["slices"],
            e["files"],
            str(e["modality"]) if e["modality"] else None,
        )
        for uid, e in found.items()
    ]
    return sorted(infos, key=lambda s: (s.folders, s.key))
