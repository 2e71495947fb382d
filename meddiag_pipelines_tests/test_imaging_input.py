"""Image input as it really lands and as an attacker lands it: confined labels.csv paths, decoded-size limits,
pixels validated = pixels cached, format detection, a dataset's own split, plain reasons."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import polars as pl
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

from meddiag_pipelines.imaging.modality import read_image_records
from meddiag_pipelines.imaging.preprocess import load_cached, resize_square, to_uint8, update_cache
from meddiag_pipelines.imaging.readers import ImageBatchError, load_pixels, npz_record_id, read_image_batch
from meddiag_pipelines.imaging.validation import (
    COPY_OF_TRAIN_COLUMN,
    duplicate_warnings,
    image_split,
    mark_copies_of_train,
    mark_official_copies,
    multilabel_domain_failures,
    split_copy_counts,
    validate_images,
)
from meddiag_pipelines.ingestion.batches import ingest_new_batches, validate_pending_batches
from meddiag_pipelines.ingestion.landing import describe_batch
from meddiag_pipelines.ingestion.quarantine import file_reason
from meddiag_pipelines.ingestion.warehouse import Warehouse
from meddiag_pipelines.specs import TaskSpec
from meddiag_pipelines.storage import DataRoot
from meddiag_pipelines_tests.test_imaging_readers import raw_pickle_npz

CANARY = "CANARY_Jane_Roe_5551234"


def spec_of(fmt: str | None = "folder", landing: dict | None = None, task: dict | None = None, **image) -> TaskSpec:
    image_section = {"size": 28, **image} | ({"format": fmt} if fmt else {})
    return TaskSpec.model_validate(
        {
            "name": "imgin",
            "modality": "image",
            "label": "label",
            "id": "id",
            "patient_id": "patient_id",
            "image": image_section,
            **({"landing": landing} if landing else {}),
            **(task or {}),
        }
    )


def png(path: Path, seed: int, side: int = 32) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (side, side), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def labels_csv(batch: Path, rows: list[tuple[str, str, str]]) -> None:
    lines = ["file,label,id,patient_id", *(f"{f},{lab},{i},p_{i}" for f, lab, i in rows)]
    (batch / "labels.csv").write_text("\n".join(lines) + "\n")


def folder_batch(batch: Path, n: int = 4, side: int = 32) -> Path:
    for i in range(n):
        png(batch / f"img{i}.png", seed=i, side=side)
    labels_csv(batch, [(f"img{i}.png", str(i % 2), f"c{i}") for i in range(n)])
    return batch


def npz(path: Path, n: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, m in n.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (m, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(m) % 2)[:, None].astype(np.uint8)
    return arrays


def dicom(path: Path, rows: int, cols: int, deflated: bool = False, pixel_bytes: bytes | None = None) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian if deflated else ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID = CANARY, CANARY
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixel_bytes if pixel_bytes is not None else np.arange(rows * cols, dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


# ------------------------------------------------------------------------------------------------ §1/§4 paths


def test_fifo_labels_csv_is_never_opened_and_the_good_batch_beside_it_flows(tmp_path: Path) -> None:
    layout, spec = DataRoot(tmp_path / "data"), spec_of()
    hostile = layout.landing(spec.name) / "b1"
    hostile.mkdir(parents=True)
    png(hostile / "a.png", 0)
    os.mkfifo(hostile / "labels.csv")  # opening it would block for ever
    good = folder_batch(layout.landing(spec.name) / "b2")
    for b in (hostile, good):
        (b / "_READY").touch()
    with pytest.raises(ImageBatchError, match="labels.csv: not a regular file"):
        read_image_batch(hostile, spec)
    ingest_new_batches(spec, layout, Warehouse(layout), read_image_records)
    # Ingestion sets the FIFO aside (quarantine/<task>/b1/files/labels.csv) before any reader runs.
    reason = json.loads(file_reason(layout.quarantine(spec.name) / "b1", "labels.csv").read_text())
    assert reason["file"] == "labels.csv" and "not a regular file" in reason["problem"]
    assert Warehouse(layout).read(spec.name, "raw_records", ["b2"]).height == 4


def test_dot_slash_and_subfolder_rows_read_and_row_problems_never_echo_the_row(tmp_path: Path) -> None:
    batch = tmp_path / "b"
    png(batch / "a.png", 0)
    png(batch / "sub" / "b.png", 1)
    png(batch / "c.png", 2)
    lines = [
        "file,label,id,patient_id",
        "./a.png,1,a,p_a",
        "sub/b.png,0,b,p_b",
        f",1,{CANARY},p_{CANARY}",
        "c.png,1.0,c,p_c",
        f"c.png,0,c,{CANARY}",
    ]
    (batch / "labels.csv").write_text("\n".join(lines) + "\n")
    result = read_image_batch(batch, spec_of())
    assert sorted(result.records["source"].to_list()) == ["a.png", "c.png", "sub/b.png"]
    assert result.records.filter(pl.col("id") == "c")["label"].item() == "1"  # canonical_label: 1.0 -> "1"
    problems = dict(result.rejected)
    assert problems == {
        "labels.csv row 3": "empty 'file' column",
        "c.png": "duplicate id in labels.csv (only the first row is used)",
    }
    assert CANARY not in repr(result.rejected)


def test_labels_csv_without_a_header_row_is_refused_without_quoting_its_first_row(tmp_path: Path) -> None:
    """Issue 24: the first row of a header-less labels.csv (a row of data) was echoed as its column names."""
    batch = folder_batch(tmp_path / "b")
    rows = (
        pl.read_csv(batch / "labels.csv")
        .with_columns(pl.lit(CANARY).alias("patient_id"))
        .write_csv(include_header=False)
    )
    (batch / "labels.csv").write_text(rows)
    with pytest.raises(ImageBatchError, match="labels.csv has no header row with the columns file, label") as err:
        read_image_batch(batch, spec_of())
    assert CANARY not in str(err.value) and "img0.png" not in str(err.value)


def test_labels_csv_repeating_a_column_name_is_refused_by_position(tmp_path: Path) -> None:
    """Issue 24: Polars renamed the second ``label`` column and the first was used silently."""
    batch = folder_batch(tmp_path / "b")
    lines = (batch / "labels.csv").read_text().splitlines()
    (batch / "labels.csv").write_text(
        "\n".join([lines[0] + ",label", *(f"{row},{CANARY}" for row in lines[1:])]) + "\n"
    )
    with pytest.raises(ImageBatchError, match="labels.csv: column 5 repeats the name of column 2") as err:
        read_image_batch(batch, spec_of())
    assert CANARY not in str(err.value)


def test_labels_csv_with_cr_only_line_endings_reads_every_row(tmp_path: Path) -> None:
    """Issue 24: a labels.csv ending its lines with CR alone was one header line to Polars."""
    batch = folder_batch(tmp_path / "b")
    expected = read_image_batch(batch, spec_of()).records.height
    (batch / "labels.csv").write_text((batch / "labels.csv").read_text().replace("\n", "\r"))
    assert read_image_batch(batch, spec_of()).records.height == expected == 4


def test_labels_csv_with_a_reserved_column_is_refused(tmp_path: Path) -> None:
    batch = folder_batch(tmp_path / "b")
    df = pl.read_csv(batch / "labels.csv").with_columns(pl.lit("x").alias("_meddiag_split"))
    df.write_csv(batch / "labels.csv")
    with pytest.raises(ImageBatchError, match="reserved prefix"):
        read_image_batch(batch, spec_of())


def test_batch_folder_with_a_space_is_cached(tmp_path: Path) -> None:
    spec = spec_of()
    batch = folder_batch(tmp_path / "landing" / "batch 0001 (export)")
    records = read_image_batch(batch, spec).records
    manifest = update_cache(tmp_path / "cache", batch, batch.name, records, spec)
    assert manifest["n"] == 4 and manifest["failed"] == []
    assert load_cached(tmp_path / "cache", records["id"].to_list()).shape == (4, 1, 28, 28)


# ------------------------------------------------------------------------------------------------ §6 size limits


def test_decoded_size_limits_per_file_and_per_batch(tmp_path: Path) -> None:
    batch = tmp_path / "b"
    png(batch / "big.png", 0, side=64)  # 4096 bytes decoded
    for i in range(6):
        png(batch / f"s{i}.png", i + 1, side=32)  # 1024 bytes each
    labels_csv(batch, [("big.png", "1", "big"), *((f"s{i}.png", "0", f"s{i}") for i in range(6))])
    result = read_image_batch(
        batch, spec_of(max_decoded_mb_per_file=3000 / 2**20, max_decoded_mb_per_batch=5000 / 2**20)
    )
    problems = dict(result.rejected)
    assert "would decode to 0.0 MB, over image.max_decoded_mb_per_file" in problems["big.png"]
    assert result.records.height == 4  # 4 x 1024 bytes fit in the batch's 5000
    assert all("image.max_decoded_mb_per_batch" in problems[f"s{i}.png"] for i in (4, 5))


def test_landing_max_file_mb_applies_to_images(tmp_path: Path) -> None:
    batch = folder_batch(tmp_path / "b")
    result = read_image_batch(batch, spec_of(landing={"max_file_mb": 100 / 2**20}))
    assert result.records.height == 0
    assert [f for f, _ in result.rejected] == [f"img{i}.png" for i in range(4)]
    assert all("over landing.max_file_mb" in p for _, p in result.rejected)


def test_deflated_dicom_bomb_is_refused_before_inflating(tmp_path: Path) -> None:
    batch = tmp_path / "b"
    batch.mkdir()
    dicom(batch / "bomb.dcm", 1024, 1024, deflated=True, pixel_bytes=bytes(2 * 1024 * 1024))  # 2 MB of zeros
    dicom(batch / "liar.dcm", 16, 16, deflated=True, pixel_bytes=bytes(24 * 2**20))  # header says 512 B
    dicom(batch / "ok.dcm", 32, 32)
    assert (batch / "bomb.dcm").stat().st_size < 20_000
    result = read_image_batch(batch, spec_of("dicom", max_decoded_mb_per_file=1))
    problems = dict(result.rejected)
    assert problems["bomb.dcm"] == (
        "DICOM pixel data of 1 frame(s) x 1048576 pixels would decode to 2.0 MB, over "
        "image.max_decoded_mb_per_file (1.0 MB)"
    )
    assert "inflates beyond its declared pixel data" in problems["liar.dcm"]
    assert result.records["source"].to_list() == ["ok.dcm"]
    assert CANARY not in repr(result.rejected)


def test_npz_members_are_sized_from_the_zip_directory(tmp_path: Path) -> None:
    batch = tmp_path / "b"
    batch.mkdir()
    np.savez_compressed(batch / "data.npz", **npz(batch / "data.npz", {"train": 20, "val": 4}))
    result = read_image_batch(batch, spec_of("npz", max_decoded_mb_per_file=10_000 / 2**20))
    assert result.records.height == 0
    assert "the arrays of this npz (4) would decode to" in dict(result.rejected)["data.npz"]


# ------------------------------------------------------------------------------------------------ §5b validated = trained


def test_an_image_replaced_after_validation_never_reaches_the_cache(tmp_path: Path) -> None:
    spec = spec_of()
    batch = folder_batch(tmp_path / "b1")
    outcome = read_image_records(describe_batch(spec.name, batch), spec)
    assert outcome.rejected == [] and validate_images(outcome.records, spec) == []
    validated = {r["id"]: load_pixels(batch, r["source"], spec) for r in outcome.records.iter_rows(named=True)}
    png(batch / "img1.png", seed=99)  # replaced after validation
    records = outcome.records.select(pl.col("id"), "source", "sha256").sort("id")
    manifest = update_cache(tmp_path / "cache", batch, "b1", records, spec)
    assert manifest["n"] == 3 and [f[0] for f in manifest["failed"]] == ["c1"]
    assert "differ from those validated" in manifest["failed"][0][1]
    with pytest.raises(KeyError, match=r"1 of 1 image\(s\) not in the image cache"):
        load_cached(tmp_path / "cache", ["c1"])
    cached = load_cached(tmp_path / "cache", ["c0", "c2", "c3"])
    for row, image_id in enumerate(["c0", "c2", "c3"]):
        np.testing.assert_allclose(cached[row], to_uint8(resize_square(validated[image_id], 28)) / 255, atol=1e-6)


def test_records_carry_the_intensity_range_of_one_decode(tmp_path: Path) -> None:
    batch = folder_batch(tmp_path / "b")
    rec = read_image_batch(batch, spec_of()).records.sort("id")
    first = load_pixels(batch, rec["source"][0], spec_of())
    assert (rec["intensity_min"][0], rec["intensity_max"][0]) == (float(first.min()), float(first.max()))


# ------------------------------------------------------------------------------------------------ format detection


def test_format_is_detected_from_what_landed(tmp_path: Path) -> None:
    npz_batch = tmp_path / "n"
    npz_batch.mkdir()
    np.savez_compressed(npz_batch / "x.npz", **npz(npz_batch / "x.npz", {"train": 4, "test": 2}))
    dcm_batch = tmp_path / "d"
    dcm_batch.mkdir()
    dicom(dcm_batch / "scan", 32, 32)  # no extension: recognised by its DICM prefix
    detected = spec_of(None)
    assert read_image_batch(npz_batch, detected).records["predefined_split"].drop_nulls().len() == 6
    assert read_image_batch(folder_batch(tmp_path / "f"), detected).records.height == 4
    assert read_image_batch(dcm_batch, detected).records["source"].to_list() == ["scan"]


def test_a_batch_not_in_the_declared_format_names_what_was_found(tmp_path: Path) -> None:
    batch = tmp_path / "n"
    batch.mkdir()
    np.savez_compressed(batch / "x.npz", **npz(batch / "x.npz", {"train": 4}))
    with pytest.raises(ImageBatchError) as err:
        read_image_batch(batch, spec_of("folder"))
    assert str(err.value) == (
        "found 1 .npz file and no labels.csv; the spec's image.format is 'folder', which expects "
        "PNG/JPEG files and a labels.csv"
    )
    png(batch / "a.png", 0)
    with pytest.raises(
        ImageBatchError, match="found 1 PNG/JPEG file, 1 .npz file and no labels.csv: one batch holds one"
    ):
        read_image_batch(batch, spec_of(None))


# ------------------------------------------------------------------------------------------------ npz official split


def land_npz(batch: Path, files: dict[str, int]) -> Path:
    """A ready npz batch: each file (relative path -> seed) holds 4 train images."""
    for rel, seed in files.items():
        (batch / rel).parent.mkdir(parents=True, exist_ok=True)
        np.savez(batch / rel, **npz(batch / rel, {"train": 4}, seed=seed))
    (batch / "_READY").touch()
    return batch


def test_npz_batches_holding_the_same_file_names_all_validate(tmp_path: Path) -> None:
    """Another batch's data.npz, and a/b.npz beside a_b.npz, are other records, not ids already ingested."""
    layout, spec = DataRoot(tmp_path / "data"), spec_of("npz", task={"classes": ["0", "1"]})
    land_npz(layout.landing(spec.name) / "b1", {"data.npz": 1})
    land_npz(layout.landing(spec.name) / "b2", {"data.npz": 2})
    land_npz(layout.landing(spec.name) / "b3", {"a/b.npz": 3, "a_b.npz": 4})
    warehouse = Warehouse(layout)
    ingest_new_batches(spec, layout, warehouse, read_image_records)
    records, summary = validate_pending_batches(spec, layout, warehouse, validate_images)
    assert (summary.validated, summary.quarantined, records.height) == (["b1", "b2", "b3"], [], 16)
    again = ingest_new_batches(spec, layout, warehouse, read_image_records)  # re-ingestion changes nothing
    assert (again.ingested, again.skipped_known) == ([], 3)


