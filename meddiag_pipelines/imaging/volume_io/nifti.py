"""NIfTI-1 / NIfTI-2 single files (``.nii``, ``.nii.gz``) to a :class:`Volume`. The header is read and checked
first; the file is then read (inflated) only up to the size its header declares, so a gzip bomb or a header that
declares more than the file holds is refused without ever inflating or allocating beyond ``max_voxels``. Header
text fields (``descrip``, ``aux_file``, ``intent_name``, extensions) may hold patient details and never reach a
message."""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from meddiag_pipelines.imaging.volume_io.geometry import Volume, VolumeRefused, canonical

NIFTI_SUFFIXES = (".nii", ".nii.gz")
_HEADER_BYTES = 540  # a NIfTI-2 header; a NIfTI-1 header is the first 348 bytes
_TRAILING_SLACK = 1 << 16  # bytes tolerated after the voxel data (padding some writers add)
_MAX_OFFSET = 1 << 24  # header + extensions before the voxel data
_SHEAR_TOLERANCE = 1e-3  # |cos| between two voxel axes above this: a sheared grid (not reoriented without resampling)


def _read_at_most(stream: BinaryIO, n: int, rel: str) -> bytes:
    """Up to ``n`` bytes of the (possibly gzip) stream; a gzip stream is inflated only that far."""
    try:
        return stream.read(n)
    except (OSError, EOFError, zlib.error):
        raise VolumeRefused(f"{rel}: not a valid gzip stream (corrupt or truncated .nii.gz)") from None


