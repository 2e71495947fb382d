"""Volume readers (issue 26): DICOM series and NIfTI files to one :class:`Volume` convention; no Dagster here.

``read_volume(batch_dir, rel, fmt, max_voxels=...)`` reads the labels.csv ``file`` value ``rel`` of one record:

``dicom_series``  a series folder, a study / patient folder holding exactly one series that can be a volume (its
                  localizers, ImageType LOCALIZER, and lone single-frame images are set aside and left in landing;
                  several candidates: refused with their count), or one enhanced multi-frame file. Files are grouped by SeriesInstanceUID, slices ordered by
                  ImagePositionPatient projected on the slice normal (row x column direction cosines; never by file
                  name or InstanceNumber), RescaleSlope / RescaleIntercept applied per slice (per frame for
                  enhanced files), spacing from PixelSpacing and the slice positions. Refused (quarantined, never
                  guessed at): a missing slice (a step over 1.5x the median), a duplicated position, uneven
                  spacing, mixed orientations, pixel spacings or sizes, a PixelSpacing not positive, slices from
                  two patients, studies or modalities, a zero RescaleSlope, a declared size over ``max_voxels``
                  (from the headers, before any pixel is decoded), a symbolic link, an unreadable or truncated DICOM
                  file (an image header cut short included), pixel data longer or shorter than its header declares,
                  a multi-frame file without per-frame positions, a single slice. Files that are not DICOM images
                  (a DICOMDIR, a README, a viewer's Thumbs.db, a structured report) are skipped.
``nifti``         a ``.nii`` / ``.nii.gz`` file (NIfTI-1 or -2); its header is checked first (3D, or 4D with one
                  volume, at least 2 voxels along each axis; pixdim finite and positive; voxels within
                  ``max_voxels``), then the file is read or inflated only as far as the header declares (a gzip
                  bomb is refused without inflating it; a file shorter than its header declares is refused), then
                  its geometry: a qform or an sform set (both codes 0: the orientation is unknown), the two alike
                  in axes and voxel sizes when both are set, invertible and not sheared.

Every volume comes back in RAS+ (see :class:`Volume`): DICOM's LPS patient axes are converted, then axes are
permuted and flipped to the closest canonical orientation, as nibabel's ``as_closest_canonical`` (no resampling).
``list_series(batch_dir)`` lists the batch's DICOM series (:class:`SeriesInfo`: a hashed key, never the UID).
``to_model_input`` turns a volume into the float32 cube a 3D model takes, with MONAI's transforms.

Paths are confined to the batch (no absolute paths, no ``..``, no symbolic links on the way, regular files only);
a file inside a series folder is named in a message by its place ("file 3 of 40 (in name order)"), never by its
name, and no message quotes a header value that could identify a patient.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from meddiag_pipelines.imaging.volume_io.dicom_series import SeriesInfo, list_dicom_series, read_dicom_series
from meddiag_pipelines.imaging.volume_io.geometry import Volume, VolumeRefused
from meddiag_pipelines.imaging.volume_io.model_input import to_model_input
from meddiag_pipelines.imaging.volume_io.nifti import NIFTI_SUFFIXES, read_nifti
from meddiag_pipelines.ingestion.landing import UnsafePath, confined_path

VOLUME_FORMATS = ("dicom_series", "nifti")


def read_volume(batch_dir: Path, rel: str, fmt: Literal["dicom_series", "nifti"], *, max_voxels: int) -> Volume:
    """The volume that ``rel`` (relative to ``batch_dir``) names; raises :class:`VolumeRefused`."""
    if fmt not in VOLUME_FORMATS:
        raise ValueError(f"volume format {fmt!r} is not one of {VOLUME_FORMATS}")
    batch_dir = Path(batch_dir)
    try:
        path = confined_path(batch_dir, rel)
    except UnsafePath as exc:
        raise VolumeRefused(f"{rel}: {exc}") from None
    if fmt == "nifti":
        if not rel.lower().endswith(NIFTI_SUFFIXES):
            raise VolumeRefused(f"{rel}: a NIfTI volume is a .nii or .nii.gz file")
        if not path.is_file():
            raise VolumeRefused(f"{rel}: not a regular file")
        return read_nifti(rel, path, max_voxels)
    if not (path.is_dir() or path.is_file()):
        raise VolumeRefused(f"{rel}: neither a folder nor a regular file")
    return read_dicom_series(batch_dir, rel.rstrip("/"), path, max_voxels)


def list_series(batch_dir: Path) -> list[SeriesInfo]:
    """Every DICOM series in the batch (see :func:`~.dicom_series.list_dicom_series`)."""
    return list_dicom_series(Path(batch_dir))


__all__ = [
    "NIFTI_SUFFIXES",
    "VOLUME_FORMATS",
    "SeriesInfo",
    "Volume",
    "VolumeRefused",
    "list_series",
    "read_volume",
    "to_model_input",
]
