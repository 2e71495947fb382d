"""SYNTHETIC 3D organ phantoms for the volume modality's demo and tests -- not patient data, no diagnostic meaning.

Each ``synthetic_volume_phantom`` is a cube of ``size``^3 voxels: a soft-edged ellipsoid "organ" of random
semi-axes and position in a dim background, smooth intensity variation, noise. The "finding" (label 1) is a small
bright Gaussian "lesion" INSIDE the organ; a distractor blob of the same kind OUTSIDE the organ appears in most
volumes of either label, so the brightest voxel does not tell them apart: a model must learn where the blob is.

``write_volume_phantom_batch`` writes one npz in MedMNIST's 3D layout (``train_images`` (N, D, H, W) uint8,
``train_labels`` (N, 1) uint8, ``val_*``, ``test_*``) named ``synthetic_volume_phantoms.npz``, with its own
train / val / test split, and the ``_READY`` marker last.

    python -m scripts.volume_phantoms data/landing/synthetic_volume_phantoms/batch_0001
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np

from meddiag_pipelines.atomic import atomic_write, atomic_write_text

FILE = "synthetic_volume_phantoms.npz"
SPLIT_SIZES = {"train": 240, "val": 80, "test": 80}


def _blob(grid: tuple[np.ndarray, ...], centre: np.ndarray, sigma: float) -> np.ndarray:
    return np.exp(-sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) / (2 * sigma**2))


def _organ_distance(grid: tuple[np.ndarray, ...], centre: np.ndarray, axes: np.ndarray) -> np.ndarray:
    return np.sqrt(sum(((g - c) / a) ** 2 for g, c, a in zip(grid, centre, axes, strict=True)))


def render_volume_phantom(rng: np.random.Generator, size: int, positive: bool, noise_sd: float = 0.03) -> np.ndarray:
    """One phantom as float32 (size, size, size) in [0, 1]."""
    lin = (np.arange(size) + 0.5) / size * 2 - 1
    grid = np.meshgrid(lin, lin, lin, indexing="ij")
    centre = rng.uniform(-0.15, 0.15, 3)
    axes = rng.uniform(0.45, 0.7, 3)
    organ_d = _organ_distance(grid, centre, axes)
    organ = 1.0 / (1.0 + np.exp((organ_d - 1.0) / 0.06))
    vol = 0.12 + 0.3 * organ + 0.05 * grid[int(rng.integers(3))] * rng.uniform(-1, 1)
    sigma = rng.uniform(0.11, 0.15)
    amplitude = rng.uniform(0.4, 0.5)
    if positive:  # inside the organ, away from its edge
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        vol += amplitude * _blob(grid, centre + direction * axes * rng.uniform(0.0, 0.55), sigma)
    if rng.random() < 0.7:  # a distractor outside the organ, in either class
        for _ in range(20):
            where = rng.uniform(-0.85, 0.85, 3)
            if _organ_distance(tuple(np.array([[[w]]]) for w in where), centre, axes).item() > 1.25:
                vol += rng.uniform(0.4, 0.5) * _blob(grid, where, rng.uniform(0.11, 0.15))
                break
    vol += rng.normal(0.0, noise_sd, vol.shape)
    return np.clip(vol, 0.0, 1.0).astype(np.float32)


def phantom_arrays(
    seed: int = 2026, size: int = 16, positive_rate: float = 0.4, split_sizes: dict[str, int] | None = None
) -> dict[str, np.ndarray]:
    """The npz's arrays: ``<split>_images`` uint8 (n, size, size, size) and ``<split>_labels`` uint8 (n, 1)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (split_sizes or SPLIT_SIZES).items():
        labels = (rng.random(n) < positive_rate).astype(np.uint8)
        volumes = [render_volume_phantom(np.random.default_rng(rng.integers(2**63)), size, bool(y)) for y in labels]
        arrays[f"{split}_images"] = np.rint(np.stack(volumes) * 255).astype(np.uint8)
        arrays[f"{split}_labels"] = labels[:, None]
    return arrays


def write_volume_phantom_batch(
    out_dir: Path,
    seed: int = 2026,
    size: int = 16,
    positive_rate: float = 0.4,
    split_sizes: dict[str, int] | None = None,
) -> Path:
    """Write the batch folder (the npz, then ``_READY``); returns it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez_compressed(buf, **phantom_arrays(seed, size, positive_rate, split_sizes))
    atomic_write(out_dir / FILE, lambda tmp: tmp.write_bytes(buf.getvalue()))
    atomic_write_text(out_dir / "_READY", "")
    return out_dir


if __name__ == "__main__":
    print(
        write_volume_phantom_batch(
            Path(sys.argv[1] if len(sys.argv) > 1 else "data/landing/synthetic_volume_phantoms/batch_0001")
        )
    )


__all__ = ["FILE", "phantom_arrays", "render_volume_phantom", "write_volume_phantom_batch"]
