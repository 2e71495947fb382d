"""The volume modality on DICOM series and NIfTI files (issue 26): SYNTHETIC CT phantoms written as DICOM series
(slice files in random order, InstanceNumbers shuffled, patient tags, a private tag and the file names holding
canaries) and as NIfTI files, read to the model's cube, then end to end through the generic Dagster assets with
the issue's hostile inputs beside the good records: each is quarantined with its reason, nothing outside the batch
is touched, the task trains and scores a later unlabelled batch, and no canary reaches any output."""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import re
from pathlib import Path

import dagster as dg
import nibabel as nib
import numpy as np
import polars as pl
import pytest

from meddiag_pipelines.definitions import build_definitions
from meddiag_pipelines.imaging.volume.readers import (
    listed_record_id,
    load_volume,
    read_volume_batch,
)
from meddiag_pipelines.ingestion.batches import ingest_new_batches, reconcile
from meddiag_pipelines.ingestion.quarantine import file_reason
from meddiag_pipelines.ingestion.warehouse import Warehouse
from meddiag_pipelines.specs import TaskSpec
from meddiag_pipelines.storage import DataRoot
from meddiag_pipelines.update import run_task_in_process
from meddiag_pipelines_tests.test_phi_canaries import contents, event_log_text
from meddiag_pipelines_tests.volume_data import (
    CANARY_NAME,
    PHI,
    ct_slices,
    phantom,
    write_nifti,
    write_series,
    write_volume_batch,
)

SIDE = 16
WINDOW = (-200.0, 400.0)
LEAK = re.compile("|".join(re.escape(p) for p in (*PHI, "CANARY")).encode())


def series_spec(fmt: str, **volume) -> TaskSpec:
    return TaskSpec.model_validate(
        {
            "name": f"ct_{fmt}",
            "modality": "volume",
            "label": "label",
            "positive": "1",
            "classes": ["0", "1"],
            "id": "case_id",
            "patient_id": "patient_ref",
            "volume": {
                "format": fmt,
                "size": SIDE,
                "intensity": {"ct_window": list(WINDOW)},
                "model": "resnet10",
                "width": 4,
                "augment": ["intensity"],
                **volume,
            },
            "training": {"seed": 1, "epochs": 2, "batch_size": 8, "learning_rate": 0.01, "time_budget_s": 60},
            "evaluation": {"n_bootstrap": 100},
            "promotion": {"auroc_floor": 0.0, "slope_band": [0.0, 1e9]},
        }
    )


def windowed(hu: np.ndarray) -> np.ndarray:
    return np.clip((hu - WINDOW[0]) / (WINDOW[1] - WINDOW[0]), 0.0, 1.0)


# ------------------------------------------------------------------------------------------------ reader


def test_a_dicom_series_and_a_nifti_of_one_phantom_give_the_same_cube_in_z_y_x_order(tmp_path: Path) -> None:
    hu = phantom(np.random.default_rng(0), True, SIDE, SIDE)
    hu[-3:, :3, -3:] = 350.0  # a marker at high z, low y, high x: the cube keeps the axes where they were
    write_series(tmp_path / "series", ct_slices(hu), seed=3)
    write_nifti(tmp_path / "vol.nii.gz", hu)
    expected = windowed(np.trunc(hu))  # both writers store whole HU
    for fmt, rel in (("dicom_series", "series"), ("nifti", "vol.nii.gz")):
        cube = load_volume(tmp_path, rel, series_spec(fmt), None)
        assert cube.shape == (1, SIDE, SIDE, SIDE)
        np.testing.assert_allclose(cube[0], expected, atol=2 / (WINDOW[1] - WINDOW[0]), err_msg=fmt)
    lps = load_volume(tmp_path, "series", series_spec("dicom_series", orientation="LPS"), None)
    np.testing.assert_allclose(lps[0], expected[:, ::-1, ::-1], atol=0.01)


