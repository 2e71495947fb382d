"""A modality is a plug-in: one class implementing ``modalities.base.Modality``, registered, gives a task the
whole asset graph (ingestion, checks, split, features, models, evaluation, champion, predictions) with no edit
in ``defs/``. The toy modality below lives in this file only: numeric columns of a CSV, a nearest-class-mean
model, and a one-column nearest-mean baseline."""

import json
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from meddiag_pipelines import labels
from meddiag_pipelines.atomic import atomic_write_json
from meddiag_pipelines.defs.build import build_definitions
from meddiag_pipelines.modalities import registry
from meddiag_pipelines.modalities.base import (
    BuiltFeatures,
    Descriptions,
    Modality,
    PlainReader,
    Table,
    TrainedModel,
    TrainingRun,
)
from meddiag_pipelines.specs import MODALITIES, SpecError, TaskSpec, load_spec
from meddiag_pipelines.split import SPLIT_COLUMN, key_columns_in
from meddiag_pipelines.tabular.readers import read_tabular_batch
from meddiag_pipelines.update import run_task_in_process
from meddiag_pipelines.validation.suites import validate_tabular
from meddiag_pipelines_tests.conftest import SYNTHETIC_SPEC, TASK_ASSETS, fast, land, synthetic_records

TOY = "toy_nearest_mean"


def fit_means(rows: pl.DataFrame, plan: dict, classes: list[str], spec: TaskSpec, out: Path) -> dict:
    """One mean per class over the plan's columns, saved as JSON (a safe format)."""
    X, y = inputs(rows, plan), labels.encode_labels(rows[spec.label], classes)
    means = [X[y == k].mean(axis=0).tolist() for k in range(len(classes))]
    atomic_write_json(out / "means.json", {"columns": plan["columns"], "means": means})
    return {
        "framework": "numpy",
        "params": {"columns": plan["columns"]},
        "val_score": None,
        "classes": classes,
        "device": "cpu",
    }


def inputs(rows: pl.DataFrame, plan: dict) -> np.ndarray:
    return rows.select(pl.col(c).cast(pl.Float64).fill_null(plan["fill"][c]) for c in plan["columns"]).to_numpy()


def predict_means(model_dir: Path, rows: pl.DataFrame, plan: dict) -> np.ndarray:
    """The positive class's probability: a softmax over minus half the squared distances to the class means."""
    model = json.loads((Path(model_dir) / "means.json").read_text())
    X = inputs(rows, {**plan, "columns": model["columns"]})
    distance = ((X[:, None, :] - np.asarray(model["means"])[None]) ** 2).sum(axis=2) / 2
    return 1 / (1 + np.exp(distance[:, 1] - distance[:, 0]))


class NearestMeanModality(Modality):
    name = TOY
    candidate_kinds = frozenset({"numpy"})
    baseline_kinds = frozenset({"numpy"})

    def descriptions(self, spec: TaskSpec) -> Descriptions:
        return Descriptions(
            "landed CSV batches.",
            "rows that passed the spec's suite.",
            "The spec's suite.",
            "the numeric columns, nulls filled.",
            "the columns and their fill values.",
            "nearest class mean over every numeric column.",
            "nearest class mean over one column.",
        )

    def reader(self, spec: TaskSpec) -> PlainReader:
        return PlainReader(read_tabular_batch)

    def validator(self, spec: TaskSpec, storage):
        return validate_tabular

    def suite(self, spec: TaskSpec, records: pl.DataFrame) -> list:
        return validate_tabular(records, spec)

    def features(self, spec: TaskSpec, split: pl.DataFrame, storage) -> BuiltFeatures:
        train = split.filter(pl.col(SPLIT_COLUMN) == "train")
        plan = {"columns": spec.numeric, "fill": {c: float(train[c].mean()) for c in spec.numeric}}
        frame = split.select(*key_columns_in(split, spec), *spec.numeric)
        fills = Table([{"column": c, "fill": v} for c, v in plan["fill"].items()])
        return BuiltFeatures(frame, plan, {"n_rows": frame.height, "fills": fills}, {"columns": spec.numeric})

    def train_candidate(self, spec: TaskSpec, features: pl.DataFrame, plan: dict, run: TrainingRun) -> TrainedModel:
        return self._fit(spec, features, plan, run, "nearest_mean")

    def train_baseline(self, spec: TaskSpec, features: pl.DataFrame, plan: dict, run: TrainingRun) -> TrainedModel:
        return self._fit(spec, features, {**plan, "columns": plan["columns"][:1]}, run, "nearest_mean_one_column")

    def _fit(self, spec: TaskSpec, features: pl.DataFrame, plan: dict, run: TrainingRun, name: str) -> TrainedModel:
        classes = labels.class_list(spec, features)
        meta = fit_means(features.filter(pl.col(SPLIT_COLUMN) == "train"), plan, classes, spec, run.out_dir)
        return TrainedModel(run.out_dir, {**meta, "name": name}, plan, {"n_columns": len(plan["columns"])})

    def predictor_factory(self, spec: TaskSpec):
        return lambda plan: lambda model_dir, rows: predict_means(model_dir, rows, plan)


