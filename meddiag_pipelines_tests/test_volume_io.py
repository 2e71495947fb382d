"""Volume readers (issue 26): the real volumes that ship in pydicom, pydicom-data and nibabel, read with their
geometry checked; a real volume written as a DICOM series in random file order reads back as the NIfTI it came
from; every hostile input is refused with a reason that names the record and never a patient detail."""

from __future__ import annotations

import gzip
import hashlib
import io
import random
import shutil
import tempfile
import tracemalloc
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nibabel.testing import data_path as NIBABEL_DATA
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

from meddiag_pipelines.imaging.volume_io import Volume, VolumeRefused, list_series, read_volume, to_model_input

warnings.filterwarnings("ignore", module="pydicom")

BIG = 10**8
CANARY = "CANARY_PATIENT_NAME"
CANARY_ID = "CANARY_ID_4242"
PHI = (CANARY, CANARY_ID, "19700101", "CANARY_HOSPITAL", "CANARY_ACCESSION", "CANARY_PRIVATE")
DICOMDIR_TESTS = Path(get_testdata_file("DICOMDIR")).parent  # pydicom/data/test_files/dicomdirtests
NIBABEL = Path(NIBABEL_DATA)


def refused(batch: Path, rel: str, fmt: str, match: str, max_voxels: int = BIG) -> str:
    """The refusal's message, asserted to match and to hold no planted patient detail or UID."""
    with pytest.raises(VolumeRefused, match=match) as info:
        read_volume(batch, rel, fmt, max_voxels=max_voxels)
    message = str(info.value)
    for canary in PHI:
        assert canary not in message
    assert "1.2.826.0.1.3680043" not in message  # pydicom's UID root: no UID in a message
    return message


# ---------------------------------------------------------------- writing a real volume as a DICOM series


def anatomical() -> nib.Nifti1Image:
    return nib.load(NIBABEL / "anatomical.nii")


def _lps(v: np.ndarray) -> np.ndarray:
    return v * np.array([-1.0, -1.0, 1.0])


