"""SYNTHETIC labelled CT volumes for the volume modality's end-to-end tests, written as DICOM series and as NIfTI
files: a soft-tissue phantom (an ellipsoid of about 40 HU in air) with or without a bright lesion (about 300 HU).
No patient data: every patient and study tag is a canary that must never leave the landing folder."""

from __future__ import annotations

import random
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

CANARY_NAME = "CANARY_PATIENT_NAME"
CANARY_ID = "CANARY_PATIENT_ID_4242"
CANARY_PRIVATE = "CANARY_PRIVATE_TAG_PHI"
UID_ROOT = "1.2.999.4242."  # every UID the builder writes starts so: a UID in any output is found by it
PHI = (CANARY_NAME, CANARY_ID, CANARY_PRIVATE, "CANARY_INSTITUTION", "CANARY_ACCESSION", "19700101", UID_ROOT)
SPACING = (2.5, 1.5, 1.5)  # z, y, x in mm
INTERCEPT = -1024.0


def phantom(rng: np.random.Generator, lesion: bool, depth: int, side: int) -> np.ndarray:
    """HU (z, y, x): air, an ellipsoid of soft tissue, and with ``lesion`` a bright ball off its centre."""
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in (depth, side, side)), indexing="ij")
    hu = np.where((z / 0.9) ** 2 + (y / 0.8) ** 2 + (x / 0.7) ** 2 <= 1, 40.0, -1000.0)
    if lesion:
        cz, cy, cx = rng.uniform(-0.3, 0.3, 3)
        hu[(z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= 0.3**2] = 300.0
    return hu + rng.normal(0, 15, hu.shape)


def ct_slices(hu: np.ndarray, spacing=SPACING, patient: str = CANARY_ID) -> list[Dataset]:
    """One CT slice per z of ``hu`` (z, y, x in RAS): axial, stored as uint16 with RescaleIntercept -1024 (the reader must
    apply it), every patient and study tag a canary, PHI in a private tag too."""
    study, series = generate_uid(UID_ROOT), generate_uid(UID_ROOT)
    out = []
    for k, plane in enumerate(hu):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = uid = generate_uid(UID_ROOT)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uid
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = CANARY_NAME, patient, "19700101"
        ds.InstitutionName, ds.AccessionNumber = "CANARY_INSTITUTION", "CANARY_ACCESSION"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, series, "CT"
        ds.private_block(0x0011, "CANARY_CREATOR", create=True).add_new(0x01, "LO", CANARY_PRIVATE)
        ds.ImagePositionPatient = [0.0, 0.0, float(k * spacing[0])]
        # LPS direction cosines: columns run to the patient's right, rows to the front, so that ``hu``'s (z, y, x)
        # are RAS's (the model's axes) and the reader has to flip both in-plane axes.
        ds.ImageOrientationPatient = [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[2])]
        ds.SliceThickness = float(spacing[0])
        pixels = np.clip(plane - INTERCEPT, 0, 4095).astype(np.uint16)
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, INTERCEPT
        ds.PixelData = pixels.tobytes()
        out.append(ds)
    return out


def write_series(folder: Path, slices: list[Dataset], seed: int = 0) -> None:
    """The slices under ``folder`` in a random file order, their InstanceNumbers shuffled, the patient's name in
    every file name (as some exports do)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    names, numbers = list(range(len(slices))), list(range(1, len(slices) + 1))
    rng.shuffle(names)
    rng.shuffle(numbers)
    for ds, name, number in zip(slices, names, numbers, strict=True):
        ds.InstanceNumber = number
        ds.save_as(folder / f"{CANARY_NAME}_{name:03d}.dcm", enforce_file_format=True)


def write_nifti(path: Path, hu: np.ndarray, spacing=SPACING) -> None:
    """``hu`` (z, y, x) as a NIfTI in LAS (x flipped by the affine: the reader must reorient), PHI in descrip."""
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([-spacing[2], spacing[1], spacing[0], 1.0])
    img = nib.Nifti1Image(np.ascontiguousarray(hu.transpose(2, 1, 0)[::-1]).astype(np.int16), affine)
    img.header["descrip"] = CANARY_NAME.encode()
    nib.save(img, path)


def write_volume_batch(batch: Path, fmt: str, n: int, seed: int, labelled: bool = True, side: int = 24) -> list[str]:
    """``n`` phantoms (every other one with a lesion) as ``dicom_series`` folders or ``nifti`` files under
    ``batch``, a labels.csv (file, label, case_id, patient_ref) and ``_READY``; returns the files column."""
    rng = np.random.default_rng(seed)
    rows, files = ["file,label,case_id,patient_ref"], []
    for i in range(n):
        lesion = i % 2 == 1
        hu = phantom(rng, lesion, int(rng.integers(16, 25)), side)
        rel = f"series_{seed}_{i:03d}" if fmt == "dicom_series" else f"vol_{seed}_{i:03d}.nii.gz"
        if fmt == "dicom_series":
            write_series(batch / rel, ct_slices(hu), seed=seed * 1000 + i)
        else:
            write_nifti(batch / rel, hu)
        rows.append(f"{rel},{int(lesion) if labelled else ''},case_{seed}_{i:03d},pt_{seed}_{i:03d}")
        files.append(rel)
    batch.mkdir(parents=True, exist_ok=True)
    (batch / "labels.csv").write_text("\n".join(rows) + "\n")
    (batch / "_READY").touch()
    return files