TOY_MODALITY = registry.register(NearestMeanModality())
TOY_SPEC = {
    **SYNTHETIC_SPEC,
    "name": "toy_task",
    "modality": TOY,
    "numeric": ["x1", "x2"],
    "promotion": {"auroc_floor": 0.6, "slope_band": [0.1, 10.0]},
}


def test_a_registered_modality_is_a_spec_value_and_resolves_to_its_implementation(tmp_path):
    assert registry.get(TOY) is TOY_MODALITY and TOY in MODALITIES
    spec = tmp_path / "toy.yaml"
    spec.write_text(f"name: toy_task\nmodality: {TOY}\nlabel: y\nid: rid\n")
    assert load_spec(spec).modality == TOY
    spec.write_text("name: toy_task\nmodality: toy_unregistered\nlabel: y\nid: rid\n")
    with pytest.raises(SpecError, match="key 'modality': .*registered modality"):
        load_spec(spec)
    with pytest.raises(ValueError, match="'toy_nearest_mean' is already registered"):
        registry.register(NearestMeanModality())
    with pytest.raises(ValueError, match="'tabular' is already registered"):
        registry.register(type("Tabular", (NearestMeanModality,), {"name": "tabular"})())


def test_every_bundled_modality_a_spec_may_name_is_in_the_registry():
    assert {registry.get(name).name for name in registry.BUNDLED} == set(registry.BUNDLED) <= MODALITIES


def test_a_registered_modality_gets_the_whole_task_graph(layout):
    defs = build_definitions([TaskSpec.model_validate(TOY_SPEC)], layout.local)
    graph = defs.resolve_asset_graph()
    names = {k.path[-1] for k in graph.get_all_asset_keys() if k.path[0] == "toy_task"}
    assert names == set(TASK_ASSETS)
    assert graph.get(dg.AssetKey(["toy_task", "baseline_model"])).parent_keys == {
        dg.AssetKey(["toy_task", "features"]),
        dg.AssetKey(["toy_task", "feature_plan"]),
    }
    assert graph.get(dg.AssetKey(["toy_task", "candidate_model"])).kinds == {"numpy"}
    checks = {(k.asset_key.path[-1], k.name) for k in graph.asset_check_keys}
    assert checks == {
        ("validated_records", "validated_records_suite"),
        ("champion", "champion_fit_for_use"),
        ("predictions", "batch_schema"),
        ("predictions", "batch_drift"),
        ("predictions", "realised_performance"),
    }
    assert defs.resolve_job_def("toy_task_batches_job").name == "toy_task_batches_job"


@pytest.mark.slow
def test_a_registered_modality_runs_end_to_end(layout):
    """Landed CSV -> champion -> scored predictions, through the same update path as the bundled tasks."""
    spec = fast(TaskSpec.model_validate(TOY_SPEC))
    records = synthetic_records(400, seed=5).with_columns(
        pl.when(pl.col("rid").is_in(["r0", "r1", "r2"])).then(None).otherwise(pl.col("outcome")).alias("outcome")
    )
    land(layout, spec.name, "batch_0001", records)
    with dg.instance_for_test() as instance:
        result = run_task_in_process(build_definitions([spec], layout.local), spec, instance, raise_on_error=False)
    assert result.success
    features = result.asset_materializations_for_node("toy_task__features")
    assert "| x1 |" in features[0].metadata["fills"].value  # a Table became a Markdown table

    metrics = json.loads((layout.reports(spec.name) / "latest" / "metrics.json").read_text())
    assert metrics["model_name"] == "nearest_mean" and metrics["auroc"] > 0.8
    assert metrics["baseline"]["name"] == "nearest_mean_one_column" and metrics["baseline"]["auroc"] > 0.6
    champion = json.loads((layout.local / "models" / spec.name / "champion.json").read_text())["version"]
    scored = pl.read_parquet(layout.predictions(spec.name) / "batch_0001" / f"{champion}.parquet")
    assert sorted(scored["id"].to_list()) == ["r0", "r1", "r2"] and scored["model_version"].unique().to_list() == [
        champion
    ]
    assert scored["probability"].is_between(0, 1).all()
