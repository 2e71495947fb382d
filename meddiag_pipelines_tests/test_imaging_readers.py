"""Image readers: PNG/JPEG folder, DICOM (real pydicom / pydicom-data files), MedMNIST npz, and every rejection."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import polars as pl
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from meddiag_pipelines.imaging.readers import (
    ImageBatchError,
    ImageRejected,
    load_pixels,
    npz_record_id,
    read_dicom_batch,
    read_image_batch,
)
from meddiag_pipelines.labels import multilabel_matrix
from meddiag_pipelines.specs import TaskSpec
from scripts.phantoms import write_phantom_batch

BASE_COLUMNS = [
    "id",
    "label",
    "patient_id",
    "source",
    "sha256",
    "height",
    "width",
    "channels",
    "bit_depth",
    "predefined_split",
    "intensity_min",
    "intensity_max",
]


def make_spec(fmt: str = "folder", subgroups: list[str] | None = None, **image) -> TaskSpec:
    return TaskSpec.model_validate(
        {
            "name": "imaging_test",
            "modality": "image",
            "label": "label",
            "id": "id",
            "patient_id": "patient_id",
            "subgroups": subgroups if subgroups is not None else ["sex"],
            "image": {"format": fmt, **image},
        }
    )


def write_csv(path: Path, rows: list[dict]) -> None:
    pl.DataFrame(rows).write_csv(path)


def problems(result) -> dict[str, str]:
    return dict(result.rejected)


def png_with_declared_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (a decompression bomb as far as the header goes)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


# ------------------------------------------------------------------------------------------------ folder


def test_folder_reads_good_images_and_rejects_bad_ones(tmp_path: Path) -> None:
    batch = write_phantom_batch(tmp_path / "batch", n=6, seed=3, size=32)
    labels = pl.read_csv(batch / "labels.csv")
    extra = []
    # an RGB JPEG and a 16-bit PNG that are fine
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(batch / "rgb.jpg")
    Image.fromarray(np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 200).save(batch / "deep.png")
    extra += [{"file": "rgb.jpg", "label": "normal", "id": "rgb", "patient_id": "p_rgb", "sex": "F"}]
    extra += [{"file": "deep.png", "label": None, "id": "deep", "patient_id": "p_deep", "sex": None}]
    # bad ones
    (batch / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    good_png = (batch / labels["file"][0]).read_bytes()
    (batch / "truncated.png").write_bytes(good_png[: len(good_png) // 2])
    (batch / "bomb.png").write_bytes(png_with_declared_size(100_000, 100_000))
    os.symlink(batch / labels["file"][1], batch / "link.png")
    outside = tmp_path / "outside.png"
    shutil.copy(batch / labels["file"][2], outside)
    for name in [
        "corrupt.png",
        "truncated.png",
        "bomb.png",
        "link.png",
        "../outside.png",
        "/etc/passwd",
        "missing.png",
    ]:
        extra.append({"file": name, "label": "normal", "id": f"bad_{name}", "patient_id": "p", "sex": "M"})
    extra.append(
        {"file": labels["file"][3], "label": "normal", "id": labels["id"][0], "patient_id": "p", "sex": "M"}
    )  # duplicate id
    (batch / "unlisted.png").write_bytes(good_png)
    rows = [dict(r) for r in labels.iter_rows(named=True)] + extra
    write_csv(batch / "labels.csv", rows)

    result = read_image_batch(batch, make_spec("folder", max_pixels=1_000_000))
    rec = result.records
    assert rec.columns == ["id", "label", "patient_id", "sex", *BASE_COLUMNS[3:]]
    assert sorted(rec["id"].to_list()) == sorted([*labels["id"].to_list(), "rgb", "deep"])
    first = rec.filter(pl.col("id") == labels["id"][0]).row(0, named=True)
    assert first["source"] == labels["file"][0] and first["label"] == labels["label"][0]
    assert (first["height"], first["width"], first["channels"], first["bit_depth"]) == (32, 32, 1, 8)
    assert first["predefined_split"] is None and first["sex"] in ("F", "M") and len(first["sha256"]) == 64
    assert rec.filter(pl.col("id") == "rgb").select("height", "width", "channels").row(0) == (20, 30, 3)
    deep = rec.filter(pl.col("id") == "deep").row(0, named=True)
    assert deep["bit_depth"] == 16 and deep["label"] is None  # empty label = unlabelled case to score

    p = problems(result)
    assert "not a readable PNG / JPEG" in p["corrupt.png"]
    assert "not a readable PNG / JPEG" in p["truncated.png"]
    assert "decompression-bomb" in p["bomb.png"]
    assert "symbolic link" in p["link.png"]
    # a path that is not a file of the batch is named by its labels.csv row, never echoed
    row = {
        name: f"labels.csv row {labels.height + 3 + i}"
        for i, name in enumerate(["../outside.png", "/etc/passwd", "missing.png"], start=4)
    }
    assert "escapes the batch folder" in p[row["../outside.png"]]
    assert "absolute path" in p[row["/etc/passwd"]]
    assert "not found" in p[row["missing.png"]]
    assert not any("outside" in f or "passwd" in f for f in p)
    assert "not listed" in p["unlisted.png"]
    assert "duplicate id" in p[labels["file"][3]]


def test_load_pixels_png_channels_and_range(tmp_path: Path) -> None:
    batch = tmp_path / "b"
    batch.mkdir()
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(grey).save(batch / "g.png")
    Image.fromarray(np.stack([grey, grey // 2, np.zeros_like(grey)], -1)).save(batch / "c.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(batch / "d.png")  # 16-bit, same picture
    one = load_pixels(batch, "g.png", make_spec())
    assert one.dtype == np.float32 and one.shape == (1, 16, 16)
    np.testing.assert_allclose(one[0], grey / 255.0, atol=1e-6)
    np.testing.assert_allclose(load_pixels(batch, "d.png", make_spec())[0], grey / 255.0, atol=1e-6)
    three = load_pixels(batch, "g.png", make_spec(channels=3))
    assert three.shape == (3, 16, 16) and np.allclose(three[0], three[2])
    luma = load_pixels(batch, "c.png", make_spec())
    np.testing.assert_allclose(luma[0], (0.299 * grey + 0.587 * (grey // 2)) / 255.0, atol=1e-5)


def test_folder_without_labels_csv_gives_unlabelled_cases(tmp_path: Path) -> None:
    batch = write_phantom_batch(tmp_path / "batch", n=3, seed=1, size=32)
    (batch / "labels.csv").unlink()
    (batch / "notes.txt").write_text("not an image")
    rec = read_image_batch(batch, make_spec()).records
    assert rec.height == 3
    assert rec["label"].null_count() == 3
    assert rec["id"].to_list() == rec["source"].to_list()  # ids derived from the relative path


def test_folder_batch_errors_are_raised(tmp_path: Path) -> None:
    batch = tmp_path / "b"
    batch.mkdir()
    (batch / "labels.csv").write_text("path,label\nx.png,1\n")
    with pytest.raises(ImageBatchError, match="file column"):
        read_image_batch(batch, make_spec())
    with pytest.raises(ImageBatchError, match="not a folder"):
        read_image_batch(tmp_path / "nope", make_spec())


# ------------------------------------------------------------------------------------------------ dicom


def copy_dicom(name: str, dest: Path) -> Path:
    src = get_testdata_file(name)
    assert src is not None, f"pydicom test file {name} missing"
    shutil.copy(src, dest)
    return dest


@pytest.fixture
def dicom_batch(tmp_path: Path) -> Path:
    batch = tmp_path / "dicom"
    batch.mkdir()
    good = {
        "ct.dcm": "CT_small.dcm",
        "mr.dcm": "MR_small.dcm",
        "cr.dcm": "RG1_UNCR.dcm",  # computed radiograph, MONOCHROME1, 1955 x 1841
        "multi.dcm": "emri_small.dcm",  # 10 frames
        "rle.dcm": "MR_small_RLE.dcm",  # RLE Lossless: decoded by pydicom itself
        "ybr.dcm": "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, YBR_FULL: decoded through Pillow
    }
    bad = {"jpegll.dcm": "JPEG-LL.dcm", "plan.dcm": "rtplan.dcm"}
    for dst, src in {**good, **bad}.items():
        copy_dicom(src, batch / dst)
    ct = (batch / "ct.dcm").read_bytes()
    (batch / "truncated.dcm").write_bytes(ct[: len(ct) // 2])
    (batch / "text.dcm").write_text("this is not DICOM")
    rows = []
    for i, name in enumerate([*good, *bad, "truncated.dcm", "text.dcm"]):
        rows.append({"file": name, "label": ["yes", "no"][i % 2], "id": f"case{i}", "sex": ["F", "M"][i % 2]})
    write_csv(batch / "labels.csv", rows)  # no patient_id column: the DICOM PatientID is used
    return batch


def test_dicom_folder_real_files(dicom_batch: Path) -> None:
    spec = make_spec("dicom")
    result = read_image_batch(dicom_batch, spec)
    rec = result.records
    by_source = {r["source"].split("#")[0]: r for r in rec.iter_rows(named=True)}
    assert set(by_source) == {"ct.dcm", "mr.dcm", "cr.dcm", "multi.dcm", "rle.dcm", "ybr.dcm"}
    assert (by_source["ct.dcm"]["height"], by_source["ct.dcm"]["width"], by_source["ct.dcm"]["bit_depth"]) == (
        128,
        128,
        16,
    )
    assert (by_source["cr.dcm"]["height"], by_source["cr.dcm"]["width"]) == (1955, 1841)
    assert by_source["ybr.dcm"]["channels"] == 3
    assert by_source["multi.dcm"]["source"] == "multi.dcm#5"  # one record per file: the middle frame
    assert by_source["ct.dcm"]["patient_id"] == str(pydicom.dcmread(dicom_batch / "ct.dcm").PatientID)
    assert by_source["rle.dcm"]["sha256"] == by_source["mr.dcm"]["sha256"]  # same pixels, other transfer syntax
    p = problems(result)
    assert set(p) == {"jpegll.dcm", "plan.dcm", "truncated.dcm", "text.dcm"}
    assert "JPEG Lossless" in p["jpegll.dcm"] and "cannot be decoded" in p["jpegll.dcm"]
    assert "without pixel data" in p["plan.dcm"]
    assert "truncated" in p["truncated.dcm"] or "corrupt" in p["truncated.dcm"]
    assert "not a DICOM file" in p["text.dcm"]
    for r in rec.iter_rows(named=True):
        arr = load_pixels(dicom_batch, r["source"], spec)
        assert arr.dtype == np.float32 and arr.shape == (1, r["height"], r["width"])
        assert 0.0 <= arr.min() and arr.max() <= 1.0 and arr.max() > arr.min()


def test_dicom_multiframe_all_frames(dicom_batch: Path) -> None:
    spec = make_spec("dicom")
    rec = read_dicom_batch(dicom_batch, spec, frames="all").records.filter(
        pl.col("source").str.starts_with("multi.dcm")
    )
    assert rec.height == 10
    assert rec["source"].to_list() == [f"multi.dcm#{f}" for f in range(10)]
    assert rec["id"].n_unique() == 10
    ds = pydicom.dcmread(dicom_batch / "multi.dcm")
    frame3 = load_pixels(dicom_batch, "multi.dcm#3", spec)[0]
    raw = ds.pixel_array[3].astype(np.float64)
    np.testing.assert_allclose(frame3, (raw - raw.min()) / (raw.max() - raw.min()), atol=1e-6)  # no window: min-max


def test_dicom_monochrome1_is_inverted(tmp_path: Path) -> None:
    batch = tmp_path / "b"
    batch.mkdir()
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.save_as(batch / "mono2.dcm")
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(batch / "mono1.dcm")
    spec = make_spec("dicom")
    m2 = load_pixels(batch, "mono2.dcm", spec)
    m1 = load_pixels(batch, "mono1.dcm", spec)
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)
    # the real MONOCHROME1 radiograph: high stored values (dense) come out dark
    cr = copy_dicom("RG1_UNCR.dcm", batch / "cr.dcm")
    raw = pydicom.dcmread(cr).pixel_array[::8, ::8].astype(np.float64).ravel()
    out = load_pixels(batch, "cr.dcm", spec)[0][::8, ::8].ravel()
    assert np.corrcoef(raw, out)[0, 1] < -0.5


def test_dicom_rescale_and_window_are_applied(tmp_path: Path) -> None:
    batch = tmp_path / "b"
    batch.mkdir()
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    raw = ds.pixel_array.astype(np.float64)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1000
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.save_as(batch / "ct.dcm")
    out = load_pixels(batch, "ct.dcm", make_spec("dicom"))[0]
    hu = raw * 2 - 1000
    expected = np.clip((hu - (40 - 0.5)) / (400 - 1) + 0.5, 0, 1)  # DICOM LINEAR window, PS3.3 C.11.2.1.2.1
    np.testing.assert_allclose(out, expected, atol=1e-5)
    # without the rescale the same window sees other values: the rescale really is applied
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.save_as(batch / "ct_norescale.dcm")
    assert not np.allclose(load_pixels(batch, "ct_norescale.dcm", make_spec("dicom"))[0], out)


def test_dicom_bomb_guard(dicom_batch: Path) -> None:
    result = read_image_batch(dicom_batch, make_spec("dicom", max_pixels=1_000_000))
    assert "decompression-bomb" in problems(result)["cr.dcm"]  # 1955 x 1841 > 1e6
    assert "ct.dcm" in result.records["source"].to_list()


# ------------------------------------------------------------------------------------------------ npz


def medmnist_npz(
    path: Path, n: tuple[int, int, int] = (12, 4, 6), rgb: bool = False, k: int = 1, seed: int = 0
) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, m in zip(("train", "val", "test"), n, strict=True):
        shape = (m, 28, 28, 3) if rgb else (m, 28, 28)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2 if k > 1 else 3, (m, k)).astype(np.uint8)
    np.savez_compressed(path, **arrays)
    return arrays


def test_npz_medmnist_layout(tmp_path: Path) -> None:
    batch = tmp_path / "b"
    batch.mkdir()
    arrays = medmnist_npz(batch / "pneumoniamnist.npz")
    spec = make_spec("npz")
    result = read_image_batch(batch, spec)
    rec = result.records
    assert result.rejected == []
    assert rec.height == 22
    assert rec.group_by("predefined_split").len().sort("predefined_split").rows() == [
        ("test", 6),
        ("train", 12),
        ("val", 4),
    ]
    row = rec.filter(pl.col("id") == npz_record_id("b", "pneumoniamnist.npz", "val", 2)).row(0, named=True)
    assert row["source"] == "pneumoniamnist.npz#val:2"
    assert row["label"] == str(int(arrays["val_labels"][2, 0]))
    assert (row["height"], row["width"], row["channels"], row["bit_depth"]) == (28, 28, 1, 8)
    assert row["patient_id"] is None and row["sex"] is None
    px = load_pixels(batch, row["source"], spec)
    np.testing.assert_array_equal(px[0], arrays["val_images"][2] / np.float32(255.0))


def test_npz_multilabel_and_rgb(tmp_path: Path) -> None:
    batch = tmp_path / "b"
    batch.mkdir()
    arrays = medmnist_npz(batch / "chest.npz", rgb=True, k=14, seed=1)
    spec = make_spec("npz", multi_label=True, channels=3)
    rec = read_image_batch(batch, spec).records
    train = rec.filter(pl.col("predefined_split") == "train").sort("id", descending=False)
    ordered = [train.filter(pl.col("id") == npz_record_id("b", "chest.npz", "train", i))["label"][0] for i in range(12)]
    np.testing.assert_array_equal(multilabel_matrix(ordered, 14), arrays["train_labels"].astype(np.float32))
    assert rec["channels"].unique().to_list() == [3]
    assert load_pixels(batch, "chest.npz#test:0", spec).shape == (3, 28, 28)
    # the same file read by a spec that is not multi-label is refused with the reason
    p = problems(read_image_batch(batch, make_spec("npz")))
    assert "not multi_label" in p["chest.npz"]


def test_npz_bad_files_rejected(tmp_path: Path) -> None:
    batch = tmp_path / "b"
    batch.mkdir()
    medmnist_npz(batch / "good.npz")
    np.savez(batch / "wrongkeys.npz", x=np.zeros((2, 28, 28), np.uint8), y=np.zeros((2, 1)))
    np.savez(batch / "wrongshape.npz", train_images=np.zeros((2, 28), np.uint8), train_labels=np.zeros((2, 1)))
    np.savez(
        batch / "mismatch.npz", train_images=np.zeros((3, 28, 28), np.uint8), train_labels=np.zeros((2, 1), np.int64)
    )
    np.savez(
        batch / "floatimg.npz", train_images=np.zeros((2, 28, 28), np.float32), train_labels=np.zeros((2, 1), np.int64)
    )
    np.savez(
        batch / "pickled.npz", train_images=np.array([object(), None], dtype=object), train_labels=np.zeros((2, 1))
    )
    (batch / "corrupt.npz").write_bytes(b"PK\x03\x04 not really a zip")
    np.savez(batch / "unlabelled.npz", test_images=np.zeros((2, 28, 28), np.uint8))
    result = read_image_batch(batch, make_spec("npz"))
    p = problems(result)
    assert set(p) == {"wrongkeys.npz", "wrongshape.npz", "mismatch.npz", "floatimg.npz", "pickled.npz", "corrupt.npz"}
    assert "unexpected keys (2 arrays)" in p["wrongkeys.npz"]  # member names come from the file: never quoted
    assert "shape" in p["wrongshape.npz"]
    assert "(3, 1)" in p["mismatch.npz"]
    assert "uint8" in p["floatimg.npz"]
    assert "object" in p["pickled.npz"]
    assert "not a valid npz" in p["corrupt.npz"]
    sources = result.records["source"].to_list()
    assert sum(s.startswith("good.npz#") for s in sources) == 22
    unl = result.records.filter(pl.col("source").str.starts_with("unlabelled.npz"))
    assert unl.height == 2 and unl["label"].null_count() == 2


def raw_pickle_npz(path: Path, marker: Path) -> None:
    """An npz whose images member is a raw pickle (no .npy header) that would create ``marker`` if unpickled."""

    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("train_images.npy", pickle.dumps(Payload()))
        labels = io.BytesIO()
        np.save(labels, np.zeros((2, 1), np.int64))
        zf.writestr("train_labels.npy", labels.getvalue())


def test_an_npz_with_a_raw_pickle_member_is_rejected_alone_and_never_unpickled(tmp_path: Path) -> None:
    batch = tmp_path / "b"
    batch.mkdir()
    medmnist_npz(batch / "good.npz")
    raw_pickle_npz(batch / "bad.npz", tmp_path / "unpickled")
    result = read_image_batch(batch, make_spec("npz"))
    assert problems(result) == {
        "bad.npz": "train_images is not a NumPy array (raw bytes such as a pickle, which is never loaded)"
    }
    assert result.records.height == 22 and not (tmp_path / "unpickled").exists()
    with pytest.raises(ImageRejected, match="train_images is not a NumPy array"):
        load_pixels(batch, "bad.npz#train:0", make_spec("npz"))


def test_npz_ids_are_unique_per_batch_and_file_path_and_stable(tmp_path: Path) -> None:
    for name in ("b1", "b2"):
        (tmp_path / name / "a").mkdir(parents=True)
        medmnist_npz(tmp_path / name / "a" / "b.npz", n=(3, 0, 0))
        medmnist_npz(tmp_path / name / "a_b.npz", n=(3, 0, 0))
    ids = {name: read_image_batch(tmp_path / name, make_spec("npz")).records["id"].to_list() for name in ("b1", "b2")}
    assert len(set(ids["b1"])) == 6 and not set(ids["b1"]) & set(ids["b2"])  # a/b.npz != a_b.npz; b1 != b2
    assert read_image_batch(tmp_path / "b1", make_spec("npz")).records["id"].to_list() == ids["b1"]  # stable


@pytest.mark.parametrize(("fmt", "found"), [("GIF", "GIF"), ("BMP", "BMP"), ("WEBP", "WebP"), ("TIFF", "TIFF")])
def test_an_image_whose_signature_is_not_its_extension_is_rejected(tmp_path: Path, fmt: str, found: str) -> None:
    batch = tmp_path / "b"
    batch.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
    Image.fromarray(pixels).save(batch / "disguised.png", format=fmt)
    Image.fromarray(pixels).save(batch / "disguised.jpg", format=fmt)
    Image.fromarray(pixels).save(batch / "real.png", format="PNG")
    Image.fromarray(pixels).save(batch / "png_as.jpeg", format="PNG")
    result = read_image_batch(batch, make_spec("folder"))
    assert problems(result) == {
        "disguised.png": f"file signature mismatch: its first bytes are {found}, not PNG as its .png extension says",
        "disguised.jpg": f"file signature mismatch: its first bytes are {found}, not JPEG as its .jpg extension says",
        "png_as.jpeg": "file signature mismatch: its first bytes are PNG, not JPEG as its .jpeg extension says",
    }
    assert result.records["source"].to_list() == ["real.png"]
    with pytest.raises(ImageRejected, match=f"its first bytes are {found}, not PNG"):
        load_pixels(batch, "disguised.png", make_spec("folder"))


def test_dicom_without_labels_csv_and_all_rejected_batches(tmp_path: Path) -> None:
    batch = tmp_path / "b"
    batch.mkdir()
    copy_dicom("MR_small.dcm", batch / "IM0001")  # DICOM files often have no extension
    (batch / "_READY").write_text("")  # landing markers are not images
    rec = read_image_batch(batch, make_spec("dicom")).records
    assert rec["source"].to_list() == ["IM0001"] and rec["label"].to_list() == [None]
    assert rec["patient_id"][0] == str(pydicom.dcmread(batch / "IM0001").PatientID)
    # a batch in which nothing reads gives an empty frame with the full schema, and every problem
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"nope")
    result = read_image_batch(bad, make_spec("folder"))
    assert result.records.height == 0 and result.records.columns == [
        "id",
        "label",
        "patient_id",
        "sex",
        *BASE_COLUMNS[3:],
    ]
    assert result.records.schema["height"] == pl.Int64
    assert [f for f, _ in result.rejected] == ["x.png"]


def test_dicom_voi_lut_sequence_is_applied(tmp_path: Path) -> None:
    from pydicom.pixels import apply_voi_lut

    batch = tmp_path / "b"
    batch.mkdir()
    path = copy_dicom("vlut_04.dcm", batch / "vlut.dcm")  # 8-bit image with a 256-entry, 16-bit VOI LUT
    ds = pydicom.dcmread(path)
    lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64)
    expected = (apply_voi_lut(ds.pixel_array, ds).astype(np.float64) - lut.min()) / (lut.max() - lut.min())
    np.testing.assert_allclose(load_pixels(batch, "vlut.dcm", make_spec("dicom"))[0], expected, atol=1e-6)
