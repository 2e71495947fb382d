"""ONNX export of a published version's torch model, checked against onnxruntime on the version's test split.

``python -m meddiag_pipelines.registry export <task> <version>`` writes ``exports/<task>/<version>/model.onnx``
and ``parity.json`` under the data root (a published version folder is never rewritten), built in a hidden
folder and published by one rename, and only when onnxruntime's outputs match torch's within
:data:`TOLERANCE` (max absolute difference of the model's raw outputs, the logits, over every test row). A
version is immutable, so a second export of it is a no-op that reports the recorded figure.

Each model family is an adapter to :class:`Exportable`: the module, its inputs' dynamic axes, a small example
to trace and the test split as model inputs. The image CNN takes (N, C, S, S) images in [0, 1] (normalisation
is inside the module); the text n-gram model takes the (indices, offsets) of an ``EmbeddingBag``, the hashing
staying in Python before the session (CRC32 of strings has no ONNX operator); an encoder over
(input_ids, attention_mask) needs an adapter whose axes are ``{0: "batch", 1: "sequence"}`` for both, the
tokenizer staying in Python. torch, onnx and onnxruntime (the ``large`` extra) are imported on use only.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from meddiag_pipelines.atomic import atomic_write_json, publish_new_dir, staging_dir
from meddiag_pipelines.layout import DataLayout
from meddiag_pipelines.registry.store import ModelRegistry, RegistryError
from meddiag_pipelines.split import SPLIT_COLUMN
from meddiag_pipelines.storage import DataRoot, open_plan

TOLERANCE = 1e-4
CHUNK = 256  # test rows per run of both runtimes
ONNX_FILE, PARITY_FILE = "model.onnx", "parity.json"


class ExportRefused(ValueError):
    """The version cannot be exported (not a torch model, no test rows) or its ONNX outputs differ from torch's."""


@dataclass
class Exportable:
    module: object  # a torch nn.Module in eval mode, on the CPU
    axes: dict[str, dict[int, str]]  # each input in forward order -> its dynamic axes (same name: same size)
    example: dict[str, np.ndarray]  # what the export traces: two rows, so no axis is fixed at size 1
    test_batches: Callable[[], Iterator[dict[str, np.ndarray]]]  # the test split as model inputs, in chunks
    n_test: int
    then: str  # how the logits become probabilities


def export_dir(data_dir: Path | str, task: str, version: str) -> Path:
    """Where the export is written on this host (on an object-store root: its local folder)."""
    return DataRoot(data_dir).path(f"exports/{task}/{version}")


def export_version(data_dir: Path | str, task: str, version: str) -> dict:
    """Export ``version`` of ``task`` and check it; the parity record (``already_exported``: an earlier export's)."""
    root = DataRoot(data_dir)
    registry = ModelRegistry(root)
    known = registry.versions(task) if task in registry.tasks() else []
    if version not in known:  # also keeps the paths below inside the data root
        raise RegistryError(f"task {task!r} has no published version {version!r}; known: {known}")
    manifest = registry.manifest(task, version)
    final = export_dir(data_dir, task, version)
    if (final / PARITY_FILE).exists():
        return _recorded(final)
    version_dir = registry.version_dir(task, version)
    plan = open_plan(json.loads((version_dir / "plan.json").read_text()), root)
    exportable = adapter(task, version, manifest, plan, version_dir, root)
    staged = staging_dir(final)
    try:
        parity = _export_and_compare(exportable, staged / ONNX_FILE)
        record = {"task": task, "version": version, "model": manifest["model"]["name"],
                  "classes": manifest["model"]["classes"], "inputs": exportable.axes, "output": "logits",
                  "then": exportable.then, "compared": "logits", "n_test": exportable.n_test, **parity,
                  "tolerance": TOLERANCE, "exported_at": time.time()}  # fmt: skip
        if not record["max_abs_diff"] <= TOLERANCE:
            raise ExportRefused(f"{task} {version}: onnxruntime's logits differ from torch's by up to "
                                f"{record['max_abs_diff']:.3g} on the test split (tolerance {TOLERANCE:g}): not exported")  # fmt: skip
        atomic_write_json(staged / PARITY_FILE, record)
        publish_new_dir(staged, final)
    except FileExistsError:  # another export of this version published first
        shutil.rmtree(staged, ignore_errors=True)
        return _recorded(final)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return {**record, "already_exported": False}


