"""A SYNTHETIC stand-in for a MedMNIST v2 3D set, in its exact layout, for ``bench/volume.py`` -- not patient data.

One npz: ``train_images`` (N, D, H, W) uint8, ``train_labels`` (N, 1) uint8, ``val_*``, ``test_*``, at 28^3 (or
64^3), split sizes as NoduleMNIST3D's (1,158 / 165 / 310) by default. Each volume is an organ phantom
(``scripts.volume_phantoms``: a soft ellipsoid, smooth shading) with noise and two faint blobs: both outside the
organ (label 0), or one inside it, the lesion (label >= 1), so the intensity histogram alone says little; the label says where a faint lesion lies INSIDE the organ: binary, absent (0) or present (1);
``--classes K`` > 2, absent (0) or in one of K - 1 fixed directions from the organ's centre (1 .. K - 1), as an
11-class OrganMNIST3D-sized problem. The lesion is fainter and the noise stronger than the bundled phantoms', so
neither model reaches AUROC 1.

    python -m bench.volume_synthetic OUT.npz [--size 28] [--classes 2] [--train 1158] [--seed 7]

The file name should say SYNTHETIC; data this size is not committed (write it under /tmp).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from scripts.volume_phantoms import _blob, _organ_distance

SPLITS = {"train": 1158, "val": 165, "test": 310}


def _directions(k: int) -> np.ndarray:
    """``k`` unit vectors spread over the sphere (a Fibonacci lattice), one per lesion class."""
    i = np.arange(k) + 0.5
    polar, azimuth = np.arccos(1 - 2 * i / k), np.pi * (1 + 5**0.5) * i
    return np.stack([np.cos(polar), np.sin(polar) * np.sin(azimuth), np.sin(polar) * np.cos(azimuth)], 1)


def render(rng: np.random.Generator, size: int, label: int, directions: np.ndarray) -> np.ndarray:
    """One SYNTHETIC volume, float32 in [0, 1]: label 0 has no lesion; label j >= 1 has one along ``directions[j-1]``
    (binary: a random direction)."""
    lin = (np.arange(size) + 0.5) / size * 2 - 1
    grid = np.meshgrid(lin, lin, lin, indexing="ij")
    centre, axes = rng.uniform(-0.15, 0.15, 3), rng.uniform(0.45, 0.7, 3)
    organ = 1.0 / (1.0 + np.exp((_organ_distance(grid, centre, axes) - 1.0) / 0.06))
    vol = 0.12 + 0.3 * organ + 0.08 * grid[int(rng.integers(3))] * rng.uniform(-1, 1)
    if label:
        direction = directions[label - 1] if len(directions) else rng.normal(size=3)
        direction = direction / np.linalg.norm(direction) + rng.normal(0, 0.15, 3)
        where = centre + direction * axes * rng.uniform(0.25, 0.55)
        vol += rng.uniform(0.12, 0.3) * _blob(grid, where, rng.uniform(0.08, 0.14))
    for _ in range(2 - bool(label)):  # distractors of the same kind just outside the organ: two blobs in every volume
        away = rng.normal(size=3)
        where = centre + away / np.linalg.norm(away) * axes * rng.uniform(1.2, 1.5)
        vol += rng.uniform(0.3, 0.6) * _blob(grid, where, rng.uniform(0.08, 0.14))  # as bright as a lesion on the organ
    vol += rng.normal(0.0, 0.07, vol.shape)
    return np.clip(vol, 0.0, 1.0).astype(np.float32)


def synthetic_arrays(size: int, n_classes: int, n_train: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    directions = _directions(n_classes - 1) if n_classes > 2 else np.empty((0, 3))
    scale = n_train / SPLITS["train"]
    arrays = {}
    for split, n in SPLITS.items():
        n = max(n_classes * 2, round(n * scale))
        y = rng.integers(0, n_classes, n) if n_classes > 2 else (rng.random(n) < 0.25).astype(int)
        vols = [render(np.random.default_rng(rng.integers(2**63)), size, int(k), directions) for k in y]
        arrays[f"{split}_images"] = np.rint(np.stack(vols) * 255).astype(np.uint8)
        arrays[f"{split}_labels"] = y[:, None].astype(np.uint8)
    return arrays


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench.volume_synthetic")
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--train", type=int, default=SPLITS["train"])
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if "SYNTHETIC" not in args.out.name:
        raise SystemExit(f"{args.out.name}: name the file SYNTHETIC_... (it is not patient data)")
    np.savez_compressed(args.out, **synthetic_arrays(args.size, args.classes, args.train, args.seed))
    print(args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
