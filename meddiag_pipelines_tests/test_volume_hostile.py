"""Hostile and merely-real volume inputs the issue does not name (issue 26's "and others not named here"): each
hostile one is refused with a plain reason naming the record, never a patient detail, UID or label value, and
never a crash; each merely-real one (per-slice rescale, files beside the slices, NIfTI's scl_slope 0) is read.
The CLI test lands them beside good records and runs `meddiag update`, as a user does: the good records train."""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLosslessSV1

from meddiag_pipelines.imaging.readers import ImageBatchError
from meddiag_pipelines.imaging.volume.readers import read_volume_batch
from meddiag_pipelines.imaging.volume_io import read_volume
from meddiag_pipelines_tests.conftest import MEDDIAG, instance_env, run_cli
from meddiag_pipelines_tests.test_volume_io import (
    BIG,
    CANARY,
    hostile,
    nifti_with,
    refused,
    small_series,
    write_series,
)
from meddiag_pipelines_tests.test_volume_modality import volume_spec, write_npz
from meddiag_pipelines_tests.volume_data import PHI, ct_slices, phantom, write_nifti

# ---------------------------------------------------------------- DICOM series


def _spacing(value):
    def change(datasets):
        for ds in datasets:
            ds.PixelSpacing = value

    return change


def _each(**tags):
    def change(datasets):
        for ds in datasets:
            for tag, value in tags.items():
                setattr(ds, tag, value)

    return change


def _one(k, **tags):
    def change(datasets):
        for tag, value in tags.items():
            setattr(datasets[k], tag, value)

    return change


def _compressed(datasets):  # a transfer syntax this environment has no decoder for
    for ds in datasets:
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        ds.PixelData = encapsulate([ds.PixelData])
        ds["PixelData"].VR = "OB"


def _no_pixels(datasets):
    del datasets[2].PixelData


def _no_spacing(datasets):
    del datasets[4].PixelSpacing


def _one_slice(datasets):
    del datasets[1:]


DICOM_CASES = [
    ("spacing_zero", _spacing([0.0, 0.0]), r"PixelSpacing \[0\.0, 0\.0\] is not positive"),
    ("spacing_negative", _spacing([-2.0, -2.0]), r"PixelSpacing \[-2\.0, -2\.0\] is not positive"),
    ("mixed_modality", _one(3, Modality="MR"), r"slices from 2 modalities \(Modality differs\)"),
    ("slope_zero", _one(1, RescaleSlope=0), r"a slice has a malformed or zero RescaleSlope"),
    ("spacing_missing", _no_spacing, r"file \d of 6 \(in name order\): no valid .*PixelSpacing"),
    ("one_slice", _one_slice, r"a single slice is not a volume"),
    ("no_decoder", _compressed, r"file 1 of 6 \(in name order\): compressed transfer syntax .* cannot be decoded"),
    ("no_pixel_data", _no_pixels, r"file \d of 6 \(in name order\): no pixel data"),
    ("bits_mismatch", _each(BitsAllocated=8, BitsStored=8, HighBit=7), r"pixel data is 128 bytes where .* declare 64"),
    ("rows_mismatch", _each(Rows=6), r"pixel data is 128 bytes where Rows x Columns x BitsAllocated declare 96"),
]


@pytest.mark.parametrize(("kind", "change", "match"), DICOM_CASES, ids=[c[0] for c in DICOM_CASES])
def test_a_hostile_dicom_series_is_refused_with_a_plain_reason(tmp_path, kind, change, match):
    refused(hostile(tmp_path, change), "series", "dicom_series", rf"^series: .*{match}")


def test_a_slice_with_a_truncated_header_refuses_its_series_even_at_the_end_of_the_stack(tmp_path):
    """pydicom reads a header cut short without an error; the slice must not vanish (at an end of the stack no gap
    would show it)."""
    paths = write_series(tmp_path / "series", small_series())
    paths[-1].write_bytes(paths[-1].read_bytes()[:400])  # the file meta and a few elements, no Rows
    refused(tmp_path, "series", "dicom_series", r"series: file \d of 6 \(in name order\) is a DICOM image whose header")


