"""The from-scratch CNN on PneumoniaMNIST-like SYNTHETIC data at 28 px (issue 16's first quality target).

The data (:func:`write_pneumonia_like`): a MedMNIST ``.npz`` (``{train,val,test}_{images,labels}``, uint8
28x28, labels ``(N, 1)``) of the real set's sizes (4,708 / 524 / 624) and class ratios (74 % positive in train
and val, 62.5 % in test, as in PneumoniaMNIST), drawn with ``scripts/phantoms.py`` at 56 px (the finding: a
faint opacity inside a lung; distractor blobs outside) and averaged down to 28 px, as MedMNIST resizes larger
radiographs, with more noise than the bundled phantoms. The TEST split is deliberately shifted (another
"scanner"): softer (Gaussian blur), lower contrast and brighter, noisier, and positioned up to 2 px off, so a
recipe that only fits train / val is caught there. Not patient data, no diagnostic meaning.

The measurement: ``--mode direct`` trains with ``train_image_model`` on the arrays (for iterating on the
recipe); ``--mode pipeline`` (the figure to report) lands the npz as a batch and runs
``python -m meddiag_pipelines update`` with docs/adding-a-task.md's ``pneumonia_xray`` spec in a fresh data root and
instance, then reads the version's ``metrics.json``. Both print validation and shifted-test AUROC, wall and
CPU minutes (wall inflates on a shared machine), at ``--threads`` torch threads (2: the target machine).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from bench import bench_dir, emit, peak_rss_mb, update_in_fresh_root

NAME = "pneumonia_like"
SPLITS = {"train": (4708, 0.742), "val": (524, 0.742), "test": (624, 0.625)}  # PneumoniaMNIST: n, positive rate
SMOKE_SPLITS = {"train": (160, 0.742), "val": (60, 0.742), "test": (60, 0.625)}
NOISE_SD = 0.05  # train / val, at 56 px before averaging down (the bundled phantoms: 0.006)
SPEC_YAML = """\
name: pneumonia_xray
modality: image
label: label
classes: ["0", "1"]
positive: "1"
id: id
image: {format: npz, size: 28, channels: 1, augment: [hflip, affine]}
training: {epochs: %(epochs)d, batch_size: 128, learning_rate: 0.001, patience: 5, time_budget_s: 1200}
"""


def _shift(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Whole-pixel translation, the uncovered border filled from the nearest edge."""
    s = img.shape[0]
    padded = np.pad(img, 2, mode="edge")
    return padded[2 - dy : 2 - dy + s, 2 - dx : 2 - dx + s]


def _test_scanner(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The shifted test split's acquisition: blur, lower contrast, a brighter offset, more noise, 2 px jitter."""
    img = gaussian_filter(img, rng.uniform(0.5, 0.9), mode="mirror", truncate=3.0)  # numpy's "reflect" padding
    img = 0.5 + (img - 0.5) * rng.uniform(0.75, 0.92) + rng.uniform(0.0, 0.06)
    img = img + rng.normal(0, 0.02, size=img.shape)
    return _shift(img, *rng.integers(-2, 3, size=2))


def render(rng: np.random.Generator, positive: bool, shifted: bool) -> np.ndarray:
    from scripts.phantoms import render_phantom

    big = render_phantom(rng, 56, positive, str(rng.choice(["F", "M"])), noise_sd=NOISE_SD)
    img = big.reshape(28, 2, 28, 2).mean(axis=(1, 3))
    if shifted:
        img = _test_scanner(img, rng)
    return np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8)