def series_datasets(img: nib.Nifti1Image, intercept: float = -1024.0) -> list[Dataset]:
    """One CT slice per k of ``img`` (a real volume), geometry from its affine, patient tags filled with canaries,
    stored as uint16 with a RescaleIntercept so the reader must apply it."""
    data = np.asarray(img.dataobj).astype(np.float64)
    aff = img.affine
    zooms = np.sqrt((aff[:3, :3] ** 2).sum(axis=0))
    row_dir, col_dir = _lps(aff[:3, 0] / zooms[0]), _lps(aff[:3, 1] / zooms[1])
    study, series = generate_uid(), generate_uid()
    out = []
    for k in range(data.shape[2]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = uid = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uid
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = CANARY, CANARY_ID, "19700101"
        ds.InstitutionName, ds.AccessionNumber = "CANARY_HOSPITAL", "CANARY_ACCESSION"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, series, "CT"
        ds.private_block(0x0011, "CANARY_PRIVATE", create=True).add_new(0x01, "LO", CANARY)
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [float(x) for x in _lps((aff @ [0, 0, k, 1])[:3])]
        ds.ImageOrientationPatient = [float(x) for x in (*row_dir, *col_dir)]
        ds.PixelSpacing = [float(zooms[1]), float(zooms[0])]
        ds.SliceThickness = float(zooms[2])
        pixels = (data[:, :, k].T - intercept).astype(np.uint16)  # rows along j, columns along i
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, intercept
        ds.PixelData = pixels.tobytes()
        out.append(ds)
    return out


def write_series(folder: Path, datasets: list[Dataset], order: list[int] | None = None, seed: int = 0) -> list[Path]:
    """The slices under ``folder`` with file names (holding the canary) and InstanceNumbers in a shuffled order
    unrelated to their positions; returns the paths in slice order."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    if order is None:
        order = list(range(len(datasets)))
        rng.shuffle(order)
    numbers = list(range(1, len(datasets) + 1))
    rng.shuffle(numbers)
    paths = []
    for k, ds in enumerate(datasets):
        ds.InstanceNumber = numbers[k]
        path = folder / f"{CANARY}_{order[k]:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def small_series() -> list[Dataset]:
    """A small real-derived series (8x8x6 of anatomical.nii, 2 mm) for the hostile cases."""
    return series_datasets(small_source())


@pytest.fixture(scope="module")
def anat_series(tmp_path_factory) -> Path:
    batch = tmp_path_factory.mktemp("batch")
    write_series(batch / "study" / "series1", series_datasets(anatomical()))
    (batch / "study" / "README.txt").write_text("exported by a viewer")  # not DICOM: skipped, not a slice
    return batch


# ---------------------------------------------------------------- real DICOM series


def test_pydicom_ct_series_reads_with_its_geometry():
    vol = read_volume(DICOMDIR_TESTS, "98892001/CT5N", "dicom_series", max_voxels=BIG)
    assert vol.array.shape == (16, 16, 5) and vol.array.dtype == np.float32
    assert vol.spacing == pytest.approx((0.488281, 0.488281, 2.5))
    assert vol.modality == "CT"
    # The file highest along the patient's feet-head axis (z = 8.76 mm) is the last axial slice; its rows run
    # anterior to posterior and its columns right to left (LPS), so in RAS both are reversed.
    ds = pydicom.dcmread(DICOMDIR_TESTS / "98892001/CT5N/2062")
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(vol.array[:, :, -1], hu[::-1, ::-1].T)
    lowest = pydicom.dcmread(DICOMDIR_TESTS / "98892001/CT5N/3353")
    lowest_hu = lowest.pixel_array * float(lowest.RescaleSlope) + float(lowest.RescaleIntercept)
    assert float(lowest.RescaleIntercept) == -1024.0  # so HU differ from the stored values
    np.testing.assert_array_equal(vol.array[:, :, 0], lowest_hu[::-1, ::-1].T)


@pytest.mark.parametrize(
    ("rel", "match"),
    [
        ("77654033/CT2", r"77654033/CT2: missing slice\(s\): a gap of 202\.50 mm where slices are 1\.25 mm apart"),
        ("98892001/CT2N", r"98892001/CT2N: mixed slice orientations"),
        ("98892003/MR700", r"98892003/MR700: mixed slice orientations"),
        (
            "98892003/MR2",
            r"98892003/MR2 holds 2 DICOM series that could be volumes besides 1 localizer or single-image",
        ),
        ("98892003/MR1", r"98892003/MR1 holds no DICOM series that can be a volume \(3 localizer or single-image\)"),
    ],
)
def test_pydicom_real_series_that_are_not_volumes_are_refused(rel, match):
    refused(DICOMDIR_TESTS, rel, "dicom_series", match)


def test_copies_of_one_real_slice_are_duplicated_positions(tmp_path):
    for name in ("MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm"):
        shutil.copy(get_testdata_file(name), tmp_path / f"{CANARY}_{name}")
    refused(tmp_path, ".", "dicom_series", r"\.: duplicated slice position \(2 slice\(s\)")


def test_pydicom_data_enhanced_ct_reads_per_frame_geometry():
    path = Path(get_testdata_file("eCT_Supplemental.dcm"))
    vol = read_volume(path.parent, path.name, "dicom_series", max_voxels=BIG)
    assert vol.array.shape == (512, 512, 2)
    assert vol.spacing == pytest.approx((0.388672, 0.388672, 10.0))  # frames at z = -159 and -149 mm
    assert vol.modality == "CT"
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float32) - 1024.0  # the shared Pixel Value Transformation: intercept -1024
    # Row direction -x (LPS: towards the patient's right, +R), column direction +y (posterior, -A).
    np.testing.assert_array_equal(vol.array[:, :, 0], hu[0][::-1, :].T)
    np.testing.assert_array_equal(vol.array[:, :, 1], hu[1][::-1, :].T)


def test_pydicom_data_enhanced_mr_without_frame_positions_is_refused():
    path = Path(get_testdata_file("emri_small.dcm"))  # its functional groups were stripped: no frame positions
    refused(
        path.parent,
        path.name,
        "dicom_series",
        r"emri_small\.dcm: a multi-frame file without a per-frame position "
        r"for each of its 10 frames",
    )


def test_list_series_hashes_uids_and_counts_slices():
    infos = list_series(DICOMDIR_TESTS)
    ct5 = [s for s in infos if s.folders == ("98892001/CT5N",)]
    assert len(ct5) == 1 and ct5[0].n_slices == 5 and ct5[0].modality == "CT"
    assert len([s for s in infos if s.folders == ("98892003/MR2",)]) == 3
    uid = str(pydicom.dcmread(DICOMDIR_TESTS / "98892001/CT5N/2062", stop_before_pixels=True).SeriesInstanceUID)
    assert ct5[0].key == hashlib.sha256(uid.encode()).hexdigest()[:16] and uid not in repr(infos)


def test_list_series_groups_files_spread_over_folders(tmp_path):
    paths = write_series(tmp_path / "a", small_series())
    for p in paths[::2]:
        (tmp_path / "b").mkdir(exist_ok=True)
        p.rename(tmp_path / "b" / p.name)
    (tmp_path / "notes.txt").write_text("not a slice")
    (info,) = list_series(tmp_path)
    assert info.folders == ("a", "b") and info.n_slices == 6 and info.n_files == 6
    assert CANARY not in repr(info)


# ---------------------------------------------------------------- real NIfTI files


def test_nibabel_anatomical_reads_in_ras():
    vol = read_volume(NIBABEL, "anatomical.nii", "nifti", max_voxels=BIG)
    img = anatomical()
    assert nib.aff2axcodes(img.affine) == ("L", "A", "S")  # so the reader must flip axis 0
    assert vol.array.shape == (33, 41, 25) and vol.spacing == (2.0, 2.0, 2.0) and vol.modality is None
    np.testing.assert_array_equal(vol.array, np.asarray(img.dataobj, dtype=np.float32)[::-1])
    np.testing.assert_array_equal(vol.array, nib.as_closest_canonical(img).get_fdata(dtype=np.float32))


@pytest.mark.parametrize(
    ("rel", "shape", "spacing"),
    [("standard.nii.gz", (4, 5, 7), (1.0, 3.0, 2.0)), ("reoriented_anat_moved.nii", (21, 26, 22), (4.0, 4.0, 4.0))],
)
def test_nibabel_3d_files_read_with_their_geometry(rel, shape, spacing):
    vol = read_volume(NIBABEL, rel, "nifti", max_voxels=BIG)
    img = nib.load(NIBABEL / rel)
    assert vol.array.shape == shape and vol.spacing == pytest.approx(spacing)
    np.testing.assert_allclose(vol.array, nib.as_closest_canonical(img).get_fdata(dtype=np.float32))


def test_nifti2_gz_written_from_a_real_volume_reads_back(tmp_path):
    img = anatomical()
    nib.save(nib.Nifti2Image(np.asarray(img.dataobj), img.affine), tmp_path / "anat2.nii.gz")
    vol = read_volume(tmp_path, "anat2.nii.gz", "nifti", max_voxels=BIG)
    np.testing.assert_array_equal(vol.array, read_volume(NIBABEL, "anatomical.nii", "nifti", max_voxels=BIG).array)


def test_nibabel_4d_and_nan_files_are_refused():
    refused(NIBABEL, "example_nifti2.nii.gz", "nifti", r"example_nifti2\.nii\.gz: a NIfTI with 2 volumes \(4D\)")
    refused(NIBABEL, "functional.nii", "nifti", r"functional\.nii: a NIfTI with 20 volumes \(4D\)")
    refused(NIBABEL, "resampled_anat_moved.nii", "nifti", r"resampled_anat_moved\.nii: the volume holds NaN")


# ---------------------------------------------------------------- a real volume written as a DICOM series


def test_series_in_random_file_order_reads_as_the_nifti_it_came_from(anat_series):
    vol = read_volume(anat_series, "study/series1", "dicom_series", max_voxels=BIG)
    nifti = read_volume(NIBABEL, "anatomical.nii", "nifti", max_voxels=BIG)
    assert vol.modality == "CT" and vol.spacing == pytest.approx(nifti.spacing)
    np.testing.assert_array_equal(vol.array, nifti.array)  # order, orientation and RescaleIntercept all right
    # A study folder holding that one series reads the same.
    np.testing.assert_array_equal(read_volume(anat_series, "study", "dicom_series", max_voxels=BIG).array, vol.array)


def small_source() -> nib.Nifti1Image:
    img = anatomical()
    return nib.Nifti1Image(np.asarray(img.dataobj)[10:18, 10:18, 5:11], img.affine)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.permutations(range(6)))
def test_any_file_order_gives_the_identical_volume(order):
    source = small_source()
    with tempfile.TemporaryDirectory() as tmp:
        write_series(
            Path(tmp) / "s", series_datasets(source), order=list(order), seed=sum(i * o for i, o in enumerate(order))
        )
        vol = read_volume(Path(tmp), "s", "dicom_series", max_voxels=BIG)
    np.testing.assert_array_equal(vol.array, nib.as_closest_canonical(source).get_fdata(dtype=np.float32))
    assert vol.spacing == (2.0, 2.0, 2.0)


# ---------------------------------------------------------------- hostile DICOM series


def hostile(tmp_path: Path, change=None) -> Path:
    """A small valid series in ``tmp_path/series``; ``change(datasets)`` alters it before it is written."""
    datasets = small_series()
    if change:
        change(datasets)
    write_series(tmp_path / "series", datasets)
    return tmp_path


def test_missing_slice_is_refused(tmp_path):
    paths = write_series(tmp_path / "series", small_series())
    paths[3].unlink()
    refused(
        tmp_path, "series", "dicom_series", r"series: missing slice\(s\): a gap of 4\.00 mm where slices are 2\.00 mm"
    )


def test_duplicated_slice_is_refused(tmp_path):
    paths = write_series(tmp_path / "series", small_series())
    shutil.copy(paths[2], tmp_path / "series" / f"{CANARY}_copy.dcm")
    refused(tmp_path, "series", "dicom_series", r"series: duplicated slice position \(1 slice")


def test_uneven_spacing_is_refused(tmp_path):
    def shift(ds):
        pos = list(ds[3].ImagePositionPatient)
        ds[3].ImagePositionPatient = [pos[0], pos[1], pos[2] + 0.6]

    refused(
        hostile(tmp_path, shift), "series", "dicom_series", r"series: uneven slice spacing \(steps from 1\.40 to 2\.60"
    )


def test_mixed_orientations_are_refused(tmp_path):
    def tilt(ds):
        ds[2].ImageOrientationPatient = [1, 0, 0, 0, 0.8, -0.6]

    refused(hostile(tmp_path, tilt), "series", "dicom_series", r"series: mixed slice orientations")


def test_slices_shifted_in_plane_are_refused(tmp_path):
    def tilt(ds):
        pos = list(ds[2].ImagePositionPatient)
        ds[2].ImagePositionPatient = [pos[0] + 1.0, pos[1], pos[2]]  # half a pixel: a gantry tilt or a bad slice

    refused(hostile(tmp_path, tilt), "series", "dicom_series", r"series: the slices are not stacked along their normal")


def test_mixed_sizes_are_refused(tmp_path):
    def shrink(ds):
        ds[1].Rows, ds[1].Columns, ds[1].PixelData = 4, 4, np.zeros((4, 4), np.uint16).tobytes()

    refused(
        hostile(tmp_path, shrink), "series", "dicom_series", r"series: mixed slice sizes \(Rows x Columns: 4x4, 8x8\)"
    )


def test_slices_from_two_patients_are_refused(tmp_path):
    def other(ds):
        ds[4].PatientID = CANARY_ID + "_OTHER"

    message = refused(
        hostile(tmp_path, other), "series", "dicom_series", r"series: the series holds slices from 2 patients"
    )
    assert "OTHER" not in message


def test_declared_size_over_max_voxels_is_refused_before_decoding(tmp_path):
    # Headers declare 6 slices of 8x8 = 384 voxels; the pixel data is garbage, never reached.
    def garble(ds):
        for d in ds:
            d.PixelData = b"\x00\x01"

    refused(
        hostile(tmp_path, garble),
        "series",
        "dicom_series",
        r"series: declares 6 slices of 8x8 = 384 voxels, "
        r"over max_voxels 383 \(refused before decoding\)",
        max_voxels=383,
    )


def test_2gb_declared_in_a_1kb_file_is_refused(tmp_path):
    def huge(ds):
        for d in ds:
            d.Rows = d.Columns = 18000  # 6 x 18000^2 x 2 bytes: 3.9 GB declared in files of about 1 KB
            d.PixelData = b"\x00\x00" * 16

    batch = hostile(tmp_path, huge)
    assert max(p.stat().st_size for p in (batch / "series").iterdir()) < 2048
    refused(batch, "series", "dicom_series", r"series: declares 6 slices of 18000x18000 = 1944000000 voxels")
    refused(
        batch,
        "series",
        "dicom_series",
        r"series: file \d of 6 \(in name order\): the file \(\d+ bytes\) is shorter "
        r"than the pixel data its header declares \(648000000 bytes\)",
        max_voxels=2 * 10**9,
    )


def test_deflate_bomb_slice_is_refused_while_it_streams(tmp_path):
    def deflate(ds):
        for d in ds:
            d.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        ds[2].PixelData = bytes(24 << 20)  # 24 MB of zeros behind a header declaring 8x8 pixels

    batch = hostile(tmp_path, deflate)
    assert max(p.stat().st_size for p in (batch / "series").iterdir()) < 64 << 10
    refused(
        batch,
        "series",
        "dicom_series",
        r"series: file \d of 6 \(in name order\): a deflated DICOM that inflates "
        r"beyond its declared pixel data",
    )


def test_symlinked_slice_is_refused(tmp_path):
    batch = tmp_path / "batch"
    paths = write_series(batch / "series", small_series())
    outside = tmp_path / f"{CANARY}_outside.dcm"
    paths[2].rename(outside)
    (batch / "series" / f"{CANARY}_link.dcm").symlink_to(outside)
    refused(batch, "series", "dicom_series", r"series: file \d of 6 \(in name order\) is a symbolic link, refused")


def test_paths_outside_the_batch_are_refused(tmp_path):
    batch = tmp_path / "batch"
    batch.mkdir()
    write_series(tmp_path / "elsewhere", small_series())
    refused(batch, "../elsewhere", "dicom_series", r"\.\./elsewhere: path escapes the batch folder")
    refused(batch, str(tmp_path / "elsewhere"), "dicom_series", r"absolute path")
    (batch / "linked").symlink_to(tmp_path / "elsewhere")
    refused(batch, "linked", "dicom_series", r"linked: symbolic link refused")


def test_what_is_not_a_dicom_image_is_refused(tmp_path):
    shutil.copy(NIBABEL / "anatomical.nii", tmp_path / "anat.nii")
    (tmp_path / "empty").mkdir()
    refused(tmp_path, "anat.nii", "dicom_series", r"anat\.nii is or holds no DICOM image")
    refused(tmp_path, "empty", "dicom_series", r"empty is or holds no DICOM image")
    refused(tmp_path, "missing", "dicom_series", r"missing: file listed but not found")
    refused(tmp_path, "empty", "nifti", r"empty: a NIfTI volume is a \.nii or \.nii\.gz file")


def test_a_real_study_folder_reads_its_axial_series_beside_the_scout():
    # 98892001 holds a CT scout (ImageType LOCALIZER, 2 images) beside the 5-slice axial series CT5N.
    study = read_volume(DICOMDIR_TESTS, "98892001", "dicom_series", max_voxels=BIG)
    np.testing.assert_array_equal(
        study.array, read_volume(DICOMDIR_TESTS, "98892001/CT5N", "dicom_series", max_voxels=BIG).array
    )


def test_a_lone_image_beside_a_series_is_set_aside(tmp_path):
    write_series(tmp_path / "study" / "a", small_series())
    write_series(tmp_path / "study" / "b", small_series()[:1])
    assert read_volume(tmp_path, "study", "dicom_series", max_voxels=BIG).array.shape[2] == 6


def test_two_series_in_a_study_folder_are_refused_with_their_count(tmp_path):
    write_series(tmp_path / "study" / "a", small_series())
    write_series(tmp_path / "study" / "b", small_series())
    refused(
        tmp_path, "study", "dicom_series", r"study holds 2 DICOM series that could be volumes: one record is one series"
    )


# ---------------------------------------------------------------- hostile NIfTI


def nifti_with(tmp_path: Path, name: str, edit=None, shape=(8, 8, 8)) -> Path:
    img = nib.Nifti1Image(np.arange(np.prod(shape), dtype=np.int16).reshape(shape), np.diag([2.0, 2.0, 3.0, 1.0]))
    img.header["descrip"] = CANARY.encode()
    img.header["aux_file"] = CANARY_ID.encode()
    nib.save(img, tmp_path / name)
    if edit:  # on the written header: nibabel rewrites the geometry fields from the image's affine when saving
        raw = (tmp_path / name).read_bytes()
        hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(raw), check=False)
        edit(hdr)
        (tmp_path / name).write_bytes(hdr.binaryblock + raw[348:])
    return tmp_path


def test_a_good_nifti_with_phi_in_its_text_fields_reads(tmp_path):
    vol = read_volume(nifti_with(tmp_path, "ok.nii.gz"), "ok.nii.gz", "nifti", max_voxels=BIG)
    assert vol.array.shape == (8, 8, 8) and vol.spacing == (2.0, 2.0, 3.0)


@pytest.mark.parametrize("bad", [np.nan, 0.0, -2.0])
def test_nifti_with_a_bad_spacing_is_refused(tmp_path, bad):
    def spacing(hdr):
        hdr["pixdim"][2] = bad

    batch = nifti_with(tmp_path, "bad.nii", spacing)
    refused(batch, "bad.nii", "nifti", r"bad\.nii: voxel spacing \(pixdim\) .* is not finite and positive")


def test_nifti_with_a_non_invertible_affine_is_refused(tmp_path):
    def flat(hdr):
        hdr.set_sform(np.diag([2.0, 2.0, 0.0, 1.0]), code=1)

    refused(nifti_with(tmp_path, "flat.nii", flat), "flat.nii", "nifti", r"flat\.nii: its affine .* is not invertible")


def test_nifti_declared_over_max_voxels_is_refused_from_its_header(tmp_path):
    batch = nifti_with(tmp_path, "big.nii.gz", shape=(8, 8, 8))
    refused(
        batch, "big.nii.gz", "nifti", r"big\.nii\.gz: declares 8x8x8 = 512 voxels, over max_voxels 511", max_voxels=511
    )


def test_nifti_declaring_2gb_in_a_1kb_file_is_refused(tmp_path):
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((1300, 1300, 1300))  # 2.2 GB of int8 declared
    hdr.set_data_dtype(np.int8)
    hdr.set_data_offset(352)
    hdr["descrip"] = CANARY.encode()
    raw = hdr.binaryblock + b"\x00" * 4 + b"\x01" * 600
    (tmp_path / "huge.nii").write_bytes(raw)
    assert len(raw) < 1024
    refused(
        tmp_path,
        "huge.nii",
        "nifti",
        r"huge\.nii: the file is too short for the volume its header declares "
        r"\(2197000352 bytes declared, 952 present\)",
        max_voxels=3 * 10**9,
    )


def test_gzip_bomb_is_refused_without_inflating_it(tmp_path):
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((64, 64, 64))  # 256 KB of uint8 declared
    hdr.set_data_dtype(np.uint8)
    hdr.set_data_offset(352)
    zeros = bytes(1 << 20)
    with gzip.open(tmp_path / "bomb.nii.gz", "wb", compresslevel=9) as gz:
        gz.write(hdr.binaryblock + b"\x00" * 4)
        for _ in range(256):  # 256 MB of zeros, a file of about 250 KB
            gz.write(zeros)
    assert (tmp_path / "bomb.nii.gz").stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        refused(tmp_path, "bomb.nii.gz", "nifti", r"bomb\.nii\.gz: decompresses beyond the size its header declares")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20  # never more than a few MB held, against 256 MB inside


def test_truncated_gzip_is_refused(tmp_path):
    nifti_with(tmp_path, "ok.nii.gz", shape=(32, 32, 32))
    data = (tmp_path / "ok.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    refused(tmp_path, "cut.nii.gz", "nifti", r"cut\.nii\.gz: (not a valid gzip stream|the file is too short)")


# ---------------------------------------------------------------- model input


def test_ct_window_maps_hu_to_unit_range_and_pads_with_the_floor():
    arr = np.full((10, 10, 10), -2000.0, dtype=np.float32)
    arr[4:6, 4:6, 4:6] = 1000.0
    arr[0, 0, 0] = -300.0
    out = to_model_input(
        Volume(arr, (1.0, 1.0, 1.0), "CT"), spacing=None, size=12, intensity={"ct_window": [-1000, 400]}
    )
    assert out.shape == (12, 12, 12) and out.dtype == np.float32
    assert out[5:7, 5:7, 5:7].min() == 1.0  # 1000 HU clipped to the top (shifted by the 1-voxel pad)
    assert out[1, 1, 1] == pytest.approx(0.5)  # -300 HU is the window's middle
    assert out[0].max() == 0.0  # the pad


def test_resampling_keeps_physical_size_and_crops_to_the_centre():
    arr = np.zeros((20, 20, 20), dtype=np.float32)
    arr[8:12, 8:12, 8:12] = 100.0  # an 8 mm cube at 2 mm spacing
    out = to_model_input(
        Volume(arr, (2.0, 2.0, 2.0), "MR"), spacing=(1.0, 1.0, 1.0), size=24, intensity={"percentile": [0, 100]}
    )
    bright = out > 0.5
    assert out.shape == (24, 24, 24)
    assert 6 <= bright.sum(axis=(1, 2)).nonzero()[0].size <= 10  # about 8 voxels of 1 mm across
    centre = np.array(np.nonzero(bright)).mean(axis=1)
    np.testing.assert_allclose(centre, [11.5, 11.5, 11.5], atol=1.0)


def test_absurd_resampling_and_bad_intensity_are_refused():
    vol = Volume(np.zeros((8, 8, 8), np.float32), (2.0, 2.0, 2.0), None)
    with pytest.raises(VolumeRefused, match=r"would grow the volume 64 times"):
        to_model_input(vol, spacing=(0.5, 0.5, 0.5), size=8, intensity={"percentile": [1, 99]})
    with pytest.raises(ValueError, match=r"ct_window \[400\.0, -1000\.0\]"):
        to_model_input(vol, spacing=None, size=8, intensity={"ct_window": [400, -1000]})
    with pytest.raises(ValueError, match=r"intensity must be"):
        to_model_input(vol, spacing=None, size=8, intensity={"zscore": True})
