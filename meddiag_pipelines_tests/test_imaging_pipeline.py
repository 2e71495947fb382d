"""The imaging modality wired into the spine: end to end in process on tiny tasks, the MedMNIST npz split, real
DICOM files through ingestion and validation, and each image check on the input it exists to catch."""

import json
import logging
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from meddiag_pipelines.defs.build import build_definitions
from meddiag_pipelines.imaging.modality import read_image_records
from meddiag_pipelines.imaging.readers import npz_record_id
from meddiag_pipelines.imaging.validation import duplicate_warnings, image_split, validate_images
from meddiag_pipelines.ingestion.landing import describe_batch
from meddiag_pipelines.ingestion.quarantine import file_reason
from meddiag_pipelines.specs import BUNDLED_TASKS_DIR, TaskSpec, load_spec
from meddiag_pipelines.split import SPLIT_COLUMN, unit_hash
from meddiag_pipelines.update import run_task_in_process
from meddiag_pipelines_tests.conftest import TASK_ASSETS
from scripts.phantoms import write_phantom_batch


def tiny(spec: TaskSpec, **training) -> TaskSpec:
    """A task that trains in seconds: the wiring is under test here, not the learning."""
    return spec.model_copy(
        update={
            "training": spec.training.model_copy(
                update={"epochs": 1, "batch_size": 32, "time_budget_s": 60, **training}
            ),
            "evaluation": spec.evaluation.model_copy(update={"n_bootstrap": 100}),
            "promotion": spec.promotion.model_copy(update={"auroc_floor": 0.0}),
        }
    )


def run_job(spec: TaskSpec, root: Path, instance, selection: list[str] | None = None):
    return run_task_in_process(build_definitions([spec], root), spec, instance, selection, raise_on_error=False)


def image_spec(name: str, fmt: str, **extra) -> TaskSpec:
    return TaskSpec.model_validate(
        {"name": name, "modality": "image", "label": "label", "id": "id", "image": {"format": fmt, "size": 28}, **extra}
    )


