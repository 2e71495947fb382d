"""ONNX export of a tabular task's model (``meddiag registry export``, :mod:`meddiag_pipelines.registry.export`):
XGBoost through onnxmltools, the logistic model built node by node, each a graph of its own
(:class:`TabularExportable`): the feature matrix in, the probabilities out, the recalibration inside;
``features.json`` beside it says how records become that matrix."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import polars as pl

from meddiag_pipelines.flat.features import MISSING, OTHER, FeaturePlan
from meddiag_pipelines.flat.models import load_booster, model_inputs, predict_tabular, read_meta
from meddiag_pipelines.registry.export import (
    FEATURES_FILE,
    TOLERANCE,
    ExportRefused,
    VersionToExport,
    max_abs_diff,
    onnx_opset,
)


def exportable(version: VersionToExport) -> TabularExportable:
    """The version's model, checked on its test rows rebuilt from the split table."""
    plan, classes = version.plan, version.manifest["model"]["classes"]
    rows = version.test_rows([*plan["numeric"], *plan["categorical"]])
    return tabular_exportable(version.model_dir, plan, rows, version.test_predictions, classes)


ONNX_OPSET = 17  # the default domain of the tabular graphs (TreeEnsembleClassifier is onnxmltools' ai.onnx.ml)
CONVERTER_OPSET = 15  # the highest onnxmltools 1.16 converts to
MAX_SPLITS_CHECKED = 512  # split thresholds probed (at, just below, missing) beside the test rows


@dataclass
class TabularExportable:
    """A tabular model as an ONNX graph ("features" (batch, n_features) float32 -> "probabilities": (batch,) P of
    the second class, or (batch, classes)), and what onnxruntime is checked against: the version's own predictor
    (``flat.models.predict_tabular``) on the test split's feature matrix and, for XGBoost, on test rows with one
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


def tabular_exportable(
    model_dir: Path, plan: dict, rows: pl.DataFrame, test_predictions: Path, classes: list[str]
) -> TabularExportable:
    meta = read_meta(model_dir)
    matrix = np.ascontiguousarray(model_inputs(model_dir, rows, plan), dtype=np.float32)

    def predict(X: np.ndarray) -> np.ndarray:
        return predict_tabular(model_dir, X)

    recorded_diff = _recorded_diff(predict(matrix), test_predictions, classes)
    what = f"P({classes[-1]!r})" if meta["n_classes"] == 2 else "one probability per class, in the order of 'classes'"
    inside = ["the trees of the rounds predict uses (to the best iteration)"] if meta["framework"] == "xgboost" else []
    inside += ["the logistic recalibration fitted on validation"] if meta.get("recalibration") else []
    then = f"none: {what}, as the version's predictor gives it" + (
        f"; in the graph: {', '.join(inside)}" if inside else ""
    )
    if meta["framework"] == "xgboost":
        graph, probes, made_with = xgboost_graph(model_dir, meta, matrix)
        return TabularExportable(
            graph, matrix, predict, then, "xgboost", feature_doc(plan, meta), probes, recorded_diff, made_with
        )
    if meta["framework"] == "logistic":
        return TabularExportable(
            logistic_graph(meta), matrix, predict, then, "numpy", feature_doc(plan, meta), matrix[:0], recorded_diff, {}
        )
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
        raise ExportRefused(
            f"{version.parent.name} {version.name}: the version's predictor on the test rows of the "
            f"split table differs from its {test_predictions.name} by up to {diff:.3g}: those rows are "
            "not the ones it was evaluated on; not exported"
        )
    return diff


def feature_doc(plan: dict, meta: dict) -> dict:
    """features.json: the input's columns in order and how a record becomes a row (the version's feature plan)."""
    reported = FeaturePlan.from_dict(plan).reported_names()
    columns = meta["feature_names"]
    how = (
        "One row per record, by the version's feature plan (`plan`; meddiag_pipelines.flat.models.model_inputs "
        "does it): a numeric column as a number (booleans 1.0 / 0.0), a missing value (or NaN) replaced by its "
        "training median (plan.medians); '<column>__missing' is 1.0 where that column is missing, else 0.0 "
        "(plan.indicators); '<column>=<level>' is 1.0 where the column's value as text equals the level, else "
        f"0.0, a missing value counting as '{MISSING}' and a value not among plan.categorical[column] as "
        f"'{OTHER}'. The plan imputes every value, so no NaN reaches the model."
    )
    return {
        "input": "features",
        "dtype": "float32",
        "shape": ["batch", len(columns)],
        "columns": [{"name": c, "reported": reported.get(c, c)} for c in columns],
        "how": how,
        "plan": plan,
    }


def _tabular_export_and_compare(exportable: TabularExportable, target: Path) -> dict:
    import onnx
    import onnxruntime

    onnx.save(exportable.graph, str(target))
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])

    def worst(matrix: np.ndarray) -> tuple[float, tuple]:
        return max_abs_diff(session, "probabilities", {"features": matrix}, exportable.predict(matrix), "the predictor")

    at_splits = worst(exportable.probes)[0] if len(exportable.probes) else 0.0
    if not at_splits <= TOLERANCE:
        raise ExportRefused(
            f"onnxruntime's probabilities differ from {exportable.reference}'s by up to "
            f"{at_splits:.3g} on rows set on the trees' split thresholds: a threshold or a missing "
            "value's branch moved in the export; not exported"
        )
    diff, shape = worst(exportable.matrix)
    return {
        "max_abs_diff": diff,
        "output_shape": ["batch", *shape],
        "split_probe_rows": len(exportable.probes),
        "max_abs_diff_at_split_thresholds": at_splits,
        "test_predictions_max_abs_diff": exportable.recorded_diff,
        "opset": onnx_opset(target),
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        **exportable.made_with,
    }


def xgboost_graph(model_dir: Path, meta: dict, matrix: np.ndarray) -> tuple[object, np.ndarray, dict[str, str]]:
    """The trees of the rounds ``predict`` uses as onnxmltools' TreeEnsembleClassifier, then (binary) the
    positive column and the recalibration; with the probe rows on the trees' split thresholds."""
    import onnxmltools
    import xgboost
    from onnx import TensorProto, helper, numpy_helper
    from onnxmltools.convert.common.data_types import FloatTensorType

    booster = load_booster(model_dir)
    booster = booster[: booster.best_iteration + 1]  # early stopping trained further than the rounds predict uses
    booster.feature_names = None  # the converter reads features as f0, f1, ...: the input's columns in order
    n_features = matrix.shape[1]
    trees = onnxmltools.convert_xgboost(
        booster, initial_types=[("features", FloatTensorType([None, n_features]))], target_opset=CONVERTER_OPSET
    )
    renamed = {o.name: f"tree_{o.name}" for o in trees.graph.output}  # its "label" output is left unused
    nodes = list(trees.graph.node)
    for node in nodes:
        node.input[:] = [renamed.get(n, n) for n in node.input]
        node.output[:] = [renamed.get(n, n) for n in node.output]
    ml_opset = next(o.version for o in trees.opset_import if o.domain == "ai.onnx.ml")
    inits = list(trees.graph.initializer)
    if meta["n_classes"] == 2:
        inits.append(numpy_helper.from_array(np.array(1, dtype=np.int64), "positive"))
        nodes += [
            helper.make_node("Gather", [renamed["probabilities"], "positive"], ["p_positive_float"], axis=1),
            helper.make_node("Cast", ["p_positive_float"], ["p_positive"], to=TensorProto.DOUBLE),
        ]
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
    splits = sorted(
        {
            (f, c)
            for t in trees
            for f, c, left in zip(t["split_indices"], t["split_conditions"], t["left_children"], strict=False)
            if left != -1
        }
    )
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

    weights = {
        "mean": meta["mean"],
        "scale": meta["scale"],
        "coef": np.asarray(meta["coef"]).T,
        "intercept": meta["intercept"],
    }
    inits = [numpy_helper.from_array(np.asarray(v, dtype=np.float64), k) for k, v in weights.items()]
    nodes = [
        helper.make_node("Cast", ["features"], ["x"], to=TensorProto.DOUBLE),
        helper.make_node("Sub", ["x", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "scale"], ["standardised"]),
        helper.make_node("MatMul", ["standardised", "coef"], ["weighted"]),
        helper.make_node("Add", ["weighted", "intercept"], ["scores"]),
    ]
    n_features = len(meta["mean"])
    if meta["n_classes"] == 2:
        inits.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat"))
        nodes += [
            helper.make_node("Reshape", ["scores", "flat"], ["score"]),
            helper.make_node("Sigmoid", ["score"], ["p_positive"]),
        ]
        tail, more = _binary_tail("p_positive", meta.get("recalibration"))
        return _tabular_model(nodes + tail, inits + more, n_features, ["batch"])
    nodes += [
        helper.make_node("Softmax", ["scores"], ["p_classes"], axis=1),
        helper.make_node("Cast", ["p_classes"], ["probabilities"], to=TensorProto.FLOAT),
    ]
    return _tabular_model(nodes, inits, n_features, ["batch", meta["n_classes"]])


