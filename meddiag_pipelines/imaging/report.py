"""The imaging section of the evaluation report: Grad-CAM panels over a seeded sample of the test split, grouped by
outcome (binary: true positives, false positives, false negatives at the operating threshold; multi-class:
correct and misclassified; multi-label: the true positives of each finding). No ids are shown. Volumes are shown
as their axial, coronal and sagittal slices through the heat map's peak (fewer cases per group). torch is imported
only when a section is drawn."""

from __future__ import annotations

import base64
import html
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

from meddiag_pipelines import labels

SALIENCY_TITLE = "Saliency ({method})"
SALIENCY_PER_GROUP = 4
VOLUMES_PER_GROUP = 2  # three slices each
TUNING_TITLE = "Hyperparameter search"

log = logging.getLogger(__name__)


def png_img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" style="max-width:100%" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def saliency_groups(
    kind: str, classes: list[str], y: np.ndarray, proba: np.ndarray, metrics: dict
) -> tuple[list[tuple[str, np.ndarray, int | None]], np.ndarray, str]:
    """The groups of test images to show, as (heading, mask, target output or None), the score shown under each
    image, and a note on what the heat map is evidence for."""
    if kind == "multilabel":
        per_label = metrics.get("per_label") or []
        cuts = [float((r.get("operating_threshold") or {}).get("value", 0.5)) for r in per_label] or [0.5] * len(
            classes
        )
        groups = [(f"True positives: {c}", (y[:, j] == 1) & (proba[:, j] >= cuts[j]), j) for j, c in enumerate(classes)]
        return groups, proba, "Per finding at its operating threshold; the heat map is the evidence for that finding."
    if proba.ndim == 1:
        threshold = float((metrics.get("operating_threshold") or {}).get("value", 0.5))
        pred = proba >= threshold
        groups = [
            ("True positives", (y == 1) & pred, None),
            ("False positives", (y == 0) & pred, None),
            ("False negatives", (y == 1) & ~pred, None),
        ]
        note = (
            f"At the operating threshold {threshold:.3f}. The heat map is the evidence for "
            f"<b>{html.escape(str(classes[1]))}</b>."
        )
        return groups, proba, note
    pred_idx = proba.argmax(axis=1)
    groups = [("Correctly classified", pred_idx == y, None), ("Misclassified", pred_idx != y, None)]
    return groups, proba.max(axis=1), "The heat map is the evidence for the predicted class."


def _titles(
    chosen: np.ndarray, target: int | None, classes: list[str], y: np.ndarray, proba: np.ndarray, scores: np.ndarray
) -> list[str]:
    if target is not None:
        return [f"p={scores[i, target]:.2f}" for i in chosen]
    if proba.ndim == 1:
        return [f"p={scores[i]:.2f}" for i in chosen]
    return [f"true {classes[y[i]]} / pred {classes[proba[i].argmax()]}" for i in chosen]


def tuning_section(tuning: dict) -> tuple[str, str]:
    """(title, HTML) of a model's hyperparameter search (``model.json["tuning"]``, any modality): the trials,
    the objective and the best trial's settings."""
    best = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
        for k, v in sorted((tuning.get("best") or {}).items())
    )
    value = tuning.get("best_value")
    head = (
        f"<p>{int(tuning.get('n_trials', 0))} trials, {int(tuning.get('n_pruned', 0))} pruned; objective: "
        f"{html.escape(str(tuning.get('objective', '')))}"
        + (f"; best {float(value):.4f}" if isinstance(value, (int, float)) else "")
        + ".</p>"
    )
    return TUNING_TITLE, f"{head}<table><tr><th>setting</th><th>best trial</th></tr>{best}</table>"


def saliency_section(
    model_dir: Path,
    classes: list[str],
    kind: str,
    test_labels: pl.Series,
    proba: np.ndarray,
    metrics: dict,
    images: Callable[[list[int]], np.ndarray],
    seed: int,
) -> tuple[str, str]:
    """(title, HTML) of the Grad-CAM section; ``images(rows)`` gives the test images at those row positions. A
    failure yields a short notice instead, so that it never loses the evaluation."""
    from meddiag_pipelines.imaging.saliency import (
        GRAD_CAM,
        VOLUME_VIEWS,
        grad_cam,
        model_saliency_method,
        orthogonal_slices,
        saliency_panel_png,
    )

    title = SALIENCY_TITLE.format(method=GRAD_CAM)
    try:
        method = model_saliency_method(Path(model_dir))
        title = SALIENCY_TITLE.format(method=method)
        where_looked = (
            "last convolutional stage, coarse at small input sizes"
            if method == GRAD_CAM
            else "the gradient of the output with respect to each pixel"
        )
        y = labels.encode_labels(test_labels, classes, kind)
        groups, scores, note = saliency_groups(kind, classes, y, proba, metrics)
        rng = np.random.default_rng(seed)
        model_json = json.loads((Path(model_dir) / "model.json").read_text(encoding="utf-8"))
        volumes = int(model_json.get("spatial_dims", 2)) == 3
        per_group = VOLUMES_PER_GROUP if volumes else SALIENCY_PER_GROUP
        what = (
            "test volumes per group, each as its axial, coronal and sagittal slices through the heat map's peak"
            if volumes
            else "test images per group"
        )
        parts = [
            f"<p>{method.capitalize() if method != GRAD_CAM else method} ({where_looked}) over a random sample of up "
            f"to {per_group} {what}. {note} It shows where the model looked, not a segmentation.</p>"
        ]
        for heading, mask, target in groups:
            where = np.flatnonzero(mask)
            parts.append(f"<h3>{html.escape(heading)} ({where.size} of {len(y)})</h3>")
            if where.size == 0:
                parts.append("<p>none in the test split</p>")
                continue
            chosen = np.sort(rng.choice(where, size=min(per_group, where.size), replace=False))
            X = images([int(i) for i in chosen])
            maps = grad_cam(Path(model_dir), X, target_index=target)
            titles = _titles(chosen, target, classes, y, proba, scores)
            if volumes:
                X, maps = orthogonal_slices(X, maps)
                titles = [f"{t} {view}" for t in titles for view in VOLUME_VIEWS]
            panel = saliency_panel_png(X, maps, titles, columns=3 if volumes else 4)
            parts.append(png_img(panel, f"{heading}: {method}"))
        return title, "\n".join(parts)
    except Exception as exc:  # noqa: BLE001 - a saliency failure must not lose the evaluation
        log.warning("saliency section failed: %s", type(exc).__name__)
        return title, f"<p>Saliency could not be computed ({html.escape(type(exc).__name__)}).</p>"