def _recorded(final: Path) -> dict:
    return {**json.loads((final / PARITY_FILE).read_text()), "already_exported": True}


def _export_and_compare(exportable: Exportable, target: Path) -> dict:
    import onnxruntime
    import torch

    names = list(exportable.axes)
    dims: dict[str, object] = {}
    shapes = tuple({axis: dims.setdefault(n, torch.export.Dim(n)) for axis, n in exportable.axes[i].items()}
                   for i in names)  # fmt: skip
    example = tuple(torch.from_numpy(exportable.example[n]) for n in names)
    program = torch.onnx.export(exportable.module, example, dynamo=True, input_names=names, output_names=["logits"],
                                dynamic_shapes=shapes, verbose=False)  # fmt: skip
    program.save(str(target))
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    worst, shape = 0.0, None
    with torch.no_grad():
        for batch in exportable.test_batches():
            expected = exportable.module(*(torch.from_numpy(batch[n]) for n in names)).numpy()
            (got,) = session.run(["logits"], batch)
            if got.shape != expected.shape:
                raise ExportRefused(f"the ONNX model's output shape {got.shape} differs from torch's {expected.shape}")
            diff = float(np.abs(got - expected).max(initial=0.0))
            worst, shape = max(worst, diff if np.isfinite(diff) else np.inf), got.shape[1:]  # NaN: a mismatch
    return {"max_abs_diff": worst, "output_shape": ["batch", *shape], "opset": _opset(target),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}  # fmt: skip


def _opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


# -- adapters: one per model family ---------------------------------------------------------------------------------
def adapter(task: str, version: str, manifest: dict, plan: dict, version_dir: Path, root: DataRoot) -> Exportable:
    """The export of the version's model, or :class:`ExportRefused` naming what to use instead."""
    modality, name, model_dir = plan.get("modality"), manifest["model"]["name"], version_dir / "model"
    if modality not in ("image", "text"):
        raise ExportRefused(f"{task} {version}: a tabular model ({name}) is not a torch model and is not exported to "
                            "ONNX; XGBoost's own model.ubj in the version's model folder is portable (every XGBoost "
                            "binding reads it), as is the logistic regression's JSON")  # fmt: skip
    if modality == "image" and plan.get("predictor") != "cnn":
        raise ExportRefused(f"{task} {version}: the model is the pixel logistic-regression baseline ({name}), not "
                            "a torch model; its coefficients are plain JSON in the version's model folder")  # fmt: skip
    test_ids = pl.read_parquet(version_dir / "test_predictions.parquet", columns=["id"])["id"].to_list()
    if not test_ids:
        raise ExportRefused(f"{task} {version}: the version has no test rows to check an export against")
    if modality == "image":
        return image_exportable(model_dir, plan, test_ids)
    return text_exportable(model_dir, lambda: _test_texts(root, task, version, test_ids, plan["text_column"]))


def image_exportable(model_dir: Path, plan: dict, test_ids: list[str]) -> Exportable:
    from meddiag_pipelines.imaging.preprocess import load_cached
    from meddiag_pipelines.imaging.train import load_image_model

    module, meta = load_image_model(model_dir, device="cpu")
    shape = (int(meta["channels"]), int(meta["input_size"]), int(meta["input_size"]))
    then = {"binary": "sigmoid: P(positive)", "multiclass": "softmax over the classes",
            "multilabel": "sigmoid per finding"}[meta["kind"]]  # fmt: skip

    def batches() -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(test_ids), CHUNK):
            yield {"images": load_cached(Path(plan["cache_dir"]), test_ids[start : start + CHUNK])}

    example = np.random.default_rng(0).random((2, *shape), dtype=np.float32)
    return Exportable(module, {"images": {0: "batch"}}, {"images": example}, batches, len(test_ids), then)


EXAMPLE_TEXTS = ["chest pain on exertion", "no acute findings"]  # traced only: the example's values do not matter


