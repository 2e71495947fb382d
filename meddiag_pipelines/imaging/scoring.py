"""Scoring images with either imaging model, the CNN (``imaging.train``) or the pixel logistic-regression baseline
(one per finding for multi-label tasks), in chunks that bound memory; and the pooled pixels the baseline reads.
torch is imported only when the CNN scores."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

PREDICT_CHUNK_BYTES = 1 << 28  # float32 images scored at once
MIN_CHUNK = 256  # images per chunk at the least, however large they are


def baseline_side(size: int, spatial_dims: int = 2) -> int:
    """The pooled grid's side: 14 (16) for images; for volumes 7 when the size is divisible by 7, else 8 (4 below
    32 voxels: blocks of 4 voxels, as at 28^3)."""
    if spatial_dims == 3:
        return 7 if size % 7 == 0 else 8 if size >= 32 else 4
    return 14 if size % 14 == 0 else 16


def pooled_pixels(X: np.ndarray, side: int) -> np.ndarray:
    """(n, C, S, S) -> (n, C * side^2), or volumes (n, C, S, S, S) -> (n, C * side^3), by average pooling over
    blocks of S / side pixels (voxels) a side."""
    n, c, s = X.shape[:3]
    dims = X.ndim - 2
    k = s // side
    blocks = X.reshape(n, c, *(side, k) * dims)
    return blocks.mean(axis=tuple(range(3, 3 + 2 * dims, 2))).reshape(n, c * side**dims)


QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
HISTOGRAM_BINS = 16


def _intensity_statistics(X: np.ndarray) -> np.ndarray:
    """(n, C, ...) -> (n, C, k): mean, standard deviation, quantiles and a normalised histogram over [0, 1] of each
    volume's voxels, then the same of its central half-side cube (where MedMNIST's 3D sets centre the finding)."""
    n, c = X.shape[:2]
    s = X.shape[2]
    centre = X[(slice(None), slice(None), *(slice(s // 4, s - s // 4),) * (X.ndim - 2))]
    parts = []
    for region in (X, centre):
        flat = region.reshape(n * c, -1).astype(np.float32)
        bins = np.minimum((np.clip(flat, 0.0, 1.0) * HISTOGRAM_BINS).astype(np.int64), HISTOGRAM_BINS - 1)
        bins += HISTOGRAM_BINS * np.arange(n * c)[:, None]
        hist = np.bincount(bins.ravel(), minlength=n * c * HISTOGRAM_BINS).reshape(n * c, HISTOGRAM_BINS)
        stats = [
            flat.mean(-1, keepdims=True),
            flat.std(-1, keepdims=True),
            np.quantile(flat, QUANTILES, axis=-1).T,
            hist / flat.shape[1],
        ]
        parts.append(np.concatenate(stats, -1).reshape(n, c, -1))
    return np.concatenate(parts, -1)


FEATURE_VOXELS = 1 << 24  # voxels whose features are computed at once (64 volumes at 64^3): the copies stay small


def volume_features(X: np.ndarray, side: int) -> np.ndarray:
    """The volume baseline's inputs: the pooled voxels (:func:`pooled_pixels`) then the intensity statistics of
    each volume and of its centre, per channel; a few volumes at a time (each row is its volume's own)."""
    step = max(1, FEATURE_VOXELS // max(1, int(np.prod(X.shape[1:]))))
    parts = [
        np.concatenate([pooled_pixels(part, side), _intensity_statistics(part).reshape(len(part), -1)], 1)
        for part in (X[start : start + step] for start in range(0, max(1, len(X)), step))
    ]
    return np.concatenate(parts)


def volume_feature_names(channels: int, side: int) -> list[str]:
    """:func:`volume_features`' column names, in its order."""
    pooled = [f"c{c}_z{z}_y{y}_x{x}" for c in range(channels) for z, y, x in np.ndindex(side, side, side)]
    stats = ["mean", "std", *(f"q{round(q * 100):02d}" for q in QUANTILES)]
    stats += [f"hist{b:02d}" for b in range(HISTOGRAM_BINS)]
    return pooled + [f"c{c}_{region}_{stat}" for c in range(channels) for region in ("all", "centre") for stat in stats]


def _predict_chunk(model_dir: Path, X: np.ndarray, plan: dict, n_outputs: int, device: str) -> np.ndarray:
    from meddiag_pipelines.logistic import predict_logistic

    if plan.get("predictor") == "pixel_logistic":
        return predict_logistic(model_dir, pooled_pixels(X, int(plan["baseline_side"])))
    if plan.get("predictor") == "voxel_features":  # the volume baseline: XGBoost or logistic, flat's model choice
        from meddiag_pipelines.flat.models import predict_tabular

        return predict_tabular(model_dir, volume_features(X, int(plan["baseline_side"])))
    if plan.get("predictor") == "pixel_logistic_ovr":  # multi-label: one model per finding
        pooled = pooled_pixels(X, int(plan["baseline_side"]))
        return np.stack([predict_logistic(model_dir / f"label_{j}", pooled) for j in range(n_outputs)], axis=1)
    from meddiag_pipelines.imaging.train import predict_image_model

    return predict_image_model(model_dir, X, device=device)


def _chunks(plan: dict, ids: list[str], chunk_bytes: int):
    per_image = 4 * int(plan["channels"]) * int(plan["size"]) ** int(plan.get("spatial_dims", 2))
    chunk = max(MIN_CHUNK, chunk_bytes // per_image)
    return (ids[start : start + chunk] for start in range(0, len(ids), chunk))


def embed_images(
    model_dir: Path,
    plan: dict,
    ids: list[str],
    images: Callable[[list[str]], np.ndarray],
    device: str,
    chunk_bytes: int = PREDICT_CHUNK_BYTES,
) -> np.ndarray:
    """(n, d) float32 embeddings of the images ``images(ids)`` gives, as the model in ``model_dir`` sees them: the
    CNN's pooled penultimate features; for the pixel logistic baseline and the volume's voxel-feature model, the
    features they read."""
    parts = []
    for part in _chunks(plan, ids, chunk_bytes):
        X = images(part)
        if str(plan.get("predictor", "")).startswith("pixel_logistic"):
            parts.append(pooled_pixels(X, int(plan["baseline_side"])).astype(np.float32))
        elif plan.get("predictor") == "voxel_features":
            parts.append(volume_features(X, int(plan["baseline_side"])).astype(np.float32))
        else:
            from meddiag_pipelines.imaging.train import embed_image_model

            parts.append(embed_image_model(Path(model_dir), X, device=device))
    return np.concatenate(parts) if parts else np.empty((0, 0), dtype=np.float32)


def predict_images(
    model_dir: Path,
    plan: dict,
    ids: list[str],
    images: Callable[[list[str]], np.ndarray],
    kind: str,
    device: str,
    chunk_bytes: int = PREDICT_CHUNK_BYTES,
) -> np.ndarray:
    """Probabilities of the images ``images(ids)`` gives: binary (n,), multi-class or multi-label (n, k). A task
    of two classes without a positive one is multi-class, so a binary model's output gets both columns."""
    k = len(plan.get("classes") or []) or 2
    parts = []
    for part in _chunks(plan, ids, chunk_bytes):
        p = _predict_chunk(Path(model_dir), images(part), plan, k, device)
        if kind == "multiclass" and p.ndim == 1:
            p = np.stack([1.0 - p, p], axis=1)
        parts.append(np.asarray(p, dtype=np.float64))
    if not parts:
        return np.empty((0,) if kind == "binary" else (0, k))
    return np.concatenate(parts)