def write_pneumonia_like(path: Path, seed: int = 0, splits: dict[str, tuple[int, float]] = SPLITS) -> Path:
    """Write the SYNTHETIC PneumoniaMNIST-like npz to ``path`` (labels 1 = finding, 0 = normal)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, (n, rate) in splits.items():
        y = np.zeros(n, dtype=np.uint8)
        y[: int(round(n * rate))] = 1
        rng.shuffle(y)
        arrays[f"{split}_images"] = np.stack([render(rng, bool(v), split == "test") for v in y])
        arrays[f"{split}_labels"] = y[:, None]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def dataset(size: str, seed: int = 0) -> Path:
    """The npz for ``size`` (smoke | default), generated once per seed under the bench folder."""
    path = bench_dir() / f"pneumonia_like_{size}_{seed}.npz"
    if not path.exists():
        write_pneumonia_like(path, seed, SMOKE_SPLITS if size == "smoke" else SPLITS)
    return path


def spec_text(epochs: int) -> str:
    return SPEC_YAML % {"epochs": epochs}


def direct(
    npz: Path, seed: int, threads: int, epochs: int, width: int | None = None, train_n: int | None = None
) -> dict:
    """``train_image_model`` on the arrays (the recipe alone, no pipeline): val and shifted-test AUROC. ``width``
    and ``train_n`` (the first ``train_n`` training images) make a cheaper proxy on a loaded machine."""
    import yaml

    from meddiag_pipelines.imaging.train import macro_auroc, predict_image_model, train_image_model
    from meddiag_pipelines.specs import TaskSpec

    raw = yaml.safe_load(spec_text(epochs))
    raw["training"]["seed"] = seed
    spec = TaskSpec.model_validate(raw)
    with np.load(npz) as data:
        X = {s: (data[f"{s}_images"][:, None] / 255.0).astype(np.float32) for s in SPLITS}
        y = {s: data[f"{s}_labels"][:, 0].astype(np.int64) for s in SPLITS}
    X["train"], y["train"] = X["train"][:train_n], y["train"][:train_n]
    with tempfile.TemporaryDirectory() as tmp:
        start, cpu = time.perf_counter(), time.process_time()
        res = train_image_model(
            X["train"],
            y["train"],
            X["val"],
            y["val"],
            "binary",
            1,
            spec,
            Path(tmp),
            "cpu",
            width=width,
            num_threads=threads,
        )
        minutes, cpu_minutes = (time.perf_counter() - start) / 60, (time.process_time() - cpu) / 60
        test = macro_auroc(y["test"], predict_image_model(res.model_dir, X["test"], "cpu"), "binary")
    return {
        "val_auroc": res.best_val_auroc,
        "test_auroc": test,
        "best_epoch": res.best_epoch,
        "stopped": res.stopped,
        "epochs_run": len(res.history),
        "seconds": minutes * 60,
        "minutes": minutes,
        "cpu_minutes": cpu_minutes,
        "peak_rss_mb": peak_rss_mb(),
    }


def pipeline(npz: Path, threads: int, epochs: int) -> dict:
    """The npz landed as a batch and ``python -m meddiag_pipelines update pneumonia_xray`` in a fresh root."""
    return update_in_fresh_root("pneumonia_xray", spec_text(epochs), npz, "pneumoniamnist.npz", threads)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog=f"bench {NAME}")
    parser.add_argument("--size", default="default", choices=["smoke", "default"])
    parser.add_argument("--mode", default="pipeline", choices=["pipeline", "direct"])
    parser.add_argument("--seeds", default="42", help="training seeds, comma-separated (direct mode)")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--width", type=int, default=None, help="direct mode: the CNN's width (default: chosen)")
    parser.add_argument("--train-n", type=int, default=None, help="direct mode: the first N training images only")
    args = parser.parse_args(argv)
    npz = dataset(args.size, args.data_seed)
    epochs = 2 if args.size == "smoke" else 20
    if args.mode == "pipeline":
        emit(
            {
                "name": NAME,
                "impl": "update",
                "size": args.size,
                "threads": args.threads,
                **pipeline(npz, args.threads, epochs),
            }
        )
        return
    for seed in (int(s) for s in args.seeds.split(",")):
        emit(
            {
                "name": NAME,
                "impl": "train_image_model",
                "size": args.size,
                "seed": seed,
                "threads": args.threads,
                "width": args.width,
                "train_n": args.train_n,
                **direct(npz, seed, args.threads, epochs, args.width, args.train_n),
            }
        )


if __name__ == "__main__":
    main(sys.argv[1:])
