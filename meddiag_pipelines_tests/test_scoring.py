"""Scoring without Dagster: prediction frames, risk bands, and prediction files that are never overwritten."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from meddiag_pipelines.atomic import atomic_write_json
from meddiag_pipelines.registry.store import ModelRegistry
from meddiag_pipelines.scoring import prediction_frame, prediction_path, risk_bands, score_unlabelled
from meddiag_pipelines.specs import BATCH_COLUMN, TaskSpec
from meddiag_pipelines_tests.conftest import SYNTHETIC_SPEC

SPEC = TaskSpec.model_validate(SYNTHETIC_SPEC)
TASK = SPEC.name


def publish(registry: ModelRegistry, version: str, offset: float) -> None:
    """A version whose 'model' adds ``offset`` to x1 (the plan says so), promoted to champion."""
    atomic_write_json(registry.staging_dir(TASK, version) / "plan.json", {"offset": offset})
    registry.publish(
        TASK,
        version,
        {
            "model": {"classes": ["no", "yes"]},
            "operating_threshold": {"value": 0.5},
            "thresholds": [{"name": "target_sensitivity", "threshold": 0.2}],
        },
    )
    registry.set_champion(TASK, version, "test")


def predictor_factory(plan: dict):
    return lambda model_dir, rows: 1 / (1 + np.exp(-(rows["x1"].to_numpy() + plan["offset"])))


def unlabelled(batch: str, n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "rid": [f"{batch}-r{i}" for i in range(n)],
            "x1": np.linspace(-2, 2, n),
            "outcome": [None] * n,
            BATCH_COLUMN: [batch] * n,
        }
    )


def test_a_rescore_by_a_new_champion_adds_a_file_and_keeps_the_old(layout):
    registry = ModelRegistry(layout)
    rows = pl.concat([unlabelled("b1", 4), unlabelled("b2", 3)])
    publish(registry, "v1", 0.0)
    first = score_unlabelled(SPEC, layout, registry, rows, ["b1", "b2", "b3"], predictor_factory)
    assert (first.written, first.empty, first.scored_rows) == (["b1", "b2"], ["b3"], 7)
    old = prediction_path(layout, TASK, "b1", "v1").read_bytes()

    again = score_unlabelled(SPEC, layout, registry, rows, ["b1"], predictor_factory)
    assert again.written == [] and again.kept == ["b1"]  # this champion scored it already: left as it is

    publish(registry, "v2", 1.0)
    second = score_unlabelled(SPEC, layout, registry, rows, ["b1"], predictor_factory)
    assert second.written == ["b1"]
    files = sorted((layout.predictions(TASK) / "b1").iterdir())
    assert [f.name for f in files] == ["v1.parquet", "v2.parquet"]
    assert prediction_path(layout, TASK, "b1", "v1").read_bytes() == old
    for path, version in zip(files, ("v1", "v2"), strict=False):
        frame = pl.read_parquet(path)
        assert frame["model_version"].unique().to_list() == [version] and frame["batch"].unique().to_list() == ["b1"]
        meta = pl.read_parquet_metadata(path)
        assert (meta["model_version"], meta["batch"]) == (version, "b1")
        assert frame["id"].to_list() == [f"b1-r{i}" for i in range(4)]
    assert not pl.read_parquet(files[0])["probability"].equals(pl.read_parquet(files[1])["probability"])


def test_a_batch_name_must_be_one_folder_name(layout):
    assert prediction_path(layout, TASK, "lot n°7 d'été", "v1").parent.name == "lot n°7 d'été"
    for name in ("..", "a/../..", "/etc", "a\\b", ""):
        with pytest.raises(ValueError, match="single folder name"):
            prediction_path(layout, TASK, name, "v1")


def test_no_champion_scores_nothing(layout):
    registry = ModelRegistry(layout)
    summary = score_unlabelled(SPEC, layout, registry, unlabelled("b1", 2), ["b1"], predictor_factory)
    assert summary.version is None and summary.as_metadata()["champion"] == "none"
    assert not layout.predictions(TASK).exists()


def test_risk_bands_and_prediction_frames():
    manifest = {"operating_threshold": {"value": 0.6}, "thresholds": [{"name": "target_sensitivity", "threshold": 0.3}]}
    assert risk_bands(np.array([0.1, 0.3, 0.59, 0.6, 0.9]), manifest) == [
        "low",
        "intermediate",
        "intermediate",
        "high",
        "high",
    ]
    assert risk_bands(np.array([[0.2, 0.8]]), manifest) == [None]
    rows = pl.DataFrame({"rid": ["a", "b"], "outcome": ["no", "yes"]})
    binary = prediction_frame(SPEC, rows, np.array([0.2, 0.7]), ["no", "yes"])
    assert binary.columns == ["id", "label", "probability"]
    multi_spec = SPEC.model_copy(update={"positive": None, "classes": ["no", "yes", "maybe"]})
    multi = prediction_frame(multi_spec, rows, np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]]), ["no", "yes", "maybe"])
    assert multi.columns == ["id", "label", "p_no", "p_yes", "p_maybe", "predicted"]
    assert multi["predicted"].to_list() == ["maybe", "no"]