def test_an_unset_intensity_is_the_volumes_own_range_and_spacing_is_z_y_x(tmp_path: Path) -> None:
    hu = phantom(np.random.default_rng(1), False, SIDE, SIDE)
    write_nifti(tmp_path / "vol.nii", hu, spacing=(2.0, 1.0, 1.0))
    spec = series_spec("nifti", intensity=None, spacing=[2.0, 2.0, 1.0])  # z kept, y halved, x kept
    cube = load_volume(tmp_path, "vol.nii", spec, None)[0]
    assert cube.min() == 0.0 and cube.max() == pytest.approx(1.0)
    body = (cube > 0.5).nonzero()
    extent = [int(b.max() - b.min() + 1) for b in body]  # the ellipsoid spans ~ 0.9, 0.8, 0.7 of 16 voxels
    assert extent[1] <= 8 < extent[2] and extent[0] > 12, extent


def test_ids_are_the_tasks_own_or_hashed_and_bad_labels_rows_are_named_by_number(tmp_path: Path) -> None:
    batch = tmp_path / "batch_0001"
    files = write_volume_batch(batch, "nifti", 3, seed=2, side=SIDE)
    (batch / "labels.csv").write_text(f"file,label\n{files[0]},0\n{files[1]},1\n,1\n{files[2]},0\n{files[2]},0\n")
    spec = series_spec("nifti").model_copy(update={"id": "row_id", "patient_id": None})
    result = read_volume_batch(batch, spec)
    ids = result.records["id"].to_list()
    assert ids == [listed_record_id("batch_0001", f) for f in files] and not any("vol_2_" in i[4:] for i in ids)
    assert result.rejected == [
        ("labels.csv row 3", "empty 'file' column"),
        ("labels.csv row 5", "duplicate id in labels.csv (only the first row is used)"),
    ]


# ------------------------------------------------------------------------------------------------ hostile inputs


def _ingest(spec: TaskSpec, root: DataRoot, warehouse: Warehouse):
    from meddiag_pipelines.imaging.volume.modality import read_volume_records

    return ingest_new_batches(spec, root, warehouse, read_volume_records)


def test_a_refused_series_folder_is_quarantined_whole_and_no_slice_name_reaches_the_ledger(tmp_path, caplog) -> None:
    spec, root = series_spec("dicom_series"), DataRoot(tmp_path / "data")
    warehouse, batch = Warehouse(root), root.landing(spec.name) / "batch_0001"
    good = write_volume_batch(batch, "dicom_series", 2, seed=1, side=SIDE)
    slices = ct_slices(phantom(np.random.default_rng(3), True, 6, SIDE))
    slices[2].PatientID = "CANARY_OTHER_PATIENT"
    write_series(batch / "bad_two_patients", slices)
    write_series(batch / good[0] / "nested", ct_slices(phantom(np.random.default_rng(4), True, 6, SIDE)))
    _add_rows(batch, ["bad_two_patients", f"{good[0]}/nested"])
    os.mkfifo(batch / good[1] / f"{CANARY_NAME}_fifo.dcm")  # set aside before any reader runs, never opened
    landed = sum(1 for p in batch.rglob("*") if not p.is_dir() and p.name != "_READY")
    with caplog.at_level(logging.INFO):
        summary = _ingest(spec, root, warehouse)
    assert summary.ingested == ["batch_0001"] and summary.rows == 2
    aside = root.quarantine(spec.name) / "batch_0001"
    assert (
        not (batch / "bad_two_patients").exists() and len(list((aside / "files" / "bad_two_patients").iterdir())) == 6
    )
    reason = json.loads(file_reason(aside, "bad_two_patients").read_text())
    assert reason["problem"] == "bad_two_patients: the series holds slices from 2 patients (PatientID differs)"
    # a refused folder inside a record that was read stays where that record's slices are, and says so
    assert (batch / good[0] / "nested").is_dir()
    left = "(left in landing: another record's volume is read there)"
    shown = {(q["file"], q["problem"].endswith(left)) for q in summary.quarantined if "FIFO" not in q["problem"]}
    assert shown == {("bad_two_patients", False), ("labels.csv entry", True)}
    fifo = [q["file"] for q in summary.quarantined if "FIFO" in q["problem"]]
    assert len(fifo) == 1 and re.fullmatch(r"h[0-9a-f]{16}/h[0-9a-f]{16}", fifo[0])  # named by its stand-in
    assert (aside / "files" / good[1] / f"{CANARY_NAME}_fifo.dcm").is_fifo()
    counts = reconcile(spec, warehouse)
    assert (counts["landed_files"], counts["quarantined_files"]) == (landed, 6 + 1 + 1)
    entry = warehouse.ledger(spec.name).row(0, named=True)
    assert len(json.loads(entry["files"])) == landed and not LEAK.search(json.dumps(entry).encode())
    assert not LEAK.search(caplog.text.encode()) and "bad_two_patients" in caplog.text

    again = _ingest(spec, root, warehouse)  # the folder set aside is no change to the batch
    assert again.changed == [] and again.skipped_known == 1
    extra = next((batch / good[1]).iterdir())
    (extra.parent / f"{CANARY_NAME}_added.dcm").write_bytes(extra.read_bytes())
    changed = _ingest(spec, root, warehouse)
    assert [(c["added"], c["changed"], c["removed"]) for c in changed.changed] == [(1, 0, 0)]
    assert not (extra.parent / f"{CANARY_NAME}_added.dcm").exists()
    set_aside = list(root.quarantine(spec.name).glob(f"batch_0001.changed-*/files/{good[1]}/{CANARY_NAME}_added.dcm"))
    assert len(set_aside) == 1 and not LEAK.search(json.dumps(warehouse.ledger(spec.name).to_dicts()).encode())