def _binary_tail(p: str, recalibration: dict | None) -> tuple[list, list]:
    """P(positive) in float64 -> "probabilities" in float32, through the recalibration ``predict`` applies:
    sigmoid(a + b * logit(p clipped to [CLIP, 1 - CLIP])) (``logistic.apply_recalibration``)."""
    from onnx import TensorProto, helper, numpy_helper

    from meddiag_pipelines.probability import CLIP

    nodes, inits = [], []
    if recalibration:
        constants = {
            "clip_low": CLIP,
            "clip_high": 1.0 - CLIP,
            "one": 1.0,
            "recalibration_a": recalibration["a"],
            "recalibration_b": recalibration["b"],
        }
        inits = [numpy_helper.from_array(np.array(v, dtype=np.float64), k) for k, v in constants.items()]
        nodes = [
            helper.make_node("Clip", [p, "clip_low", "clip_high"], ["p_clipped"]),
            helper.make_node("Sub", ["one", "p_clipped"], ["p_rest"]),
            helper.make_node("Div", ["p_clipped", "p_rest"], ["odds"]),
            helper.make_node("Log", ["odds"], ["logit"]),
            helper.make_node("Mul", ["logit", "recalibration_b"], ["logit_scaled"]),
            helper.make_node("Add", ["logit_scaled", "recalibration_a"], ["logit_recalibrated"]),
            helper.make_node("Sigmoid", ["logit_recalibrated"], ["p_recalibrated"]),
        ]
        p = "p_recalibrated"
    return [*nodes, helper.make_node("Cast", [p], ["probabilities"], to=TensorProto.FLOAT)], inits


def _tabular_model(nodes: list, inits: list, n_features: int, output_shape: list, ml_opset: int | None = None):
    from onnx import TensorProto, checker, helper

    graph = helper.make_graph(
        nodes,
        "meddiag_tabular",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", n_features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, output_shape)],
        initializer=inits,
    )
    opsets = [helper.make_opsetid("", ONNX_OPSET), *([helper.make_opsetid("ai.onnx.ml", ml_opset)] if ml_opset else [])]
    model = helper.make_model(
        graph,
        opset_imports=opsets,
        producer_name="meddiag_pipelines",
        ir_version=helper.find_min_ir_version_for(opsets),
    )  # onnx's newest: unknown to onnxruntime
    checker.check_model(model, full_check=True)
    return model
