"""Preprocessed image cache: one memory-mapped ``.npy`` per batch, built once, read many times.

For each batch ``update_cache`` writes, in this order and each atomically:

* ``<cache_dir>/<batch_id>.npy``          uint8 ``(N, C, S, S)``, S = ``spec.image.size``, C = ``spec.image.channels``
* ``<cache_dir>/<batch_id>.index.parquet`` ``id``, ``row`` (row of the npy), ``source``
* ``<cache_dir>/<batch_id>.json``         the manifest, written last: its presence means the batch is complete.

Each image goes through :func:`~meddiag_pipelines.imaging.readers.load_pixels` (windowing, [0, 1]) with the pixel
hash recorded at ingestion, so an image replaced in the landing folder after it was validated is refused (listed in
``failed``, never cached): the pixels cached are the pixels validated. It is then padded
to a square (centred, zero fill: the aspect ratio is kept and nothing is cropped), resized to S x S with Pillow's
antialiased bilinear filter, and stored as uint8 (``round(255 * x)``; MedMNIST uint8 images round-trip exactly).
A batch whose manifest matches (same ids / sources / pixel hashes, same size, channels and cache version) is not
recomputed. :func:`cache_batch` is the same cache for any per-record tensor (the volume modality's volumes,
(N, 1, S, S, S)). :func:`load_cached` gathers any ids across batches through ``np.load(mmap_mode='r')`` and returns
float32 in [0, 1]; the per-channel mean / std normalisation is part of the model (see ``model.py``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from meddiag_pipelines.atomic import atomic_write, atomic_write_json
from meddiag_pipelines.imaging.readers import ImageRejected, load_pixels

if TYPE_CHECKING:
    from meddiag_pipelines.specs import TaskSpec

CACHE_VERSION = 1
_BATCH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=-]{0,100}$")


def cache_stem(batch_id: str) -> str:
    """The cache file name of a batch: its id when that is a plain short name, else a readable part of it and a
    hash of the whole (a batch folder may be named with spaces, accents or at any length)."""
    if _BATCH_ID.match(batch_id) and ".." not in batch_id:
        return batch_id
    readable = re.sub(r"[^A-Za-z0-9_=-]+", "_", batch_id)[:60].strip("_") or "batch"
    return f"{readable}-{hashlib.sha256(batch_id.encode('utf-8', 'surrogateescape')).hexdigest()[:16]}"


def _paths(cache_dir: Path, batch_id: str) -> tuple[Path, Path, Path]:
    stem = cache_stem(batch_id)
    return cache_dir / f"{stem}.npy", cache_dir / f"{stem}.index.parquet", cache_dir / f"{stem}.json"


def _fingerprint(records: pl.DataFrame, settings: str) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}|{settings}|uint8|".encode())
    cols = [c for c in ("id", "source", "sha256") if c in records.columns]
    for row in records.select(cols).iter_rows():
        h.update(("\x1f".join("" if v is None else str(v) for v in row) + "\x1e").encode())
    return h.hexdigest()


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> (C, size, size): centred zero padding to a square, then antialiased resize."""
    from PIL import Image

    c, h, w = img.shape
    if h == size and w == size:
        return img.astype(np.float32, copy=False)
    side = max(h, w)
    if h != w:
        padded = np.zeros((c, side, side), dtype=np.float32)
        top, left = (side - h) // 2, (side - w) // 2
        padded[:, top : top + h, left : left + w] = img
        img = padded
    out = np.empty((c, size, size), dtype=np.float32)
    for k in range(c):
        im = Image.fromarray(np.ascontiguousarray(img[k], dtype=np.float32), mode="F")
        out[k] = np.asarray(im.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    return np.clip(out, 0.0, 1.0)


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def update_cache(cache_dir: Path, batch_dir: Path, batch_id: str, records: pl.DataFrame, spec: TaskSpec) -> dict:
    """Build (or reuse) the cache of one batch; returns its manifest.

    Manifest keys: ``path`` (the npy's file name in ``cache_dir``), ``index`` (the index's), ``n`` (images cached), ``shape``, ``dtype``, ``sha`` (sha256 of
    the npy), ``fingerprint``, ``size``, ``channels``, ``failed`` (list of [id, problem] for records whose file no
    longer reads or whose pixels changed since ingestion), ``reused`` (True when nothing was recomputed).
    """
    assert spec.image is not None, "image tasks only"
    size, channels = int(spec.image.size), int(spec.image.channels)

    def load(source: str, sha256: str | None) -> np.ndarray:
        return resize_square(load_pixels(batch_dir, source, spec, sha256), size)

    return cache_batch(
        cache_dir,
        batch_id,
        records,
        (channels, size, size),
        f"{size}|{channels}",
        load,
        {"size": size, "channels": channels},
    )


def cache_batch(
    cache_dir: Path,
    batch_id: str,
    records: pl.DataFrame,
    item_shape: tuple[int, ...],
    settings: str,
    load: Callable[[str, str | None], np.ndarray],
    extra: dict,
) -> dict:
    """Build (or reuse) the cache of one batch of ``records`` (``id``, ``source``, ``sha256``): ``load(source,
    sha256)`` gives one record's float array of ``item_shape`` in [0, 1], or raises :class:`ImageRejected` (the
    record is listed in ``failed``); ``settings`` (what else shapes the tensors) is in the fingerprint, ``extra``
    in the manifest. See :func:`update_cache` for the manifest."""
    cache_dir = Path(cache_dir)
    npy, index, manifest_path = _paths(cache_dir, batch_id)
    fingerprint = _fingerprint(records, settings)
    if manifest_path.exists() and npy.exists() and index.exists():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            manifest = {}
        if manifest.get("fingerprint") == fingerprint and manifest.get("version") == CACHE_VERSION:
            return {**manifest, "reused": True}

    ids = records["id"].to_list()
    sources = records["source"].to_list()
    hashes = records["sha256"].to_list()
    n = len(ids)
    shape = (n, *item_shape)
    ok_rows: list[int] = []
    failed: list[list[str]] = []

    def write_npy(tmp: Path) -> None:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        for i, source in enumerate(sources):
            try:
                arr[i] = to_uint8(load(source, hashes[i]))
                ok_rows.append(i)
            except ImageRejected as exc:
                arr[i] = 0
                failed.append([ids[i], str(exc)])
        arr.flush()
        del arr

    atomic_write(npy, write_npy)
    idx = pl.DataFrame(
        {
            "id": [ids[i] for i in ok_rows],
            "row": pl.Series([i for i in ok_rows], dtype=pl.Int64),
            "source": [sources[i] for i in ok_rows],
        }
    )
    atomic_write(index, lambda tmp: idx.write_parquet(tmp))
    manifest = {
        "version": CACHE_VERSION,
        "batch_id": batch_id,
        "path": npy.name,  # file names in the cache folder: the data root may move
        "index": index.name,
        "n": len(ok_rows),
        "shape": list(shape),
        "dtype": "uint8",
        **extra,
        "sha": _file_sha(npy),
        "fingerprint": fingerprint,
        "failed": failed,
    }
    atomic_write_json(manifest_path, manifest)
    return {**manifest, "reused": False}


def _index(cache_dir: Path) -> dict[str, tuple[str, int]]:
    """id -> (batch_id, row) over every complete batch; batches in sorted order, a later one wins a repeated id."""
    out: dict[str, tuple[str, int]] = {}
    for manifest_path in sorted(Path(cache_dir).glob("*.json")):
        batch_id = manifest_path.name.removesuffix(".json")
        index = cache_dir / f"{batch_id}.index.parquet"
        if not index.exists() or not (cache_dir / f"{batch_id}.npy").exists():
            continue
        df = pl.read_parquet(index, columns=["id", "row"])
        out.update({i: (batch_id, r) for i, r in zip(df["id"].to_list(), df["row"].to_list(), strict=True)})
    return out


def load_cached(cache_dir: Path, ids: list[str]) -> np.ndarray:
    """float32 (N, C, S, S) in [0, 1] for ``ids`` in that order, gathered from the memory-mapped batch files."""
    cache_dir = Path(cache_dir)
    where = _index(cache_dir)
    missing = [i for i in ids if i not in where]
    if missing:
        # A count only: record ids never appear in errors (they reach logs and run metadata).
        raise KeyError(f"{len(missing)} of {len(ids)} image(s) not in the image cache of {cache_dir.name}")
    by_batch: dict[str, list[tuple[int, int]]] = {}
    for pos, i in enumerate(ids):
        batch, row = where[i]
        by_batch.setdefault(batch, []).append((pos, row))
    out: np.ndarray | None = None
    for batch, pairs in by_batch.items():
        arr = np.load(cache_dir / f"{batch}.npy", mmap_mode="r")
        if out is None:
            out = np.empty((len(ids), *arr.shape[1:]), dtype=np.float32)
        elif arr.shape[1:] != out.shape[1:]:
            raise ValueError(f"{batch}: cached shape {arr.shape[1:]} differs from {out.shape[1:]}; rebuild the cache")
        pos = np.fromiter((p for p, _ in pairs), dtype=np.int64, count=len(pairs))
        rows = np.fromiter((r for _, r in pairs), dtype=np.int64, count=len(pairs))
        order = np.argsort(rows, kind="stable")  # sequential reads from the memory map
        out[pos[order]] = arr[rows[order]].astype(np.float32) / 255.0
    if out is None:
        return np.empty((0, 0, 0, 0), dtype=np.float32)
    return out


__all__ = ["cache_batch", "load_cached", "resize_square", "to_uint8", "update_cache"]
