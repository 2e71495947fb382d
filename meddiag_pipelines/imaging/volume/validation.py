"""The volume checks beside imaging's (ids, label domain, voxel hash, duplicates across splits, constant
intensities: ``imaging.validation`` with these geometry checks in place of the 2D ones):

* ``volume_size``      an npz (MedMNIST) volume must be at least ``volume.size`` voxels along every axis (a smaller
  one would be up-sampled, inventing detail); DICOM series and NIfTI volumes are resampled to the spec's spacing
  and cropped or padded by ``imaging.volume_io``;
* ``volume_bit_depth`` npz: 8 bits;
* ``image_constant``   the voxels span less than one grey level (a blank or saturated volume).
"""

from __future__ import annotations

import polars as pl

from meddiag_pipelines.imaging.readers import INTENSITY_MAX, INTENSITY_MIN
from meddiag_pipelines.imaging.validation import constant_intensity_failures, count_failure
from meddiag_pipelines.specs import TaskSpec
from meddiag_pipelines.validation.suites import CheckFailure

VOLUME_COLUMNS = ("depth", "height", "width", "bit_depth", INTENSITY_MIN, INTENSITY_MAX)


def volume_property_failures(frame: pl.DataFrame, spec: TaskSpec) -> list[CheckFailure]:
    volume = spec.volume
    missing = [c for c in VOLUME_COLUMNS if c not in frame.columns]
    if missing:
        return [CheckFailure("volume_columns", None, f"volume columns missing: {missing}")]
    failures: list[CheckFailure] = []
    if volume.format == "npz":
        small = pl.min_horizontal("depth", "height", "width") < volume.size
        failures += count_failure(
            frame,
            small,
            "volume_size",
            "depth",
            f"are smaller than the spec's {volume.size} voxels along an axis (they would be up-sampled)",
        )
        failures += count_failure(
            frame,
            (pl.col("bit_depth") != 8).fill_null(True),
            "volume_bit_depth",
            "bit_depth",
            "have a bit depth other than 8 bits",
        )
    failures += constant_intensity_failures(frame, "blank or saturated volumes")
    return failures
