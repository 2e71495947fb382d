"""Heat maps for the imaging models (Grad-CAM for CNNs, input gradients for ViTs) and a PNG panel of them
(matplotlib Agg, no pyplot state).

Grad-CAM (Selvaraju et al., 2017) on the last convolutional stage (the model's ``features``: ``layer4`` of the
ResNet18Small, timm's ``forward_features`` of a CNN backbone): the feature maps weighted by the
spatial mean of the gradient of the target logit, ReLU, bilinear upsampling to the input size, then scaled to
[0, 1] per image (an all-zero map stays zero). The target is ``target_index`` when given, else the binary
model's single logit (evidence for the positive class), or the predicted class / most probable label.
At 28 px the last stage is 4x4, so maps are coarse; they show where the evidence is, not a segmentation.
Volumes (N, C, S, S, S) get Grad-CAM 3D the same way (trilinear upsampling); :func:`orthogonal_slices` cuts each
volume and its map into the axial, coronal and sagittal slices through the map's peak, for the same panel.

A ViT's features are tokens, not a map: its heat map is the gradient of the same target logit with respect to
the input pixels (Simonyan et al., 2014), absolute, the largest over channels, smoothed by a 3x3 mean and scaled
per image as above.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from meddiag_pipelines.imaging.train import EVAL_VOXELS, batch_for, load_image_model

BATCH = 64
GRAD_VOXELS = EVAL_VOXELS // 2  # volumes through the backward pass at once: 8 at 64^3 (the activations are kept)
GRAD_CAM = "Grad-CAM"
INPUT_GRADIENT = "input gradient"


def saliency_method(model: torch.nn.Module, channels: int, size: int, spatial_dims: int = 2) -> str:
    """Grad-CAM when the model's features are a spatial map (a CNN), else the input gradient (a ViT)."""
    with torch.no_grad():
        probe = model.features(
            torch.zeros(1, channels, *(size,) * spatial_dims, device=next(model.parameters()).device)
        )
    return GRAD_CAM if probe.ndim == 2 + spatial_dims else INPUT_GRADIENT


def model_saliency_method(model_dir: Path) -> str:
    """The heat map :func:`grad_cam` draws for the model in ``model_dir``."""
    model, meta = load_image_model(model_dir, "cpu")
    return saliency_method(model, int(meta["channels"]), int(meta["input_size"]), int(meta.get("spatial_dims", 2)))


def grad_cam(model_dir: Path, X: np.ndarray, target_index: int | None = None, device: str | None = None) -> np.ndarray:
    """Heat maps (n, S, S) in [0, 1] for images ``X`` (n, C, S, S) in [0, 1] (or (n, S, S, S) for volumes
    (n, C, S, S, S)): Grad-CAM, or the input gradient for a model whose features are tokens (a ViT)."""
    model, meta = load_image_model(model_dir, device or "cpu")
    device = next(model.parameters()).device
    X = np.asarray(X, dtype=np.float32)
    if X.ndim not in (4, 5):
        raise ValueError(f"images must be (n, C, S, S) or volumes (n, C, S, S, S), got {X.shape}")
    n_out = int(meta["n_outputs"])
    if target_index is not None and not 0 <= target_index < n_out:
        raise ValueError(f"target_index {target_index} outside [0, {n_out})")
    size = X.shape[2:]
    spatial = tuple(range(2, X.ndim))
    method = saliency_method(model, X.shape[1], X.shape[2], X.ndim - 2) if len(X) else GRAD_CAM
    maps, step = [], batch_for(X.shape[1:], BATCH, GRAD_VOXELS)
    for start in range(0, len(X), step):
        xb = torch.from_numpy(X[start : start + step]).to(device)
        with torch.enable_grad():
            xb.requires_grad_(method == INPUT_GRADIENT)
            feats = model.features(xb)
            logits = model.head(feats)
            if target_index is not None:
                idx = torch.full((len(xb),), target_index, dtype=torch.long, device=device)
            elif n_out == 1:
                idx = torch.zeros(len(xb), dtype=torch.long, device=device)
            else:
                idx = logits.argmax(dim=1)
            score = logits.gather(1, idx[:, None]).sum()
            (grads,) = torch.autograd.grad(score, xb if method == INPUT_GRADIENT else feats)
        if method == INPUT_GRADIENT:
            cam = F.avg_pool2d(grads.abs().amax(dim=1, keepdim=True), 3, 1, 1, count_include_pad=False)[:, 0]
        else:
            weights = grads.mean(dim=spatial, keepdim=True)
            cam = F.relu((weights * feats).sum(dim=1, keepdim=True)).detach()
            mode = "trilinear" if X.ndim == 5 else "bilinear"
            cam = F.interpolate(cam, size=size, mode=mode, align_corners=False)[:, 0]
        peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12).view(-1, *(1,) * (cam.ndim - 1))
        cam = torch.where(peak > 1e-12, cam / peak, torch.zeros_like(cam))
        maps.append(cam.clamp(0, 1).cpu().numpy())
    if not maps:
        return np.empty((0, *size), dtype=np.float32)
    return np.concatenate(maps).astype(np.float32)


VOLUME_VIEWS = ("axial", "coronal", "sagittal")


def orthogonal_slices(volumes: np.ndarray, heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Volumes (n, C, D, H, W) and their maps (n, D, H, W) -> the axial (z), coronal (y) and sagittal (x) slices
    through each map's peak: images (3n, C, ., .) and maps (3n, ., .), in :data:`VOLUME_VIEWS` order per volume
    (a cube: every slice is S x S)."""
    images, maps = [], []
    for volume, heat in zip(volumes, heatmaps, strict=True):
        z, y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
        images += [volume[:, z], volume[:, :, y], volume[:, :, :, x]]
        maps += [heat[z], heat[:, y], heat[:, :, x]]
    shape = np.shape(volumes)
    if not images:
        return np.empty((0, shape[1] if len(shape) > 1 else 1, 0, 0), np.float32), np.empty((0, 0, 0), np.float32)
    return np.stack(images).astype(np.float32), np.stack(maps).astype(np.float32)


def saliency_panel_png(images: np.ndarray, heatmaps: np.ndarray, titles: list[str], columns: int = 4) -> bytes:
    """A PNG: each image (greyscale, or RGB when C = 3) with its heat map overlaid, and a title under it.

    ``images``: (n, C, S, S) or (n, S, S) in [0, 1]; ``heatmaps``: (n, S, S) in [0, 1].
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    images = np.asarray(images, dtype=np.float32)
    heatmaps = np.asarray(heatmaps, dtype=np.float32)
    n = len(images)
    if len(heatmaps) != n or len(titles) != n:
        raise ValueError("images, heatmaps and titles must have the same length")
    cols = max(1, min(columns, n))
    rows = max(1, -(-n // cols))
    fig = Figure(figsize=(2.4 * cols, 2.6 * rows), dpi=100)
    FigureCanvasAgg(fig)
    for i in range(rows * cols):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.set_axis_off()
        if i >= n:
            continue
        img = images[i]
        if img.ndim == 3:
            img = img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0))
        ax.imshow(np.clip(img, 0, 1), cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        ax.imshow(np.clip(heatmaps[i], 0, 1), cmap="jet", alpha=0.35, vmin=0, vmax=1, interpolation="bilinear")
        ax.set_title(str(titles[i]), fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


__all__ = [
    "GRAD_CAM",
    "INPUT_GRADIENT",
    "VOLUME_VIEWS",
    "grad_cam",
    "model_saliency_method",
    "orthogonal_slices",
    "saliency_method",
    "saliency_panel_png",
]
