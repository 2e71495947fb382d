"""The volume modality on a MedMNIST-3D-layout npz (``{train,val,test}_{images,labels}``, uint8 (N, D, H, W)):
CPU voxels per second for training and inference of the 3D ResNet, and test AUROC.

``--mode direct`` trains with imaging's trainer (``train_image_model``, the volume spec's defaults, ``--conv``
3d | acs | 2.5d, ``--pool`` avg | avgmax, ``--seed``) on the arrays: training voxels/s (forward + backward + AdamW over the epochs), inference
voxels/s (forward only, the test split), test AUROC of the CNN and of the voxel-feature model (pooled voxels and
intensity statistics, XGBoost or logistic by flat's choice: the baseline, and the candidate when it wins). ``--mode pipeline`` lands the npz
as a batch and runs ``python -m meddiag_pipelines update`` with the spec a user writes (``modality: volume``,
``volume: {format: npz, size: ...}`` and the label): minutes and test AUROC (the issue-26 figure).

    python -m bench volume PATH.npz [--mode direct|pipeline] [--size 28] [--threads 2] [--epochs N] [--conv 3d]
        [--pool avg] [--seed 42]

With no PATH, the bundled SYNTHETIC phantoms (``data/landing/synthetic_volume_phantoms``). Real MedMNIST 3D sets
are kept by the maintainers, outside the repository; ``python -m bench.volume_synthetic`` writes a SYNTHETIC
stand-in in their layout (28^3 or 64^3, binary or K classes).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import REPO, emit, peak_rss_mb, update_in_fresh_root

NAME = "volume"
SPLITS = ("train", "val", "test")
BUNDLED = REPO / "data" / "landing" / "synthetic_volume_phantoms" / "batch_0001" / "synthetic_volume_phantoms.npz"


def spec_yaml(size: int, epochs: int | None, n_classes: int) -> str:
    """The spec a user writes: the label and the format (and the size), everything else the defaults."""
    binary = 'positive: "1"\n' if n_classes == 2 else ""
    training = f"training: {{epochs: {epochs}}}\n" if epochs else ""
    return (
        f"name: volume_bench\nmodality: volume\nlabel: label\n{binary}volume: {{format: npz, size: {size}}}\n{training}"
    )


def _arrays(npz: Path, size: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    from meddiag_pipelines.imaging.volume.readers import resize_cube

    with np.load(npz, allow_pickle=False) as data:
        X = {s: np.stack([resize_cube(v / 255.0, size) for v in data[f"{s}_images"]])[:, None] for s in SPLITS}
        y = {s: data[f"{s}_labels"][:, 0].astype(np.int64) for s in SPLITS}
    return X, y


def direct(npz: Path, size: int, threads: int, epochs: int | None, conv: str, pool: str, seed: int) -> dict:
    """Imaging's trainer on the arrays with the default volume spec: voxels/s and test AUROC."""
    from meddiag_pipelines.flat.models import predict_tabular, train_tabular_models
    from meddiag_pipelines.imaging.scoring import baseline_side, volume_feature_names, volume_features
    from meddiag_pipelines.imaging.train import macro_auroc, predict_image_model, train_image_model
    from meddiag_pipelines.specs import TaskSpec

    X, y = _arrays(npz, size)
    classes = sorted(set(np.concatenate(list(y.values())).tolist()))
    kind = "binary" if len(classes) == 2 else "multiclass"
    spec = TaskSpec.model_validate(
        {
            "name": "volume_bench",
            "modality": "volume",
            "label": "label",
            "volume": {"format": "npz", "size": size, "conv": conv, "pool": pool},
            "training": {"seed": seed, **({"epochs": epochs} if epochs else {})},
        }
    )
    voxels = size**3
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        res = train_image_model(
            X["train"], y["train"], X["val"], y["val"], kind, len(classes), spec, Path(tmp), "cpu", num_threads=threads
        )
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        proba = predict_image_model(res.model_dir, X["test"], "cpu")
        infer_s = time.perf_counter() - start
        start = time.perf_counter()
        side = baseline_side(size, 3)
        P = {s: volume_features(X[s], side) for s in SPLITS}
        out, names = Path(tmp) / "baseline", volume_feature_names(1, side)
        chosen = train_tabular_models(
            P["train"], y["train"], P["val"], y["val"], len(classes), spec.training, out, names
        )
        baseline = predict_tabular(out, P["test"])
        baseline_seconds = time.perf_counter() - start
    train_speed = float(np.mean([h["images_per_second"] for h in res.history]))
    return {
        "test_auroc": macro_auroc(y["test"], proba, kind),
        "baseline_test_auroc": macro_auroc(y["test"], baseline, kind),
        "baseline_chosen": chosen["params"]["chosen"],
        "baseline_seconds": baseline_seconds,
        "val_auroc": res.best_val_auroc,
        "epochs_run": len(res.history),
        "width": res.config["model_config"]["width"],
        "conv": conv,
        "pool": pool,
        "seed": seed,
        "stopped": res.stopped,
        "train_seconds": seconds,
        "train_voxels_per_s": train_speed * voxels,
        "infer_voxels_per_s": len(X["test"]) * voxels / infer_s,
        "peak_rss_mb": peak_rss_mb(),
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog=f"bench {NAME}")
    parser.add_argument("npz", nargs="?", type=Path, default=BUNDLED)
    parser.add_argument("--mode", default="direct", choices=["direct", "pipeline"])
    parser.add_argument("--size", type=int, default=None, help="volume.size (default: the npz's own side)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=None, help="training.epochs (default: the spec default)")
    parser.add_argument("--conv", default="3d", choices=["3d", "acs", "2.5d"], help="volume.conv (direct mode)")
    parser.add_argument("--pool", default="avg", choices=["avg", "avgmax"], help="volume.pool (direct mode)")
    parser.add_argument("--seed", type=int, default=42, help="training.seed (direct mode)")
    args = parser.parse_args(argv)
    with np.load(args.npz, allow_pickle=False) as data:
        size = args.size or int(data["train_images"].shape[1])
        n_classes = len(np.unique(data["train_labels"]))
    record = {"name": NAME, "impl": args.mode, "npz": args.npz.name, "size": size, "threads": args.threads}
    if args.mode == "pipeline":
        emit(
            {
                **record,
                **update_in_fresh_root(
                    "volume_bench", spec_yaml(size, args.epochs, n_classes), args.npz, args.npz.name, args.threads
                ),
            }
        )
        return
    emit({**record, **direct(args.npz, size, args.threads, args.epochs, args.conv, args.pool, args.seed)})


if __name__ == "__main__":
    main(sys.argv[1:])
