"""Where the memory of the volume task goes: each step the pipeline runs on a MedMNIST-3D-layout npz (the cache's
float32 splits, the 3D CNN's training, its validation and test scoring, the voxel-feature model's inputs,
Grad-CAM 3D of the report and of the scored volumes, the embeddings, the ONNX export and its parity check), in one
process, with the resident set sampled every 20 ms: the peak RSS of each step, above the RSS before it.

    python -m bench volume_memory PATH.npz [--epochs 1] [--threads 2]

Run it on a reduced stand-in to iterate (``python -m bench.volume_synthetic OUT.npz --size 64 --train 300``); the
pipeline's own peak is ``bench volume --mode pipeline`` under ``/usr/bin/time -v``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from bench import emit

NAME = "volume_memory"


class _Sampler:
    """The process's RSS, sampled in a thread; :meth:`step` gives a step's peak."""

    def __init__(self) -> None:
        import psutil

        self.proc, self.peak, self.stop = psutil.Process(), 0, False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self.stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.02)

    @contextmanager
    def step(self, name: str, rows: list):
        before = self.proc.memory_info().rss
        self.peak, start = before, time.perf_counter()
        yield
        time.sleep(0.05)
        mb = 2**20
        rows.append(
            {
                "step": name,
                "rss_before_mb": round(before / mb),
                "peak_mb": round(self.peak / mb),
                "above_mb": round((self.peak - before) / mb),
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
        print(rows[-1], flush=True)


def _cache(tmp: Path, npz: Path) -> tuple[Path, dict[str, list[str]], dict[str, np.ndarray]]:
    """The npz's volumes as the pipeline caches them (one uint8 batch file), ids per split, labels per split."""
    import polars as pl

    from meddiag_pipelines.imaging.preprocess import cache_batch

    ids, y, arrays = {}, {}, {}
    with np.load(npz, allow_pickle=False) as data:
        for s in ("train", "val", "test"):
            arrays[s] = data[f"{s}_images"]
            y[s] = data[f"{s}_labels"][:, 0].astype(np.int64)
            ids[s] = [f"{s}{i:05d}" for i in range(len(arrays[s]))]
    size = arrays["train"].shape[1]
    records = pl.DataFrame({"id": sum(ids.values(), []), "source": sum(ids.values(), []), "sha256": None})
    volumes = {i: v for s in arrays for i, v in zip(ids[s], arrays[s], strict=True)}
    cache_dir = tmp / "cache"
    cache_batch(cache_dir, "b1", records, (1, size, size, size), "bench", lambda src, _: volumes[src][None] / 255.0, {})
    return cache_dir, ids, y


def profile(npz: Path, epochs: int, threads: int) -> list[dict]:
    from meddiag_pipelines.imaging.export import image_exportable
    from meddiag_pipelines.imaging.preprocess import load_cached
    from meddiag_pipelines.imaging.saliency import grad_cam
    from meddiag_pipelines.imaging.scoring import baseline_side, embed_images, predict_images, volume_features
    from meddiag_pipelines.imaging.train import predict_image_model, train_image_model
    from meddiag_pipelines.registry.export import _export_and_compare
    from meddiag_pipelines.specs import TaskSpec

    sampler, rows = _Sampler(), []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache_dir, ids, y = _cache(tmp, npz)
        size = int(np.load(cache_dir / "b1.npy", mmap_mode="r").shape[-1])
        spec = TaskSpec.model_validate(
            {
                "name": "m",
                "modality": "volume",
                "label": "label",
                "volume": {"format": "npz", "size": size},
                "training": {"epochs": epochs},
            }
        )
        plan = {"cache_dir": str(cache_dir), "size": size, "channels": 1, "spatial_dims": 3, "predictor": "cnn"}
        with sampler.step("load train + val (float32)", rows):
            X_train, X_val = load_cached(cache_dir, ids["train"]), load_cached(cache_dir, ids["val"])
        out = tmp / "model"
        with sampler.step(f"train the CNN, {epochs} epoch(s), batch {spec.training.batch_size}", rows):
            train_image_model(X_train, y["train"], X_val, y["val"], "binary", 2, spec, out, "cpu", num_threads=threads)
        with sampler.step("CNN on validation (candidate choice)", rows):
            predict_image_model(out, X_val, "cpu")
        side = baseline_side(size, 3)
        with sampler.step("voxel features of train + val", rows):
            volume_features(X_train, side), volume_features(X_val, side)
        del X_train, X_val
        load = lambda part: load_cached(cache_dir, part)  # noqa: E731
        with sampler.step("CNN on test (evaluation, predict_images)", rows):
            predict_images(out, plan, ids["test"], load, "binary", "cpu")
        with sampler.step("voxel-feature inputs of test (predict_images)", rows):
            for start in range(0, len(ids["test"]), 256):
                volume_features(load(ids["test"][start : start + 256]), side)
        with sampler.step("CNN embeddings of test (monitoring)", rows):
            embed_images(out, plan, ids["test"], load, "cpu")
        with sampler.step("Grad-CAM 3D, 6 volumes (report)", rows):
            grad_cam(out, load(ids["test"][:6]))
        with sampler.step("Grad-CAM 3D of every test volume (scored reasons)", rows):
            grad_cam(out, load(ids["test"]))
        with sampler.step("ONNX export + parity on test", rows):
            _export_and_compare(image_exportable(out, plan, ids["test"]), tmp / "model.onnx")
    sampler.stop = True
    return rows


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog=f"bench {NAME}")
    parser.add_argument("npz", type=Path)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    for row in profile(args.npz, args.epochs, args.threads):
        emit({"name": NAME, "npz": args.npz.name, **row})


if __name__ == "__main__":
    main(sys.argv[1:])