def test_per_slice_rescale_and_files_beside_the_slices_are_read(tmp_path):
    """Merely real: RescaleSlope differs per slice (applied per slice), and a DICOMDIR, a viewer's Thumbs.db, a
    text file and an empty file lie in the series folder (skipped)."""
    plain = small_series()
    write_series(tmp_path / "plain", plain)
    rescaled = small_series()
    for ds in rescaled[1::2]:  # the same HU stored as (HU + 1024) / 2 with slope 2
        stored = np.frombuffer(ds.PixelData, np.uint16).astype(np.int64)
        ds.RescaleSlope = 2
        ds.PixelData = (stored // 2).astype(np.uint16).tobytes()
    folder = tmp_path / "rescaled"
    write_series(folder, rescaled)
    shutil.copy(get_testdata_file("DICOMDIR"), folder / "DICOMDIR")
    (folder / "Thumbs.db").write_bytes(bytes(range(256)) * 4)
    (folder / "export_notes.txt").write_text("exported by a viewer")
    (folder / "empty.dcm").write_bytes(b"")
    want = read_volume(tmp_path, "plain", "dicom_series", max_voxels=BIG).array
    got = read_volume(tmp_path, "rescaled", "dicom_series", max_voxels=BIG).array
    assert got.shape == want.shape == (8, 8, 6)
    np.testing.assert_allclose(got, want, atol=1.0)  # odd stored values lose their last bit when halved


# ---------------------------------------------------------------- NIfTI


def _sform(affine, code=2):
    return lambda hdr: hdr.set_sform(np.asarray(affine, dtype=float), code=code)


def _codes(qform, sform):
    def edit(hdr):
        hdr["qform_code"], hdr["sform_code"] = qform, sform

    return edit


def _qfac_zero(hdr):
    hdr["sform_code"], hdr["qform_code"] = 0, 1
    hdr["pixdim"][0] = 0


def _disagree(hdr):
    hdr.set_sform(np.diag([2.0, 2.0, 3.0, 1.0]), code=1)
    hdr.set_qform(np.array([[0, 0, 3.0, 0], [2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 0, 1]]), code=1)


def _dim0(hdr):
    hdr["dim"][0] = 9


SHEAR = [[2.0, 0.8, 0, 0], [0, 2.0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1]]
NIFTI_CASES = [
    ("shear", _sform(SHEAR), r"voxel axes are not orthogonal \(a sheared affine"),
    ("no_orientation", _codes(0, 0), r"qform_code and sform_code are both 0: the orientation is unknown"),
    ("qform_sform_disagree", _disagree, r"qform and sform disagree on the axes or voxel sizes"),
    ("qfac_zero", _qfac_zero, r"qform or sform cannot be computed"),
    ("dim0_out_of_range", _dim0, r"dim\[0\] is not a dimension count of 1 to 7"),
]


@pytest.mark.parametrize(("kind", "edit", "match"), NIFTI_CASES, ids=[c[0] for c in NIFTI_CASES])
def test_a_hostile_nifti_is_refused_with_a_plain_reason(tmp_path, kind, edit, match):
    refused(nifti_with(tmp_path, "v.nii", edit), "v.nii", "nifti", rf"^v\.nii: .*{match}")


@pytest.mark.parametrize(
    ("shape", "match"),
    [((8, 8, 1), r"shape \(8, 8, 1\) is a single slice"), ((8, 8, 8, 1, 2), r"2 volumes \(5D\)")],
)
def test_a_nifti_that_is_not_one_3d_volume_is_refused(tmp_path, shape, match):
    refused(nifti_with(tmp_path, "v.nii.gz", shape=shape), "v.nii.gz", "nifti", rf"^v\.nii\.gz: .*{match}")


@pytest.mark.parametrize("slope", [0.0, np.nan])
def test_nifti_scl_slope_zero_or_nan_means_unscaled_and_an_oblique_affine_reads(tmp_path, slope):
    """Merely real: the NIfTI standard reads scl_slope 0 (and nibabel NaN) as "no scaling"; a rotated (oblique,
    orthogonal) affine is reoriented to the closest canonical axes."""

    def edit(hdr):
        hdr["scl_slope"] = slope

    nifti_with(tmp_path, "v.nii", edit)
    assert read_volume(tmp_path, "v.nii", "nifti", max_voxels=BIG).array.max() == 511
    c, s = np.cos(0.3), np.sin(0.3)
    oblique = [[2 * c, -2 * s, 0, 0], [2 * s, 2 * c, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1]]
    nifti_with(tmp_path, "oblique.nii", _sform(oblique))
    assert read_volume(tmp_path, "oblique.nii", "nifti", max_voxels=BIG).spacing == pytest.approx((2.0, 2.0, 3.0))


# ---------------------------------------------------------------- npz


def _npy(array: np.ndarray | None = None, header: dict | None = None) -> bytes:
    buf = io.BytesIO()
    if header is not None:  # a header only: declares an array it does not hold
        np.lib.format.write_array_header_1_0(buf, header)
    else:
        np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


VOLUMES = np.full((2, 16, 16, 16), 50, np.uint8)


def _members(**arrays: bytes):
    def write(path: Path) -> None:
        with zipfile.ZipFile(path, "w") as zf:
            for key, data in arrays.items():
                zf.writestr(f"{key}.npy", data)

    return write


def _namesakes(path: Path) -> None:
    _members(train_images=_npy(VOLUMES))(path)
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(path, "a") as zf:
        zf.writestr("train_images.npy", _npy(VOLUMES[:1]))  # NumPy would read this one, unchecked


def _encrypted(path: Path) -> None:
    _members(train_images=_npy(VOLUMES))(path)
    raw = bytearray(path.read_bytes())
    raw[raw.find(b"PK\x03\x04") + 6] |= 1  # the "encrypted" flag of the local and central headers
    raw[raw.find(b"PK\x01\x02") + 8] |= 1
    path.write_bytes(bytes(raw))


NPZ_CASES = [
    (
        "object_labels",
        _members(train_images=_npy(VOLUMES), train_labels=_npy(np.array([[None], [1]], dtype=object))),
        r"train_labels is an object array \(stored as a pickle, which is never loaded\)",
    ),
    (
        "labels_declaring_8gb_in_a_header",
        _members(
            train_images=_npy(VOLUMES),
            train_labels=_npy(header={"descr": "<i8", "fortran_order": False, "shape": (10**9, 1)}),
        ),
        r"train_labels declares 8,000,000,000 bytes of data but its zip entry holds 0",
    ),
    ("namesake_members", _namesakes, r"its zip holds 1 member\(s\) under a name already used"),
    ("encrypted_member", _encrypted, r"train_images: its \.npy header cannot be read"),
    (
        "volumes_smaller_than_the_spec_size",
        _members(train_images=_npy(np.full((2, 8, 16, 16), 50, np.uint8))),
        r"train_images holds 8x16x16 volumes, smaller than volume.size \(16\) along an axis",
    ),
    (
        "label_outside_the_classes",
        _members(train_images=_npy(VOLUMES), train_labels=_npy(np.array([[0], [7]], np.uint8))),
        r"1 of its labels are outside the task's classes \(0, 1\)",
    ),
]


@pytest.mark.parametrize(("kind", "write", "match"), NPZ_CASES, ids=[c[0] for c in NPZ_CASES])
def test_a_hostile_npz_is_rejected_alone_and_the_good_file_beside_it_reads(tmp_path, kind, write, match):
    batch = tmp_path / "batch_0001"
    batch.mkdir()
    write(batch / "bad.npz")
    write_npz(batch / "good.npz", {"train": 4, "val": 2})
    result = read_volume_batch(batch, volume_spec())
    assert result.records.height == 6 and set(result.records["source"].str.extract(r"^([^#]+)")) == {"good.npz"}
    [(rel, problem)] = result.rejected
    assert rel == "bad.npz" and re.search(match, problem), problem


# ---------------------------------------------------------------- labels.csv


def _nifti_batch(batch: Path, n: int) -> list[str]:
    rng = np.random.default_rng(3)
    rows = ["file,label,case_id"]
    for i in range(n):
        write_nifti(batch / f"v{i}.nii.gz", phantom(rng, i % 2 == 1, 8, 10))
        rows.append(f"v{i}.nii.gz,{i % 2},c{i}")
    (batch / "labels.csv").write_text("\n".join(rows) + "\n")
    return rows


def _listed_spec():
    return volume_spec(format="nifti").model_copy(update={"id": "case_id"})


def test_labels_csv_rows_outside_the_batch_repeated_or_out_of_domain_are_rejected_alone(tmp_path):
    """A path from labels.csv that is not an entry of the batch is data: the rejection names its row, never it."""
    batch, outside = tmp_path / "batch", tmp_path / f"{CANARY}_elsewhere.nii.gz"
    rows = _nifti_batch(batch, 3)
    rows[3] = "v2.nii.gz,7,c2"  # row 3: a label outside the classes
    write_nifti(outside, phantom(np.random.default_rng(0), False, 8, 10))
    shutil.copy(batch / "v0.nii.gz", batch / "unlisted.nii.gz")
    rows += [f"../{outside.name},0,c4", f"{outside},1,c5", "v1.nii.gz,0,c6", f"{CANARY}_missing.nii.gz,1,c7"]
    rows += ["v\x000.nii.gz,1,c8"]
    (batch / "labels.csv").write_text("\n".join(rows) + "\n")
    before = hashlib.sha256(outside.read_bytes()).hexdigest()
    result = read_volume_batch(batch, _listed_spec())
    assert sorted(result.records["id"]) == ["c0", "c1"]
    assert dict(result.rejected) == {
        "v2.nii.gz": "its label is outside the task's classes (0, 1)",
        "labels.csv row 4": "path escapes the batch folder ('..')",
        "labels.csv row 5": "absolute path: files must be named relative to the batch folder",
        "labels.csv row 6": "names the volume of row 2 again (one volume is one record)",
        "labels.csv row 7": "file listed but not found",
        "labels.csv row 8": "file name contains a backslash or a NUL byte",
        "unlisted.nii.gz": "volume file not listed in labels.csv",
    }
    assert CANARY not in repr(result.rejected) and hashlib.sha256(outside.read_bytes()).hexdigest() == before


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (None, r"no labels\.csv: a nifti batch names each record's volume in its 'file' column"),
        (b"", r"labels\.csv: not a readable CSV file"),
        (b"path,label\nv0.nii.gz,0\n", r"does not name the file column 'file' \(volume\.file_column;"),
    ],
)
def test_a_batch_without_a_usable_labels_csv_is_refused_whole(tmp_path, labels, match):
    _nifti_batch(tmp_path, 2)
    if labels is None:
        (tmp_path / "labels.csv").unlink()
    else:
        (tmp_path / "labels.csv").write_bytes(labels)
    with pytest.raises(ImageBatchError, match=match):
        read_volume_batch(tmp_path, _listed_spec())


