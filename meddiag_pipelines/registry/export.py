"""ONNX export of a published version's model, checked against onnxruntime on the version's test split.

``python -m meddiag_pipelines.registry export <task> <version>`` writes ``exports/<task>/<version>/model.onnx``
and ``parity.json`` under the data root (a published version folder is never rewritten), built in a hidden
folder and published by one rename, and only when onnxruntime's outputs match the model's own within
:data:`TOLERANCE` (max absolute difference over every test row: of the logits for a torch model, of the
probabilities ``predict`` gives for a tabular one). A version is immutable, so a second export of it is a no-op
that reports the recorded figure.

Each model family is an adapter to :class:`Exportable`: the module, its inputs' dynamic axes, a small example
to trace and the test split as model inputs. The image CNN takes (N, C, S, S) images in [0, 1] (normalisation
is inside the module); the text n-gram model takes the (indices, offsets) of an ``EmbeddingBag``, the hashing
staying in Python before the session (CRC32 of strings has no ONNX operator); an encoder over
(input_ids, attention_mask) needs an adapter whose axes are ``{0: "batch", 1: "sequence"}`` for both, the
tokenizer staying in Python. A tabular model (XGBoost through onnxmltools, the logistic model built node by
node) is a graph of its own, :class:`TabularExportable`: the feature matrix in, the probabilities out, the
recalibration inside; ``features.json`` beside it says how records become that matrix. torch, onnx, onnxmltools
and onnxruntime (the ``large`` extra) are imported on use only.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar
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
ONNX_FILE, PARITY_FILE, FEATURES_FILE = "model.onnx", "parity.json", "features.json"


class ExportRefused(ValueError):
    """The version cannot be exported (a baseline with portable JSON weights, no test rows) or its ONNX outputs
    differ from the model's own."""


@dataclass
class Exportable:
    module: object  # a torch nn.Module in eval mode, on the CPU
    axes: dict[str, dict[int, str]]  # each input in forward order -> its dynamic axes (same name: same size)
    example: dict[str, np.ndarray]  # what the export traces: two rows, so no axis is fixed at size 1
    test_batches: Callable[[], Iterator[dict[str, np.ndarray]]]  # the test split as model inputs, in chunks
    n_test: int
    then: str  # how the logits become probabilities
    output: ClassVar[str] = "logits"
    reference: ClassVar[str] = "torch"  # what onnxruntime is compared with
    files: ClassVar[dict] = {}  # JSON files written beside the model

    def export_to(self, target: Path) -> dict:
        return _export_and_compare(self, target)


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
        parity = exportable.export_to(staged / ONNX_FILE)
        output = exportable.output
        record = {"task": task, "version": version, "model": manifest["model"]["name"],
                  "classes": manifest["model"]["classes"], "inputs": exportable.axes, "output": output,
                  "then": exportable.then, "compared": output, "reference": exportable.reference,
                  "n_test": exportable.n_test, **parity, "tolerance": TOLERANCE, "exported_at": time.time()}  # fmt: skip
        if not record["max_abs_diff"] <= TOLERANCE:
            raise ExportRefused(f"{task} {version}: onnxruntime's {output} differ from {exportable.reference}'s by up "
                                f"to {record['max_abs_diff']:.3g} on the test split (tolerance {TOLERANCE:g}): not exported")  # fmt: skip
        for name, content in exportable.files.items():
            atomic_write_json(staged / name, content)
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
            diff, shape = _max_abs_diff(session, "logits", batch, expected, "torch")
            worst = max(worst, diff)
    return {"max_abs_diff": worst, "output_shape": ["batch", *shape], "opset": _opset(target),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}  # fmt: skip


def _max_abs_diff(session, output: str, feeds: dict[str, np.ndarray], expected: np.ndarray,
                  reference: str) -> tuple[float, tuple]:  # fmt: skip
    """onnxruntime's ``output`` on ``feeds`` against ``expected`` (the reference's): the largest absolute difference
    (infinite where either has a NaN) and the output's shape past the batch axis."""
    (got,) = session.run([output], feeds)
    if got.shape != expected.shape:
        raise ExportRefused(f"the ONNX model's output shape {got.shape} differs from {reference}'s {expected.shape}")
    diff = float(np.abs(got - expected).max(initial=0.0))
    return (diff if np.isfinite(diff) else np.inf), got.shape[1:]  # NaN: a mismatch


def _opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


