"""What every image reader returns and the limits it reads within: the record schema, the errors, the pixel
fields of a record and the decoded-bytes budget."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

if TYPE_CHECKING:
    from meddiag_pipelines.specs import ImageSpec, TaskSpec

INTENSITY_MIN = "intensity_min"  # darkest and brightest value of the decoded image (after windowing, in [0, 1])
INTENSITY_MAX = "intensity_max"

_MB = 2**20


class ImageBatchError(ValueError):
    """A whole batch that cannot be read (its labels.csv is unreadable or lacks a required column)."""


class ImageRejected(ValueError):
    """One image that cannot be used; the message is the problem recorded for it."""


@dataclass
class ImageReadResult:
    """``records``: one row per image (see :func:`records_schema`); ``rejected``: (file, problem)."""

    records: pl.DataFrame
    rejected: list[tuple[str, str]] = field(default_factory=list)


def records_schema(spec: TaskSpec) -> dict[str, pl.DataType]:
    schema: dict[str, pl.DataType] = {"id": pl.Utf8, "label": pl.Utf8, "patient_id": pl.Utf8}
    for col in spec.subgroups:
        schema.setdefault(col, pl.Utf8)
    schema.update(
        {
            "source": pl.Utf8,
            "sha256": pl.Utf8,
            "height": pl.Int64,
            "width": pl.Int64,
            "channels": pl.Int64,
            "bit_depth": pl.Int64,
            "predefined_split": pl.Utf8,
            INTENSITY_MIN: pl.Float64,
            INTENSITY_MAX: pl.Float64,
        }
    )
    return schema


def _image_spec(spec: TaskSpec) -> ImageSpec:
    if spec.image is None:
        raise ImageBatchError(f"task {spec.name!r} has no image section")
    return spec.image


def _frame(rows: list[dict], spec: TaskSpec) -> pl.DataFrame:
    schema = records_schema(spec)
    return pl.DataFrame([{k: r.get(k) for k in schema} for r in rows], schema=schema, orient="row")


def _sha256(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def _pixel_fields(native: np.ndarray, unit: np.ndarray, channels: int) -> dict:
    """The record fields of one decoded image: the hash of its native pixels, the range of what is cached."""
    cached = _to_channels(unit, channels)
    return {"sha256": _sha256(native), INTENSITY_MIN: float(cached.min()), INTENSITY_MAX: float(cached.max())}


def _mb(nbytes: float) -> str:
    return f"{nbytes / _MB:.1f} MB"


@dataclass
class DecodedBudget:
    """Decoded bytes allowed per file and per batch (``image.max_decoded_mb_per_*``), taken before decoding."""

    per_file: float
    per_batch: float
    used: float = 0.0

    @classmethod
    def of(cls, spec: TaskSpec) -> DecodedBudget:
        image = _image_spec(spec)
        return cls(image.max_decoded_mb_per_file * _MB, image.max_decoded_mb_per_batch * _MB)

    def take(self, nbytes: float, what: str) -> None:
        if nbytes > self.per_file:
            raise ImageRejected(
                f"{what} would decode to {_mb(nbytes)}, over image.max_decoded_mb_per_file ({_mb(self.per_file)})"
            )
        if self.used + nbytes > self.per_batch:
            raise ImageRejected(
                f"{what} would decode to {_mb(nbytes)}, taking the batch over "
                f"image.max_decoded_mb_per_batch ({_mb(self.per_batch)}); land it in another batch"
            )
        self.used += nbytes


def _to_channels(unit: np.ndarray, channels: int) -> np.ndarray:
    """(H, W, c) float -> (C, H, W) float32 with C = channels (grey repeated, colour to luma)."""
    if unit.shape[2] == channels:
        out = unit
    elif channels == 3:
        out = np.repeat(unit[..., :1], 3, axis=2)
    else:  # ITU-R 601 luma, as Pillow's convert('L')
        out = (unit[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
    return np.ascontiguousarray(np.transpose(out, (2, 0, 1)), dtype=np.float32)