# ---------------------------------------------------------------- through the CLI


def _cli_batch(batch: Path, outside: Path) -> dict[str, str]:
    """Good phantom series and, beside them, hostile ones this file adds; returns record -> the reason expected."""
    rng = np.random.default_rng(5)
    rows = ["file,label,case_id,patient_ref"]
    for i in range(24):
        write_series(batch / f"good_{i:02d}", ct_slices(phantom(rng, i % 2 == 1, 10, 12)), seed=i)
        rows.append(f"good_{i:02d},{i % 2},case_{i:02d},pt_{i:02d}")
    bad = {
        "bad_spacing": (_spacing([0.0, 0.0]), r"PixelSpacing \[0\.0, 0\.0\] is not positive"),
        "bad_modality": (_one(3, Modality="MR"), r"slices from 2 modalities"),
        "bad_slope": (_one(2, RescaleSlope=0), r"malformed or zero RescaleSlope"),
    }
    expected = {}
    for name, (change, reason) in bad.items():
        slices = ct_slices(phantom(rng, True, 10, 12))
        change(slices)
        write_series(batch / name, slices)
        rows.append(f"{name},1,{name},pt_{name}")
        expected[name] = reason
    write_series(batch / "bad_truncated", ct_slices(phantom(rng, True, 10, 12)))
    last = sorted((batch / "bad_truncated").iterdir())[-1]
    last.write_bytes(last.read_bytes()[:400])
    rows += ["bad_truncated,1,bad_truncated,pt_t", f"../{outside.name},1,x_out,pt_x", "good_00,1,again,pt_a"]
    rows[2] = rows[2].replace(",1,", ",7,")  # good_01: a label outside the classes
    expected |= {
        "bad_truncated": r"file 10 of 10 \(in name order\) is a DICOM image whose header stops short",
        "good_01": r"its label is outside the task's classes \(0, 1\)",
        "labels.csv row 29": r"path escapes the batch folder",
        "labels.csv row 30": r"names the volume of row 1 again",
    }
    (batch / "labels.csv").write_text("\n".join(rows) + "\n")
    (batch / "_READY").touch()
    return expected