def test_an_npz_with_a_raw_pickle_member_is_quarantined_alone(tmp_path: Path) -> None:
    layout, spec = DataRoot(tmp_path / "data"), spec_of("npz", task={"classes": ["0", "1"]})
    batch = land_npz(layout.landing(spec.name) / "b1", {"good.npz": 1})
    raw_pickle_npz(batch / "bad.npz", tmp_path / "unpickled")
    warehouse = Warehouse(layout)
    summary = ingest_new_batches(spec, layout, warehouse, read_image_records)
    assert summary.ingested == ["b1"] and [q["file"] for q in summary.quarantined] == ["bad.npz"]
    assert warehouse.read(spec.name, "raw_records", ["b1"]).height == 4 and not (tmp_path / "unpickled").exists()
    assert not (batch / "bad.npz").exists() and (batch / "good.npz").is_file()


def test_copies_across_a_datasets_own_split_are_reported_not_blocked(tmp_path: Path) -> None:
    spec = spec_of("npz", task={"classes": ["0", "1"]})
    batch = tmp_path / "b"
    batch.mkdir()
    arrays = npz(batch / "pneumonia.npz", {"train": 10, "val": 4, "test": 6})
    arrays["val_images"][:2] = arrays["train_images"][:2]
    arrays["test_images"][:3] = arrays["train_images"][3:6]
    arrays["test_labels"][:3] = arrays["train_labels"][3:6]
    arrays["val_labels"][:2] = arrays["train_labels"][:2]
    np.savez_compressed(batch / "pneumonia.npz", **arrays)
    records = read_image_records(describe_batch(spec.name, batch), spec).records
    assert validate_images(records, spec, set()) == []
    assert "duplicate_images_across_official_splits" in [w.expectation for w in duplicate_warnings(records, spec)]
    split = image_split(records, spec)
    assert split_copy_counts(split) == {"val_in_train": 2, "test_in_train": 3, "test_in_val": 0}
    marked = mark_copies_of_train(split)
    assert marked.filter(pl.col(COPY_OF_TRAIN_COLUMN))["id"].sort().to_list() == sorted(
        [npz_record_id("b", "pneumonia.npz", "val", i) for i in range(2)]
        + [npz_record_id("b", "pneumonia.npz", "test", i) for i in range(3)]
    )
    marked_too, meta = mark_official_copies(split)
    assert marked_too.equals(marked)
    assert meta == {
        "n_predefined_split": 20,
        "n_copies_val_in_train": 2,
        "n_copies_test_in_train": 3,
        "n_copies_test_in_val": 0,
    }
    # copies our hash split spreads, or two files' splits, still block: test_imaging_pipeline's leakage tests