def test_a_run_that_stopped_before_moving_a_refused_series_folder_is_finished_by_the_next(
    tmp_path, monkeypatch
) -> None:
    import meddiag_pipelines.ingestion.batches as batches

    spec, root = series_spec("dicom_series"), DataRoot(tmp_path / "data")
    warehouse, batch = Warehouse(root), root.landing(spec.name) / "batch_0001"
    write_volume_batch(batch, "dicom_series", 2, seed=1, side=SIDE)
    slices = ct_slices(phantom(np.random.default_rng(3), True, 6, SIDE))
    slices[0].Rows = 8
    write_series(batch / "bad_sizes", slices)
    _add_rows(batch, ["bad_sizes"])

    def crash(*args, **kwargs):
        raise OSError("stopped")

    with monkeypatch.context() as patch:
        patch.setattr(batches, "quarantine_file", crash)
        with pytest.raises(OSError, match="stopped"):
            _ingest(spec, root, warehouse)
    assert (batch / "bad_sizes").is_dir()  # recorded as rejected, not moved yet
    assert _ingest(spec, root, warehouse).skipped_known == 1
    aside = root.quarantine(spec.name) / "batch_0001"
    assert not (batch / "bad_sizes").exists() and len(list((aside / "files" / "bad_sizes").iterdir())) == 6
    assert "mixed slice sizes" in json.loads(file_reason(aside, "bad_sizes").read_text())["problem"]


def test_a_ledger_entry_written_with_slice_names_is_still_compared_by_name(tmp_path, monkeypatch) -> None:
    import meddiag_pipelines.ingestion.batches as batches

    spec, root = series_spec("dicom_series"), DataRoot(tmp_path / "data")
    warehouse, batch = Warehouse(root), root.landing(spec.name) / "batch_0001"
    write_volume_batch(batch, "dicom_series", 2, seed=1, side=SIDE)
    with monkeypatch.context() as patch:  # as ingestion wrote it before the stand-ins
        patch.setattr(batches, "private_names", lambda spec: False)
        assert _ingest(spec, root, warehouse).ingested == ["batch_0001"]
    assert CANARY_NAME in warehouse.ledger(spec.name)["files"][0]
    os.utime(batch, None)  # newer than the ledger entry: the batch is compared, not skipped unhashed
    assert _ingest(spec, root, warehouse).changed == []


def _dicom_hostile(batch: Path, outside: Path) -> dict[str, str]:
    """Bad series beside the good ones; their labels.csv value -> the reason expected."""
    rng = np.random.default_rng(9)

    def series(name: str, edit) -> None:
        slices = ct_slices(phantom(rng, True, 16, 24))
        edit(slices)
        write_series(batch / name, slices)

    def two_patients(s):
        s[5].PatientID = "CANARY_OTHER_PATIENT"

    def mixed_sizes(s):
        s[4].Rows = s[4].Columns = 20
        s[4].PixelData = np.zeros((20, 20), np.uint16).tobytes()

    def huge(s):
        for d in s:
            d.Rows = d.Columns = 8192  # 16 x 8192^2 x 2 bytes: 2.1 GB declared in files of about 1 KB
            d.PixelData = b"\x00\x00" * 16

    series("bad_two_patients", two_patients)
    series("bad_mixed_sizes", mixed_sizes)
    series("bad_huge", huge)
    assert max(p.stat().st_size for p in (batch / "bad_huge").iterdir()) < 2048
    series("bad_symlink", lambda s: None)
    victim = sorted((batch / "bad_symlink").iterdir())[7]
    victim.rename(outside)
    victim.symlink_to(outside)
    return {
        "bad_two_patients": r"bad_two_patients: the series holds slices from 2 patients",
        "bad_mixed_sizes": r"bad_mixed_sizes: mixed slice sizes \(Rows x Columns: 20x20, 24x24\)",
        "bad_huge": r"bad_huge: declares 16 slices of 8192x8192 = 1073741824 voxels, over max_voxels 268435456",
        "bad_symlink": r"bad_symlink: file 8 of 16 \(in name order\) is a symbolic link",
    }


