"""A :class:`Volume` to the fixed-size float32 cube a 3D model takes, with MONAI's transforms (resampling,
intensity, padding and cropping are MONAI's, not hand-written)."""

from __future__ import annotations

import numpy as np

from meddiag_pipelines.imaging.volume_io.geometry import Volume, VolumeRefused

MAX_RESAMPLE_FACTOR = 8  # resampling may grow a volume at most this many times (a typo'd spacing is refused)


def _resample(volume: Volume, spacing: tuple[float, float, float] | None):
    """The volume as a (1, *shape) MetaTensor, resampled to ``spacing`` mm (trilinear) when given."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    affine = torch.diag(torch.tensor([*volume.spacing, 1.0], dtype=torch.float64))
    image = MetaTensor(torch.from_numpy(np.ascontiguousarray(volume.array, dtype=np.float32))[None], affine=affine)
    if spacing is None:
        return image
    target = np.asarray(spacing, dtype=np.float64)
    if target.shape != (3,) or not (np.isfinite(target).all() and (target > 0).all()):
        raise VolumeRefused(f"target spacing {list(spacing)} is not three finite positive numbers (mm)")
    grown = float(np.prod(np.asarray(volume.spacing) / target))
    if grown > MAX_RESAMPLE_FACTOR:
        raise VolumeRefused(
            f"resampling to {list(spacing)} mm would grow the volume {grown:.0f} times (at most {MAX_RESAMPLE_FACTOR})"
        )
    return Spacing(pixdim=tuple(float(t) for t in target), mode="bilinear", padding_mode="border")(image)


def _intensity(intensity: dict):
    from monai.transforms import ScaleIntensityRange, ScaleIntensityRangePercentiles

    if set(intensity) == {"ct_window"}:
        lo, hi = (float(v) for v in intensity["ct_window"])
        if not hi > lo:
            raise ValueError(f"ct_window {[lo, hi]}: the upper bound must exceed the lower")
        return ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)
    if set(intensity) == {"percentile"}:
        lo, hi = (float(v) for v in intensity["percentile"])
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"percentile {[lo, hi]}: expected 0 <= low < high <= 100")
        return ScaleIntensityRangePercentiles(lower=lo, upper=hi, b_min=0.0, b_max=1.0, clip=True)
    raise ValueError(
        f"intensity must be {{'ct_window': [lo, hi]}} or {{'percentile': [p_lo, p_hi]}}, got keys {sorted(intensity)}"
    )


def to_model_input(
    volume: Volume, *, spacing: tuple[float, float, float] | None, size: int, intensity: dict
) -> np.ndarray:
    """float32 (size, size, size) in [0, 1]: resampled to ``spacing`` (None: kept), intensities mapped to [0, 1]
    (``{"ct_window": [lo, hi]}``: HU clipped to the window; ``{"percentile": [p_lo, p_hi]}``: the volume's own
    percentiles, for MR), then centre-padded (with 0, the window's floor) and centre-cropped to ``size`` cubed.
    Axes keep the volume's RAS+ order."""
    from monai.transforms import ResizeWithPadOrCrop

    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    scale = _intensity(intensity)
    image = scale(_resample(volume, spacing))
    cube = ResizeWithPadOrCrop(spatial_size=(size, size, size), mode="constant", value=0.0)(image)
    return np.ascontiguousarray(np.asarray(cube[0], dtype=np.float32))