# ------------------------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_spaced_batch_with_dot_slash_rows_trains_and_a_replaced_image_is_left_out(tmp_path: Path) -> None:
    import dagster as dg

    from meddiag_pipelines.specs import BUNDLED_TASKS_DIR, load_spec
    from meddiag_pipelines_tests.test_imaging_pipeline import run_job, tiny
    from scripts.phantoms import write_phantom_batch

    spec = tiny(load_spec(BUNDLED_TASKS_DIR / "synthetic_chest_phantoms.yaml"))
    root = tmp_path / "data"
    batch = write_phantom_batch(root / "landing" / spec.name / "batch 0001 (export)", n=120, seed=3, size=28)
    labels = pl.read_csv(batch / "labels.csv")
    labels.with_columns(("./" + pl.col("file")).alias("file")).write_csv(batch / "labels.csv")
    (batch / "_READY").touch()
    with dg.instance_for_test() as instance:
        assert run_job(spec, root, instance, ["raw_records", "validated_records"]).success
        replaced = batch / labels["file"][0]
        Image.fromarray(np.full((28, 28), 200, dtype=np.uint8)).save(replaced)  # after validation
        result = run_job(spec, root, instance)
        assert result.success
        meta = next(
            m
            for m in result.asset_materializations_for_node(f"{spec.name}__features")
            if m.asset_key.path[-1] == "features"
        ).metadata
    assert meta["n_images_refused"].value == 1 and meta["n_rows"].value == 119
    tested = pl.read_parquet(root / "reports" / spec.name / "latest" / "test_predictions.parquet")["id"].to_list()
    assert tested and labels["id"][0] not in tested