# -- adapters: one per model family ---------------------------------------------------------------------------------
def adapter(task: str, version: str, manifest: dict, plan: dict, version_dir: Path,
            root: DataRoot) -> Exportable | TabularExportable:  # fmt: skip
    """The export of the version's model, or :class:`ExportRefused` naming what to use instead."""
    modality, name, model_dir = plan.get("modality"), manifest["model"]["name"], version_dir / "model"
    if modality in ("image", "volume") and plan.get("predictor") != "cnn":
        raise ExportRefused(f"{task} {version}: the model is the pixel logistic-regression baseline ({name}), not "
                            "a torch model; its coefficients are plain JSON in the version's model folder")  # fmt: skip
    test_ids = pl.read_parquet(version_dir / "test_predictions.parquet", columns=["id"])["id"].to_list()
    if not test_ids:
        raise ExportRefused(f"{task} {version}: the version has no test rows to check an export against")
    if modality in ("image", "volume"):  # the volume modality's 3D ResNet is the imaging CNN, spatial_dims 3
        return image_exportable(model_dir, plan, test_ids)
    if modality == "text":
        from meddiag_pipelines.text.models import texts_of

        column = plan["text_column"]
        return text_exportable(model_dir, lambda: texts_of(_test_rows(root, task, version, test_ids, [column]), column))
    rows = _test_rows(root, task, version, test_ids, [*plan["numeric"], *plan["categorical"]])
    return tabular_exportable(model_dir, plan, rows, version_dir / "test_predictions.parquet",
                              manifest["model"]["classes"])  # fmt: skip


def image_exportable(model_dir: Path, plan: dict, test_ids: list[str]) -> Exportable:
    from meddiag_pipelines.imaging.preprocess import load_cached
    from meddiag_pipelines.imaging.train import load_image_model

    module, meta = load_image_model(model_dir, device="cpu")
    shape = (int(meta["channels"]), *(int(meta["input_size"]),) * int(meta.get("spatial_dims", 2)))
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


def _test_rows(root: DataRoot, task: str, version: str, test_ids: list[str], columns: list[str]) -> pl.DataFrame:
    """The rows (text: scrubbed) the version was evaluated on, in its test_predictions order: from the split table
    its run read (its own, else the newest written before it that holds ``columns`` and every test row)."""
    from meddiag_pipelines.specs import scan_specs

    spec = next((s for s in scan_specs().specs if s.name == task), None)
    if spec is None:
        raise ExportRefused(f"{task}: no spec of this task in the spec folders, so its test rows cannot be found")
    folder = root.relative(DataLayout(root.local).table(task, "split"))
    files = [f for f in root.list(folder) if f.endswith(".parquet") and f <= f"{version}.parquet"]
    for name in reversed(files):
        split = root.read_parquet(f"{folder}/{name}")
        if not {spec.id, *columns} <= set(split.columns):
            continue
        test = split.filter(pl.col(SPLIT_COLUMN) == "test")
        position = {key: n for n, key in enumerate(test[spec.id].cast(pl.String).to_list())}
        if all(i in position for i in test_ids):
            return test[[position[i] for i in test_ids]]
    raise ExportRefused(f"{task} {version}: no split table under {folder} holds the version's {len(test_ids)} test "
                        "rows")  # fmt: skip


# -- tabular: the plan's feature matrix in, the probabilities predict gives out -------------------------------------
ONNX_OPSET = 17  # the default domain of the tabular graphs (TreeEnsembleClassifier is onnxmltools' ai.onnx.ml)
CONVERTER_OPSET = 15  # the highest onnxmltools 1.16 converts to
MAX_SPLITS_CHECKED = 512  # split thresholds probed (at, just below, missing) beside the test rows


@dataclass
class TabularExportable:
    """A tabular model as an ONNX graph ("features" (batch, n_features) float32 -> "probabilities": (batch,) P of
    the second class, or (batch, classes)), and what onnxruntime is checked against: the version's own predictor
    (``tabular.models.predict_tabular``) on the test split's feature matrix and, for XGBoost, on test rows with one
    feature set on a split threshold, just below it and missing, where a threshold or a missing-value direction
    moved by the export would send a row down the other branch."""

    graph: object  # an onnx.ModelProto
    matrix: np.ndarray  # the test split's model inputs (float32, the model's columns in order)
    predict: Callable[[np.ndarray], np.ndarray]
    then: str
    reference: str
    features: dict  # features.json: how records become the matrix
    probes: np.ndarray  # rows on the split thresholds (none for the logistic model)
    recorded_diff: float  # the predictor on the rebuilt test rows vs the version's test_predictions.parquet
    made_with: dict[str, str]
    axes: ClassVar = {"features": {0: "batch"}}
    output: ClassVar[str] = "probabilities"

    @property
    def n_test(self) -> int:
        return len(self.matrix)

    @property
    def files(self) -> dict:
        return {FEATURES_FILE: self.features}

    def export_to(self, target: Path) -> dict:
        return _tabular_export_and_compare(self, target)


