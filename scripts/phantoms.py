"""SYNTHETIC chest-radiograph-like phantoms for demos and tests -- not patient data, no diagnostic meaning.

Each ``synthetic_phantom`` image is drawn from simple shapes: a torso, two dark lung fields, the mediastinum
and heart, ribs and clavicles, smooth background variation, noise, a random pose (shift, scale, rotation) and a
random exposure (gain, gamma, offset). The "finding" is a faint round opacity (Gaussian blob of varying size,
contrast and location) INSIDE a lung field. Distractors -- similar blobs OUTSIDE the lungs (mediastinum, soft
tissue, shoulders, abdomen) -- appear in most negatives and in some positives, so a model must learn where the
opacity is, not merely that a blob exists. Learnable at 28-64 px, not trivial.

``write_phantom_batch`` writes ``images/synthetic_phantom_<seed>_<i>.png`` (8-bit greyscale) and ``labels.csv``
with columns ``file, label ('finding' / 'normal'), id, patient_id, sex`` -- the ``folder`` image format. Some
synthetic patients have two images, so patient-level splitting matters.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from meddiag_pipelines.atomic import atomic_write_text

POSITIVE = "finding"
NEGATIVE = "normal"


def _soft(d: np.ndarray, edge: float) -> np.ndarray:
    """1 inside (d < 1), 0 outside, with a smooth edge of relative width ``edge``."""
    return 1.0 / (1.0 + np.exp((d - 1.0) / edge))


def _ellipse(x, y, cx, cy, ax, ay) -> np.ndarray:
    return np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2)


def _blob(x, y, cx, cy, sigma) -> np.ndarray:
    return np.exp(-(((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2)))


def render_phantom(
    rng: np.random.Generator, size: int, positive: bool, sex: str, noise_sd: float = 0.006
) -> np.ndarray:
    """One synthetic phantom as float32 (size, size) in [0, 1]."""
    lin = (np.arange(size) + 0.5) / size * 2 - 1
    gx, gy = np.meshgrid(lin, lin)
    # pose: rotation, scale, shift
    angle = np.radians(rng.uniform(-6, 6))
    scale = rng.uniform(0.92, 1.08)
    sx, sy = rng.uniform(-0.06, 0.06, size=2)
    x = (np.cos(angle) * gx + np.sin(angle) * gy) / scale - sx
    y = (-np.sin(angle) * gx + np.cos(angle) * gy) / scale - sy
    edge = 0.04

    torso_w = 0.88 if sex == "M" else 0.8
    body = _soft(_ellipse(x, y, 0, 0.15, torso_w, 1.05), edge)
    img = 0.06 + 0.42 * body
    # lungs
    lungs = []
    for side in (-1, 1):
        cx = side * rng.uniform(0.33, 0.4)
        cy = rng.uniform(-0.12, -0.02)
        ax, ay = rng.uniform(0.24, 0.3), rng.uniform(0.5, 0.6)
        taper = 1 + 0.35 * np.clip((y - cy) / ay, -1, 1)  # wider at the base
        lung = _soft(_ellipse(x, y, cx, cy, ax * taper, ay), edge)
        lungs.append((lung, cx, cy, ax, ay))
    lung_mask = np.clip(lungs[0][0] + lungs[1][0], 0, 1)
    img = img - 0.24 * lung_mask * body
    # mediastinum and heart
    med = _soft(np.maximum(np.abs(x) / 0.12, np.abs(y + 0.2) / 0.75), edge * 2)
    heart = _soft(_ellipse(x, y, rng.uniform(0.06, 0.16), rng.uniform(0.25, 0.35), rng.uniform(0.22, 0.3), 0.22), edge)
    img = img + 0.2 * np.clip(med + heart, 0, 1) * body
    # ribs: arcs across each lung; clavicles at the top
    ribs = np.zeros_like(img)
    for k in range(9):
        y0 = -0.62 + k * 0.15 + rng.normal(0, 0.01)
        curve = y0 + 0.35 * (np.abs(x) - 0.35) ** 2 - 0.1 * np.abs(x)
        ribs += np.exp(-(((y - curve) / 0.028) ** 2))
    img = img + 0.07 * np.clip(ribs, 0, 1.5) * lung_mask
    for side in (-1, 1):
        clav = -0.72 + 0.18 * (side * x - 0.2) ** 2
        img = img + 0.1 * np.exp(-(((y - clav) / 0.035) ** 2)) * (side * x > 0.05) * (side * x < 0.7) * body
    # smooth background variation
    for _ in range(3):
        img = img + rng.uniform(-0.03, 0.03) * _blob(x, y, *rng.uniform(-1, 1, size=2), rng.uniform(0.3, 0.7))

    # the finding: a faint opacity inside one lung
    if positive:
        lung, cx, cy, ax, ay = lungs[rng.integers(2)]
        r, t = np.sqrt(rng.uniform(0, 0.55)), rng.uniform(0, 2 * np.pi)
        bx, by = cx + r * ax * np.cos(t), cy + r * ay * np.sin(t)
        img = img + rng.uniform(0.12, 0.24) * _blob(x, y, bx, by, rng.uniform(0.11, 0.2))
    # distractors: similar blobs outside the lung fields
    n_distractors = rng.choice([0, 1, 2], p=[0.6, 0.3, 0.1] if positive else [0.3, 0.45, 0.25])
    placed = 0
    while placed < n_distractors:
        bx, by = rng.uniform(-0.85, 0.85), rng.uniform(-0.9, 0.95)
        i = min(size - 1, max(0, int((by * scale + 1) / 2 * size)))
        j = min(size - 1, max(0, int((bx * scale + 1) / 2 * size)))
        if lung_mask[i, j] > 0.2:
            continue
        img = img + rng.uniform(0.12, 0.24) * _blob(x, y, bx, by, rng.uniform(0.11, 0.2))
        placed += 1

    # exposure and noise
    img = np.clip(img, 0, 1)
    img = np.clip(rng.uniform(0.85, 1.15) * img ** rng.uniform(0.8, 1.25) + rng.uniform(-0.04, 0.04), 0, 1)
    img = img + rng.normal(0, noise_sd, size=img.shape)
    return np.clip(img, 0, 1).astype(np.float32)


def write_phantom_batch(out_dir: Path, n: int, seed: int, size: int = 64, positive_rate: float = 0.4) -> Path:
    """Write ``n`` synthetic phantoms (PNG) and ``labels.csv`` into ``out_dir``; returns ``out_dir``."""
    from PIL import Image

    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    patients: list[tuple[str, str]] = []
    for i in range(n):
        if patients and rng.random() < 0.15:  # a second image of an earlier synthetic patient
            patient, sex = patients[rng.integers(len(patients))]
        else:
            patient, sex = f"synthetic_patient_{seed}_{len(patients):05d}", str(rng.choice(["F", "M"]))
            patients.append((patient, sex))
        positive = bool(rng.random() < positive_rate)
        img = render_phantom(np.random.default_rng(rng.integers(2**63)), size, positive, sex)
        ident = f"synthetic_phantom_{seed}_{i:05d}"
        rel = f"images/{ident}.png"
        buf = io.BytesIO()
        Image.fromarray(np.rint(img * 255).astype(np.uint8), mode="L").save(buf, format="PNG", optimize=True)
        (out_dir / rel).write_bytes(buf.getvalue())  # labels.csv, written atomically last, completes the batch
        rows.append(
            {"file": rel, "label": POSITIVE if positive else NEGATIVE, "id": ident, "patient_id": patient, "sex": sex}
        )
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["file", "label", "id", "patient_id", "sex"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_dir / "labels.csv", text.getvalue())
    return out_dir


__all__ = ["NEGATIVE", "POSITIVE", "render_phantom", "write_phantom_batch"]