@pytest.mark.slow
def test_hostile_series_through_the_cli_are_quarantined_alone_and_the_good_ones_train(tmp_path):
    data, outside = tmp_path / "data", tmp_path / "slice_outside.dcm"
    write_series(tmp_path / "src", ct_slices(phantom(np.random.default_rng(0), False, 2, 12)))
    shutil.move(next((tmp_path / "src").iterdir()), outside)
    spec = {
        "name": "ct_hostile",
        "modality": "volume",
        "label": "label",
        "positive": "1",
        "classes": ["0", "1"],
        "id": "case_id",
        "patient_id": "patient_ref",
        "volume": {"format": "dicom_series", "size": 16, "width": 4, "intensity": {"ct_window": [-200, 400]}},
        "training": {"seed": 1, "epochs": 1, "batch_size": 8, "time_budget_s": 10, "trials": 1},
        "evaluation": {"n_bootstrap": 100},
        "promotion": {"auroc_floor": 0.0, "slope_band": [0.0, 1e9]},
    }
    batch = data / "landing" / spec["name"] / "batch_0001"
    expected = _cli_batch(batch, outside)
    before = outside.read_bytes()
    env = instance_env(tmp_path / "home", data, tmp_path / "tasks", [spec])
    done = run_cli([*MEDDIAG, "update", spec["name"]], env=env, timeout=600, expect_rc=0)
    printed = done.stdout + done.stderr

    assert (data / "models" / spec["name"] / "champion.json").is_file(), printed[-3000:]
    for record, reason in expected.items():  # each in the CLI's own output, named by its series or row
        assert re.search(rf"file {re.escape(record)} quarantined: .*{reason}", printed), (record, printed[-3000:])
    aside = data / "quarantine" / spec["name"] / "batch_0001" / "files"
    assert sorted(p.name for p in aside.iterdir()) == sorted(r for r in expected if not r.startswith("labels"))
    assert outside.read_bytes() == before and (batch / "good_00").is_dir() and (batch / "good_02").is_dir()
    assert "Traceback" not in printed and not [p for p in PHI if p in printed]