def tabular_exportable(model_dir: Path, plan: dict, rows: pl.DataFrame, test_predictions: Path,
                       classes: list[str]) -> TabularExportable:  # fmt: skip
    from meddiag_pipelines.tabular.models import model_inputs, predict_tabular, read_meta

    meta = read_meta(model_dir)
    matrix = np.ascontiguousarray(model_inputs(model_dir, rows, plan), dtype=np.float32)

    def predict(X: np.ndarray) -> np.ndarray:
        return predict_tabular(model_dir, X)

    recorded_diff = _recorded_diff(predict(matrix), test_predictions, classes)
    what = f"P({classes[-1]!r})" if meta["n_classes"] == 2 else "one probability per class, in the order of 'classes'"
    inside = ["the trees of the rounds predict uses (to the best iteration)"] if meta["framework"] == "xgboost" else []
    inside += ["the logistic recalibration fitted on validation"] if meta.get("recalibration") else []
    then = f"none: {what}, as the version's predictor gives it" + (f"; in the graph: {', '.join(inside)}" if inside else "")
    if meta["framework"] == "xgboost":
        graph, probes, made_with = xgboost_graph(model_dir, meta, matrix)
        return TabularExportable(graph, matrix, predict, then, "xgboost", feature_doc(plan, meta), probes, recorded_diff,
                                 made_with)  # fmt: skip
    if meta["framework"] == "logistic":
        return TabularExportable(logistic_graph(meta), matrix, predict, then, "numpy", feature_doc(plan, meta),
                                 matrix[:0], recorded_diff, {})  # fmt: skip
    raise ExportRefused(f"{model_dir.parent.name}: no ONNX export for a {meta['framework']!r} tabular model")


def _recorded_diff(expected: np.ndarray, test_predictions: Path, classes: list[str]) -> float:
    """How far the predictor on the rebuilt test rows is from the version's recorded test predictions: about
    zero unless the rows found (or the plan) are not the ones the version was evaluated on."""
    columns = ["probability"] if expected.ndim == 1 else [f"p_{c}" for c in classes]
    recorded = pl.read_parquet(test_predictions)
    if not set(columns) <= set(recorded.columns):
        raise ExportRefused(f"{test_predictions.name} has no {', '.join(columns)} column to check the test rows with")
    diff = float(np.abs(recorded.select(columns).to_numpy().reshape(expected.shape) - expected).max(initial=0.0))
    if not diff <= TOLERANCE:
        version = test_predictions.parent
        raise ExportRefused(f"{version.parent.name} {version.name}: the version's predictor on the test rows of the "
                            f"split table differs from its {test_predictions.name} by up to {diff:.3g}: those rows are "
                            "not the ones it was evaluated on; not exported")  # fmt: skip
    return diff


def feature_doc(plan: dict, meta: dict) -> dict:
    """features.json: the input's columns in order and how a record becomes a row (the version's feature plan)."""
    from meddiag_pipelines.tabular.features import MISSING, OTHER, FeaturePlan

    reported = FeaturePlan.from_dict(plan).reported_names()
    columns = meta["feature_names"]
    how = ("One row per record, by the version's feature plan (`plan`; meddiag_pipelines.tabular.models.model_inputs "
           "does it): a numeric column as a number (booleans 1.0 / 0.0), a missing value (or NaN) replaced by its "
           "training median (plan.medians); '<column>__missing' is 1.0 where that column is missing, else 0.0 "
           "(plan.indicators); '<column>=<level>' is 1.0 where the column's value as text equals the level, else "
           f"0.0, a missing value counting as '{MISSING}' and a value not among plan.categorical[column] as "
           f"'{OTHER}'. The plan imputes every value, so no NaN reaches the model.")  # fmt: skip
    return {"input": "features", "dtype": "float32", "shape": ["batch", len(columns)],
            "columns": [{"name": c, "reported": reported.get(c, c)} for c in columns], "how": how, "plan": plan}  # fmt: skip