# ------------------------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_phantom_task_end_to_end(tmp_path: Path) -> None:
    spec = tiny(load_spec(BUNDLED_TASKS_DIR / "synthetic_chest_phantoms.yaml"))
    task, root = spec.name, tmp_path / "data"
    batch = write_phantom_batch(root / "landing" / task / "batch_0001", n=180, seed=7, size=28)
    labels = pl.read_csv(batch / "labels.csv")
    unlabelled = labels["id"].to_list()[:4]
    labels = labels.with_columns(
        pl.when(pl.col("id").is_in(unlabelled)).then(None).otherwise(pl.col("label")).alias("label")
    )
    (batch / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image" * 10)
    corrupt = {"file": "images/corrupt.png", "label": "normal", "id": "corrupt", "patient_id": "p_corrupt", "sex": "F"}
    pl.concat([labels, pl.DataFrame([corrupt])], how="vertical_relaxed").write_csv(batch / "labels.csv")
    (batch / "_READY").touch()

    with dg.instance_for_test() as instance:
        result = run_job(spec, root, instance)
        assert result.success
        # the corrupt file alone is quarantined, with its reason; the good ones flowed
        reason = file_reason(root / "quarantine" / task / "batch_0001", "images/corrupt.png")
        assert "corrupt" in json.loads(reason.read_text())["problem"]
        assert not (batch / "images" / "corrupt.png").exists() and (batch / labels["file"][0]).exists()

        latest = root / "reports" / task / "latest"
        metrics = json.loads((latest / "metrics.json").read_text())
        assert metrics["n_train"] + metrics["n_val"] + metrics["n_test"] == 180 - len(unlabelled)
        assert metrics["flow"]["quarantined_files"] == 1 and metrics["flow"]["unlabelled"] == len(unlabelled)
        assert 0.0 <= metrics["auroc"] <= 1.0 and metrics["baseline"]["name"] == "logistic_regression_pixels"
        html = (latest / "report.html").read_text()
        saliency = html[html.index("Saliency (Grad-CAM)") :]
        assert "True positives" in saliency and "False negatives" in saliency
        assert "data:image/png;base64," in saliency and "https://" not in html
        assert not any(i in html for i in labels["id"].to_list())  # no record ids in the report

        registry = root / "models" / task
        champion = json.loads((registry / "champion.json").read_text())["version"]
        model_dir = registry / champion / "model"
        assert (model_dir / "model.pt").exists() and not (model_dir / "checkpoint.pt").exists()
        assert json.loads((registry / champion / "manifest.json").read_text())["model"]["name"] == "resnet18_small"
        scored = pl.read_parquet(root / "predictions" / task / "batch_0001" / f"{champion}.parquet")
        assert sorted(scored["id"].to_list()) == sorted(unlabelled)
        assert scored["probability"].is_between(0, 1).all() and scored["model_version"].to_list() == [champion] * 4

        # features again: the cache of an unchanged batch is reused, not rebuilt
        again = run_job(spec, root, instance, ["features", "feature_plan"])
        assert again.success
        meta = next(
            m for m in again.asset_materializations_for_node(f"{task}__features") if m.asset_key.path[-1] == "features"
        ).metadata
        assert meta["batches_reused"].value == 1 and meta["batches_built"].value == 0


@pytest.mark.slow
def test_a_training_the_time_budget_cut_says_so(tmp_path: Path) -> None:
    """The budget is a safety cap: a run it cuts is not passed off as the spec's training."""
    spec = tiny(load_spec(BUNDLED_TASKS_DIR / "synthetic_chest_phantoms.yaml"), epochs=5, time_budget_s=1e-3)
    task, root = spec.name, tmp_path / "data"
    write_phantom_batch(root / "landing" / task / "batch_0001", n=120, seed=7, size=28)
    (root / "landing" / task / "batch_0001" / "_READY").touch()
    with dg.instance_for_test() as instance:
        result = run_job(
            spec,
            root,
            instance,
            ["raw_records", "validated_records", "split", "features", "feature_plan", "candidate_model"],
        )
        assert result.success
        meta = next(m for m in result.asset_materializations_for_node(f"{task}__candidate_model")).metadata
        assert meta["stopped"].value == "time_budget"
        warnings = [e.message for e in instance.all_logs(result.run_id) if e.level == logging.WARNING and e.message]
        assert any("time budget of 0.001 s stopped training after 1 of 5 epochs" in m for m in warnings), warnings


def write_npz(path: Path, n: dict[str, int], seed: int, labelled: bool = True) -> dict:
    """MedMNIST layout, three classes whose mean brightness differs (so images are distinct and not constant)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, m in n.items():
        y = np.arange(m) % 3
        base = 40 + 60 * y[:, None, None]
        arrays[f"{split}_images"] = np.clip(base + rng.integers(0, 80, (m, 28, 28)), 0, 255).astype(np.uint8)
        if labelled:
            arrays[f"{split}_labels"] = y[:, None].astype(np.uint8)
    np.savez_compressed(path, **arrays)
    return arrays


@pytest.mark.slow
def test_npz_task_keeps_its_own_split_multiclass(tmp_path: Path) -> None:
    spec = tiny(image_spec("tiny_organ_npz", "npz", classes=["0", "1", "2"]))
    root = tmp_path / "data"
    batch = root / "landing" / spec.name / "batch_0001"
    batch.mkdir(parents=True)
    write_npz(batch / "organmnist.npz", {"train": 60, "val": 15, "test": 24}, seed=1)
    write_npz(batch / "new_cases.npz", {"test": 3}, seed=2, labelled=False)  # images to score, no labels
    (batch / "_READY").touch()
    with dg.instance_for_test() as instance:
        assert run_job(spec, root, instance).success
    latest = root / "reports" / spec.name / "latest"
    metrics = json.loads((latest / "metrics.json").read_text())
    assert (metrics["kind"], metrics["n_train"], metrics["n_val"], metrics["n_test"]) == ("multiclass", 60, 15, 24)
    test_ids = pl.read_parquet(latest / "test_predictions.parquet")["id"].to_list()
    assert sorted(test_ids) == sorted(
        npz_record_id("batch_0001", "organmnist.npz", "test", i) for i in range(24)
    )  # the file's split
    champion = json.loads((root / "models" / spec.name / "champion.json").read_text())["version"]
    scored = pl.read_parquet(root / "predictions" / spec.name / "batch_0001" / f"{champion}.parquet")
    assert sorted(scored["id"].to_list()) == sorted(
        npz_record_id("batch_0001", "new_cases.npz", "test", i) for i in range(3)
    )
    assert {"p_0", "p_1", "p_2", "predicted"} <= set(scored.columns)
    np.testing.assert_allclose(scored.select("p_0", "p_1", "p_2").to_numpy().sum(axis=1), 1.0, atol=1e-5)
    assert "Misclassified" in (latest / "report.html").read_text()


FINDINGS = ["atelectasis", "effusion", "nodule"]


def write_multilabel_npz(path: Path, n: dict[str, int], seed: int, labelled: bool = True) -> None:
    """MedMNIST (ChestMNIST) layout: (N, 3) 0/1 labels; finding j brightens its own quadrant of a noisy image."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, m in n.items():
        y = (rng.random((m, len(FINDINGS))) < 0.4).astype(np.uint8)
        y[: len(FINDINGS)] = np.eye(len(FINDINGS), dtype=np.uint8)  # every finding present in every split
        images = rng.integers(20, 100, (m, 28, 28)).astype(np.int64)
        for j, (r, c) in enumerate([(0, 0), (0, 14), (14, 0)]):
            images[:, r : r + 14, c : c + 14] += 120 * y[:, j, None, None]
        arrays[f"{split}_images"] = np.clip(images, 0, 255).astype(np.uint8)
        if labelled:
            arrays[f"{split}_labels"] = y
    np.savez_compressed(path, **arrays)


@pytest.mark.slow
def test_npz_multilabel_task_end_to_end(tmp_path: Path) -> None:
    spec = tiny(
        TaskSpec.model_validate(
            {
                "name": "tiny_chest_multilabel",
                "modality": "image",
                "label": "label",
                "id": "id",
                "classes": FINDINGS,
                "image": {"format": "npz", "size": 28, "multi_label": True},
            }
        ),
        epochs=2,
    )
    root = tmp_path / "data"
    batch = root / "landing" / spec.name / "batch_0001"
    batch.mkdir(parents=True)
    write_multilabel_npz(batch / "chestmnist.npz", {"train": 180, "val": 45, "test": 60}, seed=11)
    write_multilabel_npz(batch / "new_cases.npz", {"test": 3}, seed=12, labelled=False)
    (batch / "_READY").touch()
    with dg.instance_for_test() as instance:
        assert run_job(spec, root, instance).success
        # a second candidate (another seed: unchanged data and settings would publish nothing) meets the
        # champion: the gate compares macro AUROC, no calibration-slope rule
        reseeded = spec.model_copy(update={"training": spec.training.model_copy(update={"seed": 7})})
        assert run_job(
            reseeded, root, instance, ["candidate_model", "baseline_model", "evaluation", "champion"]
        ).success
    registry = root / "models" / spec.name
    versions = sorted(d.name for d in registry.iterdir() if d.is_dir() and not d.name.startswith("."))
    assert len(versions) == 2
    reasons = json.loads((registry / versions[-1] / "manifest.json").read_text())["decision"]["reasons"]
    assert any("AUROC difference vs champion" in r for r in reasons) and not any("slope" in r for r in reasons)
    latest = root / "reports" / spec.name / "latest"
    metrics = json.loads((latest / "metrics.json").read_text())
    assert (metrics["kind"], metrics["n_train"], metrics["n_val"], metrics["n_test"]) == ("multilabel", 180, 45, 60)
    assert [r["label"] for r in metrics["per_label"]] == FINDINGS and "calibration_slope" not in metrics
    assert 0.0 <= metrics["auroc"] <= 1.0 and metrics["baseline"]["name"] == "logistic_regression_pixels"
    html = (latest / "report.html").read_text()
    assert "True positives: effusion" in html and "could not be computed" not in html
    test = pl.read_parquet(latest / "test_predictions.parquet")
    assert test.columns == ["id", "label", *[f"p_{f}" for f in FINDINGS]] and test.height == 60
    champion = json.loads((registry / "champion.json").read_text())["version"]
    assert json.loads((registry / champion / "manifest.json").read_text())["model"]["classes"] == FINDINGS
    scored = pl.read_parquet(root / "predictions" / spec.name / "batch_0001" / f"{champion}.parquet")
    assert sorted(scored["id"].to_list()) == sorted(
        npz_record_id("batch_0001", "new_cases.npz", "test", i) for i in range(3)
    )
    probs = scored.select(f"p_{f}" for f in FINDINGS).to_numpy()
    assert ((probs >= 0) & (probs <= 1)).all() and "predicted" not in scored.columns
    assert scored["risk_band"].null_count() == 3
    assert scored["model_version"].to_list() == [versions[0]] * 3  # scored by the champion of the first run


@pytest.mark.slow
def test_real_dicom_files_through_ingestion_and_validation(tmp_path: Path) -> None:
    spec = image_spec("dicom_demo", "dicom", classes=["no", "yes"], positive="yes")
    root = tmp_path / "data"
    batch = root / "landing" / spec.name / "batch_0001"
    batch.mkdir(parents=True)
    files = {
        "ct.dcm": "CT_small.dcm",
        "mr.dcm": "MR_small.dcm",
        "multi.dcm": "emri_small.dcm",
        "cr.dcm": "RG1_UNCR.dcm",
    }
    for dst, src in files.items():
        shutil.copy(get_testdata_file(src), batch / dst)
    (batch / "truncated.dcm").write_bytes((batch / "ct.dcm").read_bytes()[:3000])
    rows = [
        {"file": f, "label": ["yes", "no"][i % 2], "id": f"case{i}"} for i, f in enumerate([*files, "truncated.dcm"])
    ]
    pl.DataFrame(rows).write_csv(batch / "labels.csv")  # made-up labels
    (batch / "_READY").touch()
    with dg.instance_for_test() as instance:
        result = run_job(spec, root, instance, ["raw_records", "validated_records"])
        assert result.success
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        assert checks["validated_records_suite"] is True
        records = next(m for m in result.asset_materializations_for_node(f"{spec.name}__validated_records"))
        assert records.metadata["dagster/row_count"].value == 4
    assert file_reason(root / "quarantine" / spec.name / "batch_0001", "truncated.dcm").exists()
    from meddiag_pipelines.ingestion.warehouse import Warehouse
    from meddiag_pipelines.storage import DataRoot

    ledger = Warehouse(DataRoot(root)).ledger(spec.name)
    assert ledger["status"].to_list() == ["validated"]
    raw = Warehouse(DataRoot(root)).read(spec.name, "raw_records")
    by_id = {r["id"]: r for r in raw.iter_rows(named=True)}
    assert (by_id["case0"]["height"], by_id["case0"]["bit_depth"]) == (128, 16)
    assert by_id["case2"]["source"] == "multi.dcm#5" and by_id["case2"]["bit_depth"] == 12
    assert all(r["intensity_max"] > r["intensity_min"] for r in by_id.values())


# ------------------------------------------------------------------------------------------------ image checks


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def _folder_batch(
    tmp_path: Path,
    images: dict[str, np.ndarray],
    labels: dict[str, str] | None = None,
    patients: dict[str, str] | None = None,
) -> Path:
    batch = tmp_path / "landing" / "checks" / "b1"
    rng = np.random.default_rng(0)
    rows = []
    for i, name in enumerate(["ok1", "ok2", "ok3", *images]):
        array = images.get(name, rng.integers(0, 256, (32, 32), dtype=np.uint8))
        _png(batch / f"{name}.png", array)
        rows.append(
            {
                "file": f"{name}.png",
                "label": (labels or {}).get(name, ["normal", "finding"][i % 2]),
                "id": name,
                "patient_id": (patients or {}).get(name, f"p_{name}"),
            }
        )
    pl.DataFrame(rows).write_csv(batch / "labels.csv")
    return batch


CHECK_SPEC = image_spec("checks", "folder", classes=["normal", "finding"], positive="finding", patient_id="patient_id")


def _failures(batch: Path, spec: TaskSpec = CHECK_SPEC) -> dict[str, str]:
    outcome = read_image_records(describe_batch(spec.name, batch), spec)
    assert outcome.rejected == []
    return {f.expectation: f.problem for f in validate_images(outcome.records, spec, set())}


def test_good_images_pass_every_check(tmp_path: Path) -> None:
    assert _failures(_folder_batch(tmp_path, {})) == {}


def test_constant_image_fails(tmp_path: Path) -> None:
    failures = _failures(_folder_batch(tmp_path, {"blank": np.full((32, 32), 17, np.uint8)}))
    assert set(failures) == {"image_constant"} and failures["image_constant"].startswith("1 images")


def test_wrong_size_channels_and_bit_depth_fail(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = {
        "small": rng.integers(0, 256, (16, 40), dtype=np.uint8),
        "colour": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
    }
    batch = _folder_batch(tmp_path, images)
    _png(batch / "mask.png", rng.integers(0, 2, (32, 32)).astype(bool), mode=None)  # a 1-bit image
    labels = pl.read_csv(batch / "labels.csv")
    pl.concat(
        [labels, pl.DataFrame([{"file": "mask.png", "label": "normal", "id": "mask", "patient_id": "p_m"}])]
    ).write_csv(batch / "labels.csv")
    failures = _failures(batch)
    assert set(failures) == {"image_size", "image_channels", "image_bit_depth"}
    assert "smaller than the spec's 28 px" in failures["image_size"]
    assert failures["image_channels"].startswith("1 images") and failures["image_bit_depth"].startswith("1 images")


def test_label_outside_the_domain_fails(tmp_path: Path) -> None:
    failures = _failures(
        _folder_batch(tmp_path, {"x": np.arange(1024, dtype=np.uint8).reshape(32, 32)}, {"x": "maybe"})
    )
    assert set(failures) == {"expect_column_values_to_be_in_set"}


def _patients_in_two_splits(spec: TaskSpec) -> tuple[str, str]:
    def split_of(p: str) -> str:
        u = unit_hash(p, spec.split.salt)
        return "train" if u < spec.split.train else "val" if u < spec.split.train + spec.split.val else "test"

    first = "p_a"
    other = next(f"p_{i}" for i in range(1000) if split_of(f"p_{i}") != split_of(first))
    return first, other


def test_a_duplicate_image_of_two_patients_shares_their_split_so_cannot_leak(tmp_path: Path) -> None:
    same = np.random.default_rng(5).integers(0, 256, (32, 32), dtype=np.uint8)
    a, b = _patients_in_two_splits(CHECK_SPEC)  # the patients' own hashes put them in different splits
    batch = _folder_batch(tmp_path, {"d1": same, "d2": same}, {"d1": "normal", "d2": "normal"}, {"d1": a, "d2": b})
    assert _failures(batch) == {}
    records = read_image_records(describe_batch("checks", batch), CHECK_SPEC).records
    split = image_split(records, CHECK_SPEC).filter(pl.col("id").is_in(["d1", "d2"]))
    assert split[SPLIT_COLUMN].n_unique() == 1


def test_duplicates_within_a_split_warn_unless_labels_conflict(tmp_path: Path) -> None:
    same = np.random.default_rng(6).integers(0, 256, (32, 32), dtype=np.uint8)
    batch = _folder_batch(
        tmp_path, {"d1": same, "d2": same}, {"d1": "normal", "d2": "normal"}, {"d1": "p_x", "d2": "p_x"}
    )
    assert _failures(batch) == {}
    records = read_image_records(describe_batch("checks", batch), CHECK_SPEC).records
    assert [w.expectation for w in duplicate_warnings(records, CHECK_SPEC)] == ["duplicate_images_within_split"]
    conflicting = records.with_columns(
        pl.when(pl.col("id") == "d2").then(pl.lit("finding")).otherwise(pl.col("label")).alias("label")
    )
    assert [f.expectation for f in validate_images(conflicting, CHECK_SPEC)] == ["duplicate_images_conflicting_labels"]


def test_leakage_against_an_earlier_batch_and_npz_split(tmp_path: Path) -> None:
    spec = image_spec("npzcheck", "npz", classes=["0", "1", "2"])
    batch = tmp_path / "landing" / spec.name / "b1"
    batch.mkdir(parents=True)
    arrays = write_npz(batch / "a.npz", {"train": 6, "val": 3, "test": 3}, seed=3)
    records = read_image_records(describe_batch(spec.name, batch), spec).records
    assert validate_images(records, spec, set()) == []
    assert image_split(records, spec)[SPLIT_COLUMN].to_list() == records["predefined_split"].to_list()
    # a later export whose test images repeat training images of the first
    later = tmp_path / "landing" / spec.name / "b2"
    later.mkdir(parents=True)
    np.savez_compressed(later / "b.npz", test_images=arrays["train_images"][:2], test_labels=arrays["train_labels"][:2])
    new = read_image_records(describe_batch(spec.name, later), spec).records
    assert validate_images(new, spec, set()) == []  # on its own the batch is fine
    failures = validate_images(new, spec, set(records["id"].to_list()), earlier=records)
    assert [f.expectation for f in failures] == ["duplicate_images_across_splits"]
    assert "earlier batch" in failures[0].problem


def test_bundled_phantom_task_is_pinned() -> None:
    """The bundled image task has the spine's asset keys, its checks, real lineage, and every step in its pool."""
    spec = load_spec(BUNDLED_TASKS_DIR / "synthetic_chest_phantoms.yaml")
    assert spec.modality == "image" and "SYNTHETIC" in spec.description
    defs = build_definitions([spec], Path("/nonexistent"))
    graph = defs.resolve_asset_graph()
    task = spec.name
    for asset in TASK_ASSETS:
        node = graph.get(dg.AssetKey([task, asset]))
        assert node.group_name == task and node.description and node.kinds and node.owners
        assert defs.resolve_assets_def(dg.AssetKey([task, asset])).op.pool == f"meddiag_{task}", asset
    checks = {(k.asset_key.path[-1], k.name) for k in graph.asset_check_keys}
    assert {("validated_records", "validated_records_suite"), ("champion", "champion_fit_for_use")} <= checks
    assert {p.path[-1] for p in graph.get(dg.AssetKey([task, "candidate_model"])).parent_keys} == {
        "features",
        "feature_plan",
    }
    assert {p.path[-1] for p in graph.get(dg.AssetKey([task, "features"])).parent_keys} == {"split"}
    landing = Path(__file__).resolve().parent.parent / "data" / "landing" / task / "batch_0001"
    assert (landing / "_READY").exists() and pl.read_csv(landing / "labels.csv").height >= 1000