def text_inputs_exportable(module, axes: dict[str, dict[int, str]], encode: Callable[[list[str]], dict[str, np.ndarray]],
                           texts: list[str], then: str) -> Exportable:  # fmt: skip
    """A text model whose inputs ``encode(texts)`` makes in Python (hashing, a tokenizer), chunk by chunk. An
    encoder passes a module returning the logits tensor, ``axes`` {0: "batch", 1: "sequence"} for input_ids and
    attention_mask, and its tokenizer (padded, as int64 arrays) as ``encode``."""

    def batches() -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(texts), CHUNK):
            yield encode(texts[start : start + CHUNK])

    return Exportable(module, axes, encode(EXAMPLE_TEXTS), batches, len(texts), then)


def encoder_exportable(model, texts: list[str]) -> Exportable:
    """A Hugging Face encoder: its tokenizer runs before the session (padded to the longest text of a chunk)."""

    def tokens(chunk: list[str]) -> dict[str, np.ndarray]:
        enc = model.tokenizer([t or "" for t in chunk], truncation=True, max_length=model.max_length, padding=True,
                              return_tensors="np")  # fmt: skip
        return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}

    then = (f"divide by the temperature {model.temperature:.6g}, then softmax over the classes; inputs: the "
            f"tokenizer of the version's model/encoder/ folder, truncated at {model.max_length} tokens")
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}
    return text_inputs_exportable(model.module(), axes, tokens, texts, then)


def text_exportable(model_dir: Path, test_texts: Callable[[], list[str]]) -> Exportable:
    from meddiag_pipelines.text.encoder import _Encoder
    from meddiag_pipelines.text.models import _bags, _batch_tensors, _Neural, load_text_model

    try:
        model = load_text_model(model_dir)
    except ValueError as exc:  # a model kind this module has no adapter for
        raise ExportRefused(f"{exc}: no ONNX export for it yet") from exc
    if isinstance(model, _Encoder):
        return encoder_exportable(model, test_texts())
    if not isinstance(model, _Neural):
        raise ExportRefused(f"{model_dir.parent.name}: the chosen text model is the TF-IDF + logistic-regression "
                            "baseline, not a torch model; its vocab.json and weights.npz are portable as they are")  # fmt: skip
    model.net.eval()

    def hashed(chunk: list[str]) -> dict[str, np.ndarray]:
        ids, offsets = _batch_tensors(_bags(chunk, model.n_buckets, model.char_ngrams), "cpu")
        return {"indices": ids.numpy(), "offsets": offsets.numpy()}

    sigmoid = "sigmoid: P(second class)" if model.n_out == 1 else "softmax over the classes"
    then = (f"divide by the temperature {model.temperature:.6g}, then {sigmoid}; indices: CRC32 buckets of the "
            "n-grams of each text (text.models.hashed_features), offsets: where each text starts")
    axes = {"indices": {0: "n_indices"}, "offsets": {0: "batch"}}
    return text_inputs_exportable(model.net, axes, hashed, test_texts(), then)


def _test_texts(root: DataRoot, task: str, version: str, test_ids: list[str], column: str) -> list[str]:
    """The (scrubbed) texts the version was evaluated on, in its test_predictions order: from the split table
    its run read (its own, else the newest written before it that holds every test row)."""
    from meddiag_pipelines.specs import scan_specs
    from meddiag_pipelines.text.models import texts_of

    spec = next((s for s in scan_specs().specs if s.name == task), None)
    if spec is None:
        raise ExportRefused(f"{task}: no spec of this task in the spec folders, so its test texts cannot be found")
    folder = root.relative(DataLayout(root.local).table(task, "split"))
    files = [f for f in root.list(folder) if f.endswith(".parquet") and f <= f"{version}.parquet"]
    for name in reversed(files):
        split = root.read_parquet(f"{folder}/{name}")
        if spec.id not in split.columns or column not in split.columns:
            continue
        test = split.filter(pl.col(SPLIT_COLUMN) == "test")
        text_of = dict(zip(test[spec.id].cast(pl.String).to_list(), texts_of(test, column), strict=True))
        if all(i in text_of for i in test_ids):
            return [text_of[i] for i in test_ids]
    raise ExportRefused(f"{task} {version}: no split table under {folder} holds the version's {len(test_ids)} test "
                        "rows")  # fmt: skip
