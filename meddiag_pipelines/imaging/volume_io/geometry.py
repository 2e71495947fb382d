"""What every volume reader returns, its error, and the one orientation every volume is turned to."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class VolumeRefused(ValueError):
    """A volume that is not read; ``str(exc)`` names the batch-relative file or folder and the problem in plain
    words (never a patient or study tag, a UID, a date, or the name of a file inside a series folder)."""


@dataclass(frozen=True, eq=False)  # arrays compare element-wise: identity equality, as for any array holder
class Volume:
    """One volume in RAS+ (nibabel's closest canonical, MONAI's ``Orientation("RAS")``): array axis 0 runs from
    the patient's left to right, axis 1 from posterior to anterior, axis 2 from inferior to superior, so an axial
    slice is ``array[:, :, k]``. ``spacing`` is in mm along axes 0, 1, 2. Intensities are physical units (CT: HU
    after RescaleSlope / RescaleIntercept; NIfTI: after scl_slope / scl_inter)."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    modality: str | None


def canonical(array: np.ndarray, affine_ras: np.ndarray, modality: str | None) -> Volume:
    """``array`` (voxel axes i, j, k) with its voxel-to-RAS affine, as a :class:`Volume` in RAS+ order: axes are
    only permuted and flipped (nibabel's orientation code, as ``as_closest_canonical``), never resampled."""
    from nibabel.affines import voxel_sizes
    from nibabel.orientations import apply_orientation, io_orientation

    ornt = io_orientation(affine_ras)
    zooms = voxel_sizes(affine_ras)
    out = np.ascontiguousarray(apply_orientation(array, ornt), dtype=np.float32)
    spacing = tuple(float(zooms[int(src)]) for src in np.argsort(ornt[:, 0]))
    return Volume(out, spacing, modality)  # type: ignore[arg-type]
