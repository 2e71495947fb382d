"""The preprocessed image cache: built once per batch, memory-mapped, gathered by id."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from meddiag_pipelines.imaging.preprocess import load_cached, resize_square, to_uint8, update_cache
from meddiag_pipelines.imaging.readers import load_pixels, npz_record_id, read_image_batch
from meddiag_pipelines_tests.test_imaging_readers import make_spec, medmnist_npz
from scripts.phantoms import write_phantom_batch


def test_cache_is_built_once_and_read_back(tmp_path: Path) -> None:
    batch = write_phantom_batch(tmp_path / "batch", n=8, seed=5, size=64)
    spec = make_spec("folder", size=28)
    records = read_image_batch(batch, spec).records
    cache = tmp_path / "cache"
    first = update_cache(cache, batch, "batch_001", records, spec)
    assert (
        first["reused"] is False and first["n"] == 8 and first["shape"] == [8, 1, 28, 28] and first["dtype"] == "uint8"
    )
    npy = cache / first["path"]
    assert npy == cache / "batch_001.npy" and np.load(npy, mmap_mode="r").shape == (8, 1, 28, 28)
    mtime = npy.stat().st_mtime_ns
    second = update_cache(cache, batch, "batch_001", records, spec)
    assert second["reused"] is True and second["sha"] == first["sha"]
    assert npy.stat().st_mtime_ns == mtime  # reused: the file was not rewritten

    ids = records["id"].to_list()
    X = load_cached(cache, list(reversed(ids)))
    assert X.dtype == np.float32 and X.shape == (8, 1, 28, 28) and 0 <= X.min() and X.max() <= 1
    expected = to_uint8(resize_square(load_pixels(batch, records["source"][0], spec), 28)) / np.float32(255)
    np.testing.assert_allclose(X[-1], expected, atol=1e-6)
    with pytest.raises(KeyError, match="1 of 2 image.s. not in the image cache") as missing:
        load_cached(cache, [ids[0], "secret-record-7"])
    assert "secret-record-7" not in str(missing.value)  # a count, never the ids

    # a second batch joins the same cache; ids from both batches gather in the requested order
    batch2 = write_phantom_batch(tmp_path / "batch2", n=3, seed=6, size=64)
    rec2 = read_image_batch(batch2, spec).records
    assert update_cache(cache, batch2, "batch_002", rec2, spec)["reused"] is False
    mixed = [rec2["id"][1], ids[2], rec2["id"][0]]
    Xm = load_cached(cache, mixed)
    np.testing.assert_array_equal(Xm[1], X[len(ids) - 3])
    assert npy.stat().st_mtime_ns == mtime  # the first batch's cache is untouched by the second

    # another size (or other records) rebuilds the batch
    rebuilt = update_cache(cache, batch, "batch_001", records, make_spec("folder", size=64))
    assert rebuilt["reused"] is False and rebuilt["shape"] == [8, 1, 64, 64]
    assert not list(cache.glob(".*.tmp"))  # no temporary files left behind


def test_npz_cache_roundtrips_medmnist_exactly(tmp_path: Path) -> None:
    batch = tmp_path / "b"
    batch.mkdir()
    arrays = medmnist_npz(batch / "breastmnist.npz")
    spec = make_spec("npz", size=28)
    records = read_image_batch(batch, spec).records
    update_cache(tmp_path / "cache", batch, "npz1", records, spec)
    X = load_cached(
        tmp_path / "cache",
        [npz_record_id("b", "breastmnist.npz", "test", 5), npz_record_id("b", "breastmnist.npz", "train", 0)],
    )
    np.testing.assert_array_equal(X[0, 0], arrays["test_images"][5] / np.float32(255))
    np.testing.assert_array_equal(X[1, 0], arrays["train_images"][0] / np.float32(255))


def test_resize_square_pads_without_cropping(tmp_path: Path) -> None:
    img = np.ones((1, 10, 40), dtype=np.float32)
    out = resize_square(img, 28)
    assert out.shape == (1, 28, 28)
    assert out[0, 14, :].min() > 0.99  # the middle row is image all across
    assert out[0, 0, :].max() < 0.01 and out[0, -1, :].max() < 0.01  # padding above and below
    # a file that disappeared since it was read is reported, not fatal
    batch = tmp_path / "b"
    batch.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(batch / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(batch / "b.png")
    spec = make_spec("folder", size=28)
    records = read_image_batch(batch, spec).records
    (batch / "b.png").unlink()
    manifest = update_cache(tmp_path / "cache", batch, "x", records, spec)
    assert manifest["n"] == 1 and manifest["failed"][0][0] == "b.png"
