"""ONNX export of an image task's CNN (``meddiag registry export``, :mod:`meddiag_pipelines.registry.export`): the
(N, C, S, S) images in [0, 1] in (normalisation is inside the module), the logits out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from meddiag_pipelines.imaging.preprocess import load_cached
from meddiag_pipelines.imaging.train import batch_for, load_image_model
from meddiag_pipelines.registry.export import CHUNK, Exportable, ExportRefused, VersionToExport


def exportable(version: VersionToExport) -> Exportable:
    """The version's CNN; the pixel logistic-regression baseline is refused (its coefficients are plain JSON)."""
    if version.plan.get("predictor") != "cnn":
        raise ExportRefused(
            f"{version.task} {version.version}: the model is the pixel logistic-regression baseline "
            f"({version.manifest['model']['name']}), not a torch model; its coefficients are plain "
            "JSON in the version's model folder"
        )
    return image_exportable(version.model_dir, version.plan, version.test_ids)


def image_exportable(model_dir: Path, plan: dict, test_ids: list[str]) -> Exportable:
    module, meta = load_image_model(model_dir, device="cpu")
    shape = (int(meta["channels"]), *(int(meta["input_size"]),) * int(meta.get("spatial_dims", 2)))  # 2D or 3D
    then = {
        "binary": "sigmoid: P(positive)",
        "multiclass": "softmax over the classes",
        "multilabel": "sigmoid per finding",
    }[meta["kind"]]

    step = batch_for(shape, CHUNK)  # volumes: a few at a time, so both runtimes' activations stay small

    def batches() -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(test_ids), step):
            yield {"images": load_cached(Path(plan["cache_dir"]), test_ids[start : start + step])}

    example = np.random.default_rng(0).random((2, *shape), dtype=np.float32)
    return Exportable(module, {"images": {0: "batch"}}, {"images": example}, batches, len(test_ids), then)