def _gzip_bomb(path: Path) -> None:
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((64, 64, 64))
    hdr.set_data_dtype(np.uint8)
    hdr.set_data_offset(352)
    with gzip.open(path, "wb", compresslevel=9) as gz:
        gz.write(hdr.binaryblock + b"\x00" * 4)
        for _ in range(64):  # 64 MB of zeros behind a header declaring 256 KB
            gz.write(bytes(1 << 20))


def _nifti_hostile(batch: Path, outside: Path) -> dict[str, str]:
    hu = phantom(np.random.default_rng(9), True, 16, 24)
    for name, value in (("bad_nan.nii", np.nan), ("bad_zero.nii", 0.0)):
        write_nifti(batch / name, hu)
        raw = (batch / name).read_bytes()
        hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(raw), check=False)
        hdr["pixdim"][2] = value
        (batch / name).write_bytes(hdr.binaryblock + raw[348:])
    huge = nib.Nifti1Header()
    huge.set_data_shape((1300, 1300, 1300))  # 2.2 GB of int8 declared in under 1 KB
    huge.set_data_dtype(np.int8)
    huge.set_data_offset(352)
    (batch / "bad_huge.nii").write_bytes(huge.binaryblock + b"\x00" * 600)
    _gzip_bomb(batch / "bad_bomb.nii.gz")
    write_nifti(outside, hu)
    (batch / "bad_link.nii.gz").symlink_to(outside)
    return {
        "bad_nan.nii": r"bad_nan\.nii: voxel spacing \(pixdim\) \[.*nan.*\] is not finite and positive",
        "bad_zero.nii": r"bad_zero\.nii: voxel spacing \(pixdim\) \[.*0\.0.*\] is not finite and positive",
        "bad_huge.nii": r"bad_huge\.nii: declares 1300x1300x1300 = 2197000000 voxels, over max_voxels",
        "bad_bomb.nii.gz": r"bad_bomb\.nii\.gz: decompresses beyond the size its header declares",
        "bad_link.nii.gz": r"bad_link\.nii\.gz: .*(link|regular)",
    }


def _add_rows(batch: Path, bad: list[str]) -> None:
    with open(batch / "labels.csv", "a") as fh:
        fh.writelines(f"{rel},1,{rel.split('.')[0]},pt_{rel.split('.')[0]}\n" for rel in bad)


def _run(spec: TaskSpec, root: Path, home: Path):
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        result = run_task_in_process(build_definitions([spec], root), spec, instance, None, raise_on_error=False)
        return result, event_log_text(instance)


def _leaks(tmp_path: Path, root: Path, home: Path, texts: dict[str, str]) -> tuple[list[str], int]:
    """Where a canary appears: the texts, and every file of the run (the ingestion ledger whole, slice file names
    included) but the landed data and its quarantined copy."""
    leaks = [name for name, text in texts.items() if LEAK.search(text.encode())]
    scanned = [p for p in home.rglob("*") if p.is_file()]
    raw = (root / "landing", *(root / "quarantine").glob("*/*/files"))  # the landed data itself
    scanned += [
        p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and not any(p.is_relative_to(r) for r in raw)
    ]
    leaks += [str(p.relative_to(tmp_path)) for p in scanned if LEAK.search(contents(p))]
    return leaks, len(scanned)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["dicom_series", "nifti"])