def _tabular_export_and_compare(exportable: TabularExportable, target: Path) -> dict:
    import onnx
    import onnxruntime

    onnx.save(exportable.graph, str(target))
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])

    def worst(matrix: np.ndarray) -> tuple[float, tuple]:
        return _max_abs_diff(session, "probabilities", {"features": matrix}, exportable.predict(matrix), "the predictor")

    at_splits = worst(exportable.probes)[0] if len(exportable.probes) else 0.0
    if not at_splits <= TOLERANCE:
        raise ExportRefused(f"onnxruntime's probabilities differ from {exportable.reference}'s by up to "
                            f"{at_splits:.3g} on rows set on the trees' split thresholds: a threshold or a missing "
                            "value's branch moved in the export; not exported")  # fmt: skip
    diff, shape = worst(exportable.matrix)
    return {"max_abs_diff": diff, "output_shape": ["batch", *shape], "split_probe_rows": len(exportable.probes),
            "max_abs_diff_at_split_thresholds": at_splits, "test_predictions_max_abs_diff": exportable.recorded_diff,
            "opset": _opset(target), "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            **exportable.made_with}  # fmt: skip


def xgboost_graph(model_dir: Path, meta: dict, matrix: np.ndarray) -> tuple[object, np.ndarray, dict[str, str]]:
    """The trees of the rounds ``predict`` uses as onnxmltools' TreeEnsembleClassifier, then (binary) the
    positive column and the recalibration; with the probe rows on the trees' split thresholds."""
    import onnxmltools
    import xgboost
    from onnx import TensorProto, helper, numpy_helper
    from onnxmltools.convert.common.data_types import FloatTensorType

    from meddiag_pipelines.tabular.models import load_booster

    booster = load_booster(model_dir)
    booster = booster[: booster.best_iteration + 1]  # early stopping trained further than the rounds predict uses
    booster.feature_names = None  # the converter reads features as f0, f1, ...: the input's columns in order
    n_features = matrix.shape[1]
    trees = onnxmltools.convert_xgboost(booster, initial_types=[("features", FloatTensorType([None, n_features]))],
                                        target_opset=CONVERTER_OPSET)  # fmt: skip
    renamed = {o.name: f"tree_{o.name}" for o in trees.graph.output}  # its "label" output is left unused
    nodes = list(trees.graph.node)
    for node in nodes:
        node.input[:] = [renamed.get(n, n) for n in node.input]
        node.output[:] = [renamed.get(n, n) for n in node.output]
    ml_opset = next(o.version for o in trees.opset_import if o.domain == "ai.onnx.ml")
    inits = list(trees.graph.initializer)
    if meta["n_classes"] == 2:
        inits.append(numpy_helper.from_array(np.array(1, dtype=np.int64), "positive"))
        nodes += [helper.make_node("Gather", [renamed["probabilities"], "positive"], ["p_positive_float"], axis=1),
                  helper.make_node("Cast", ["p_positive_float"], ["p_positive"], to=TensorProto.DOUBLE)]  # fmt: skip
        tail, more = _binary_tail("p_positive", meta.get("recalibration"))
        graph = _tabular_model(nodes + tail, inits + more, n_features, ["batch"], ml_opset)
    else:
        nodes.append(helper.make_node("Identity", [renamed["probabilities"]], ["probabilities"]))
        graph = _tabular_model(nodes, inits, n_features, ["batch", meta["n_classes"]], ml_opset)
    made_with = {"xgboost": xgboost.__version__, "onnxmltools": onnxmltools.__version__}
    return graph, split_probe_rows(booster, matrix), made_with


def split_probe_rows(booster, matrix: np.ndarray) -> np.ndarray:
    """Per split threshold of the trees (at most :data:`MAX_SPLITS_CHECKED`, spread over them), a test row with
    that feature on the threshold, one just below it (XGBoost goes left when value < threshold, in float32) and
    one with it missing (NaN: the split's default direction)."""
    trees = json.loads(booster.save_raw("json"))["learner"]["gradient_booster"]["model"]["trees"]
    splits = sorted({(f, c) for t in trees for f, c, left in zip(t["split_indices"], t["split_conditions"],
                                                                 t["left_children"]) if left != -1})  # fmt: skip
    splits = splits[:: max(1, math.ceil(len(splits) / MAX_SPLITS_CHECKED))]
    rows = matrix[np.arange(3 * len(splits)) % len(matrix)].copy()
    for i, (feature, threshold) in enumerate(splits):
        at = np.float32(threshold)
        rows[3 * i : 3 * i + 3, feature] = (at, np.nextafter(at, np.float32(-np.inf)), np.nan)
    return rows


def logistic_graph(meta: dict) -> object:
    """The standardised logistic model in float64 as ``predict`` computes it: sigmoid (then the recalibration) of
    the one score for a binary task, the softmax of the class scores otherwise."""
    from onnx import TensorProto, helper, numpy_helper

    weights = {"mean": meta["mean"], "scale": meta["scale"], "coef": np.asarray(meta["coef"]).T,
               "intercept": meta["intercept"]}  # fmt: skip
    inits = [numpy_helper.from_array(np.asarray(v, dtype=np.float64), k) for k, v in weights.items()]
    nodes = [helper.make_node("Cast", ["features"], ["x"], to=TensorProto.DOUBLE),
             helper.make_node("Sub", ["x", "mean"], ["centred"]),
             helper.make_node("Div", ["centred", "scale"], ["standardised"]),
             helper.make_node("MatMul", ["standardised", "coef"], ["weighted"]),
             helper.make_node("Add", ["weighted", "intercept"], ["scores"])]  # fmt: skip
    n_features = len(meta["mean"])
    if meta["n_classes"] == 2:
        inits.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat"))
        nodes += [helper.make_node("Reshape", ["scores", "flat"], ["score"]),
                  helper.make_node("Sigmoid", ["score"], ["p_positive"])]  # fmt: skip
        tail, more = _binary_tail("p_positive", meta.get("recalibration"))
        return _tabular_model(nodes + tail, inits + more, n_features, ["batch"])
    nodes += [helper.make_node("Softmax", ["scores"], ["p_classes"], axis=1),
              helper.make_node("Cast", ["p_classes"], ["probabilities"], to=TensorProto.FLOAT)]  # fmt: skip
    return _tabular_model(nodes, inits, n_features, ["batch", meta["n_classes"]])


def _binary_tail(p: str, recalibration: dict | None) -> tuple[list, list]:
    """P(positive) in float64 -> "probabilities" in float32, through the recalibration ``predict`` applies:
    sigmoid(a + b * logit(p clipped to [CLIP, 1 - CLIP])) (``tabular.models._recalibrate``)."""
    from onnx import TensorProto, helper, numpy_helper

    from meddiag_pipelines.probability import CLIP

    nodes, inits = [], []
    if recalibration:
        constants = {"clip_low": CLIP, "clip_high": 1.0 - CLIP, "one": 1.0, "recalibration_a": recalibration["a"],
                     "recalibration_b": recalibration["b"]}  # fmt: skip
        inits = [numpy_helper.from_array(np.array(v, dtype=np.float64), k) for k, v in constants.items()]
        nodes = [helper.make_node("Clip", [p, "clip_low", "clip_high"], ["p_clipped"]),
                 helper.make_node("Sub", ["one", "p_clipped"], ["p_rest"]),
                 helper.make_node("Div", ["p_clipped", "p_rest"], ["odds"]),
                 helper.make_node("Log", ["odds"], ["logit"]),
                 helper.make_node("Mul", ["logit", "recalibration_b"], ["logit_scaled"]),
                 helper.make_node("Add", ["logit_scaled", "recalibration_a"], ["logit_recalibrated"]),
                 helper.make_node("Sigmoid", ["logit_recalibrated"], ["p_recalibrated"])]  # fmt: skip
        p = "p_recalibrated"
    return [*nodes, helper.make_node("Cast", [p], ["probabilities"], to=TensorProto.FLOAT)], inits


def _tabular_model(nodes: list, inits: list, n_features: int, output_shape: list, ml_opset: int | None = None):
    from onnx import TensorProto, checker, helper

    graph = helper.make_graph(nodes, "meddiag_tabular",
                              [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", n_features])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, output_shape)],
                              initializer=inits)  # fmt: skip
    opsets = [helper.make_opsetid("", ONNX_OPSET), *([helper.make_opsetid("ai.onnx.ml", ml_opset)] if ml_opset else [])]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="meddiag_pipelines",
                              ir_version=helper.find_min_ir_version_for(opsets))  # onnx's newest: unknown to onnxruntime  # fmt: skip
    checker.check_model(model, full_check=True)
    return model