def _header(head: bytes, rel: str):
    import nibabel as nib

    if len(head) < 348:
        raise VolumeRefused(f"{rel}: too short for a NIfTI header ({len(head)} bytes)")
    sizes = {int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")}
    klass = nib.Nifti2Header if 540 in sizes else nib.Nifti1Header if 348 in sizes else None
    if klass is None:
        raise VolumeRefused(f"{rel}: not a NIfTI file (its header size field is neither 348 nor 540)")
    try:
        hdr = klass.from_fileobj(io.BytesIO(head), check=False)
    except Exception:  # noqa: BLE001 - nibabel's messages can quote header fields
        raise VolumeRefused(f"{rel}: unreadable NIfTI header") from None
    if bytes(hdr["magic"]).rstrip(b"\x00") not in (b"n+1", b"n+2"):
        raise VolumeRefused(
            f"{rel}: not a single-file NIfTI (its magic is not 'n+1' / 'n+2'; .hdr/.img pairs are not read)"
        )
    return hdr


def _check_header(hdr, rel: str, max_voxels: int) -> tuple[tuple[int, ...], int]:
    """(3D shape, bytes of header + voxel data declared); refuses a bad dimension, type, spacing or affine."""
    if not 1 <= int(hdr["dim"][0]) <= 7:
        raise VolumeRefused(f"{rel}: the header's dim[0] is not a dimension count of 1 to 7 (a malformed header)")
    try:
        shape = tuple(int(d) for d in hdr.get_data_shape())
        dtype = hdr.get_data_dtype()
        offset = int(hdr.get_data_offset())
    except Exception:  # noqa: BLE001
        raise VolumeRefused(f"{rel}: the NIfTI header's dimensions or data type are invalid") from None
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise VolumeRefused(f"{rel}: voxel type {dtype.name} is not a scalar intensity (RGB / complex not read)")
    if not 348 <= offset <= _MAX_OFFSET:
        raise VolumeRefused(f"{rel}: the header places its voxel data at byte {offset} (vox_offset out of range)")
    extra = shape[3:]
    if len(shape) < 3 or any(d != 1 for d in extra) or min(shape[:3]) < 1:
        what = f"{int(np.prod(extra))} volumes ({len(shape)}D)" if len(shape) > 3 else f"{len(shape)} dimension(s)"
        raise VolumeRefused(f"{rel}: a NIfTI with {what}, shape {shape}: one record is one 3D volume")
    if min(shape[:3]) < 2:
        raise VolumeRefused(f"{rel}: shape {shape[:3]} is a single slice, not a volume (one voxel along an axis)")
    voxels = int(np.prod(shape[:3], dtype=np.int64))
    if voxels > max_voxels:
        raise VolumeRefused(
            f"{rel}: declares {'x'.join(map(str, shape[:3]))} = {voxels} voxels, over max_voxels "
            f"{max_voxels} (refused before reading its data)"
        )
    pixdim = np.asarray(hdr["pixdim"][1:4], dtype=np.float64)
    if not (np.isfinite(pixdim).all() and (pixdim > 0).all()):
        raise VolumeRefused(f"{rel}: voxel spacing (pixdim) {pixdim.tolist()} is not finite and positive")
    return shape[:3], offset + voxels * dtype.itemsize


def _check_affine(hdr, rel: str) -> None:
    """The voxel-to-world affine nibabel uses (sform, else qform) gives one orientation without guessing: a qform or
    an sform is set, they agree on axes and voxel sizes when both are, and the grid is invertible and not sheared."""
    from nibabel.affines import voxel_sizes
    from nibabel.orientations import io_orientation

    codes = {form: int(hdr[f"{form}_code"]) for form in ("qform", "sform")}
    if not any(codes.values()):
        raise VolumeRefused(
            f"{rel}: qform_code and sform_code are both 0: the orientation is unknown (an ANALYZE-style header); "
            "set the qform or sform to the scanner's geometry before landing"
        )
    try:
        affines = {form: np.asarray(getattr(hdr, f"get_{form}")(), dtype=np.float64) for form in codes if codes[form]}
    except Exception:  # noqa: BLE001 - nibabel's messages can quote header fields
        raise VolumeRefused(f"{rel}: its qform or sform cannot be computed (malformed quaternion or qfac)") from None
    for affine in affines.values():
        if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise VolumeRefused(f"{rel}: its affine (qform / sform) is not invertible: no orientation can be derived")
    if len(affines) == 2:
        q, s = affines["qform"], affines["sform"]
        if not (
            (io_orientation(q) == io_orientation(s)).all() and np.allclose(voxel_sizes(q), voxel_sizes(s), rtol=1e-2)
        ):
            raise VolumeRefused(
                f"{rel}: its qform and sform disagree on the axes or voxel sizes: which geometry is right is "
                "ambiguous (set one of them, or both alike)"
            )
    best = affines["sform"] if "sform" in affines else affines["qform"]  # nibabel's choice (get_best_affine)
    axes = best[:3, :3] / voxel_sizes(best)
    if np.abs(axes.T @ axes - np.eye(3)).max() > _SHEAR_TOLERANCE:
        raise VolumeRefused(
            f"{rel}: its voxel axes are not orthogonal (a sheared affine, e.g. an uncorrected gantry tilt): it "
            "cannot be reoriented without resampling; resample it to an orthogonal grid before landing"
        )


def read_nifti(rel: str, path: Path, max_voxels: int) -> Volume:
    import nibabel as nib

    gz = rel.lower().endswith(".gz")
    with open(path, "rb") as fh:
        stream: BinaryIO = gzip.GzipFile(fileobj=fh, mode="rb") if gz else fh  # type: ignore[assignment]
        head = _read_at_most(stream, _HEADER_BYTES, rel)
        hdr = _header(head, rel)
        shape, declared = _check_header(hdr, rel, max_voxels)
        data = head + _read_at_most(stream, max(declared - len(head), 0) + _TRAILING_SLACK + 1, rel)
    if len(data) < declared:
        raise VolumeRefused(
            f"{rel}: the file is too short for the volume its header declares ({declared} bytes "
            f"declared, {len(data)} {'after decompression' if gz else 'present'})"
        )
    if len(data) > declared + _TRAILING_SLACK:
        raise VolumeRefused(
            f"{rel}: {'decompresses' if gz else 'runs'} beyond the size its header declares "
            f"({declared} bytes){' (a gzip bomb?)' if gz else ''}; read no further"
        )
    _check_affine(hdr, rel)  # after the size checks: a bomb or a 2 GB header is refused as such
    klass = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
    try:
        img = klass.from_bytes(data[:declared])
        array = np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape)
    except Exception:  # noqa: BLE001
        raise VolumeRefused(f"{rel}: the NIfTI data cannot be read") from None
    if not np.isfinite(array).all():
        raise VolumeRefused(
            f"{rel}: the volume holds NaN or infinite intensities (often left outside the field of "
            "view by resampling: fill them with the background value before landing)"
        )
    return canonical(array, np.asarray(img.affine, dtype=np.float64), None)