def test_series_and_nifti_tasks_end_to_end_with_hostile_inputs_and_no_phi(tmp_path, caplog, capfd, fmt) -> None:
    spec, root, home = series_spec(fmt), tmp_path / "data", tmp_path / "dagster_home"
    home.mkdir()
    batch = root / "landing" / spec.name / "batch_0001"
    good = write_volume_batch(batch, fmt, 32, seed=1)
    outside = tmp_path / "outside" / ("slice.dcm" if fmt == "dicom_series" else "elsewhere.nii.gz")
    outside.parent.mkdir()
    expected = (_dicom_hostile if fmt == "dicom_series" else _nifti_hostile)(batch, outside)
    _add_rows(batch, list(expected))
    outside_bytes = outside.read_bytes()
    bad_files = sum(len(list((batch / rel).iterdir())) if (batch / rel).is_dir() else 1 for rel in expected)

    with caplog.at_level(logging.DEBUG):
        first, events = _run(spec, root, home)
        assert first.success
        meta = next(
            m
            for m in first.asset_materializations_for_node(f"{spec.name}__raw_records")
            if m.asset_key.path[-1] == "raw_records"
        ).metadata
        table = re.sub(r"\\(.)", r"\1", meta["quarantined"].value)  # markdown escapes undone
        for rel, problem in expected.items():  # each bad record's reason, in the run's metadata
            assert re.search(rf"\| {re.escape(rel)} \|[^\n]*{problem}", table), (rel, table)
            # a file, or a series folder with its slices, is moved to quarantine beside its reason
            reason = json.loads(file_reason(root / "quarantine" / spec.name / "batch_0001", rel).read_text())
            assert re.search(problem, reason["problem"]) and not os.path.lexists(batch / rel)
            if fmt == "dicom_series":
                aside = root / "quarantine" / spec.name / "batch_0001" / "files" / rel
                assert len(list(aside.iterdir())) == 16
        assert outside.read_bytes() == outside_bytes and not outside.is_symlink()  # nothing outside was touched
        assert all((batch / rel).exists() for rel in good[:3])

        metrics = json.loads((root / "reports" / spec.name / "latest" / "metrics.json").read_text())
        assert metrics["n_train"] + metrics["n_val"] + metrics["n_test"] == len(good)
        assert metrics["flow"]["quarantined_files"] == bad_files and 0.0 <= metrics["auroc"] <= 1.0

        later = root / "landing" / spec.name / "batch_0002"
        to_score = write_volume_batch(later, fmt, 4, seed=2, labelled=False)
        second, more_events = _run(spec, root, home)
        assert second.success
        features = next(
            m
            for m in second.asset_materializations_for_node(f"{spec.name}__features")
            if m.asset_key.path[-1] == "features"
        ).metadata
        assert (features["batches_reused"].value, features["batches_built"].value) == (1, 1)  # cached once a batch
        assert (features["volume_shape"].value, features["n_volumes_refused"].value) == (f"1x{SIDE}x{SIDE}x{SIDE}", 0)
        assert features["n_volumes_cached"].value == len(good) + len(to_score)
    champion = json.loads((root / "models" / spec.name / "champion.json").read_text())["version"]
    scored = pl.read_parquet(root / "predictions" / spec.name / "batch_0002" / f"{champion}.parquet")
    assert sorted(scored["id"].to_list()) == [f"case_2_{i:03d}" for i in range(len(to_score))]
    assert scored["probability"].is_between(0, 1).all()

    printed = capfd.readouterr()
    for rel, problem in expected.items():  # the plain reason, as the run printed it
        assert re.search(rf"quarantined: {re.escape(rel)}: {problem}", printed.err), rel
    texts = {"event log": events + more_events, "printed output": printed.out + printed.err, "logs": caplog.text}
    leaks, n_scanned = _leaks(tmp_path, root, home, texts)
    assert not leaks, f"canaries leaked into: {leaks}"
    assert n_scanned > 20 and "ASSET_MATERIALIZATION" in events and "bad_huge" in caplog.text  # the scan saw the run
    assert _landed_canaries(batch / good[0]), "the landed data holds the canaries the scan looked for"


def _landed_canaries(path: Path) -> bool:
    if path.is_dir():  # a series: the patient's name in every file name and tag
        slices = list(path.iterdir())
        return bool(slices) and all(CANARY_NAME in p.name and CANARY_NAME.encode() in p.read_bytes() for p in slices)
    return CANARY_NAME.encode() in gzip.decompress(path.read_bytes())