def test_the_report_gives_test_metrics_without_copies_of_training_rows() -> None:
    from meddiag_pipelines.defs.assets.lifecycle import metrics_without_copies, without_copies_html
    from meddiag_pipelines.split import COPY_OF_TRAIN_COLUMN
    from meddiag_pipelines.split import SPLIT_COLUMN as SPLIT

    spec = spec_of(task={"classes": ["0", "1"], "positive": "1", "evaluation": {"n_bootstrap": 100}})
    rng = np.random.default_rng(0)
    n = 200
    labels = rng.integers(0, 2, n)
    split = pl.DataFrame(
        {
            "id": [f"r{i}" for i in range(n)],
            "label": [str(v) for v in labels],
            SPLIT: ["train"] * 80 + ["val"] * 40 + ["test"] * 80,
            COPY_OF_TRAIN_COLUMN: [False] * 120 + [True] * 30 + [False] * 50,
        }
    )
    score = {f"r{i}": float(labels[i]) * 0.6 + rng.random() * 0.4 for i in range(n)}
    candidate = {"classes": ["0", "1"], "version": "v1", "name": "cnn"}
    without = metrics_without_copies(
        spec, split, candidate, lambda h, rows: np.array([score[i] for i in rows["id"]]), {}
    )
    assert without["n_removed"] == 30 and without["n_test"] == 50 and 0.5 < without["auroc"] <= 1.0
    assert "30 test rows copy a training row" in without_copies_html(without)
    assert metrics_without_copies(spec, split.drop(COPY_OF_TRAIN_COLUMN), candidate, None, {}) is None


def test_multilabel_labels_must_be_finding_indices() -> None:
    spec = spec_of("folder", task={"classes": ["effusion", "nodule", "mass"]})
    frame = pl.DataFrame({spec.label: ["", "0", "0|2", None, "3", "1|x", "nodule"]})
    (failure,) = multilabel_domain_failures(frame, spec)
    assert failure.unexpected_count == 3 and failure.problem == "3 labels are not '|'-joined finding indices below 3"
    assert "nodule" not in failure.problem and multilabel_domain_failures(frame.head(4), spec) == []
