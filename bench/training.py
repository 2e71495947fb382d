"""Training and inference throughput on this machine's CPU: XGBoost (QuantileDMatrix, hist), the imaging CNN
at 28x28 (training: :func:`cnn_train_throughput`, inference forward-only), and the text models
(meddiag_pipelines.text.models: TF-IDF + LR baseline and the fastText-style torch model, train and predict).
All data is SYNTHETIC. CUDA figures come from bench/gpu_check.py on a GPU machine.
"""

from __future__ import annotations

import argparse
import os
import time

from bench import emit, measure

NAME = "training"
SIZES = {
    "smoke": {
        "xgb_rows": 2_000,
        "xgb_features": 20,
        "xgb_rounds": 5,
        "cnn_seconds": 0.2,
        "text_docs": 120,
        "text_epochs": 1,
    },
    "default": {
        "xgb_rows": 500_000,
        "xgb_features": 50,
        "xgb_rounds": 50,
        "cnn_seconds": 10.0,
        "text_docs": 6_000,
        "text_epochs": 3,
    },
}


def xgboost_cpu(rows: int, features: int, rounds: int, device: str = "cpu") -> dict:
    import numpy as np
    import xgboost as xgb

    rng = np.random.default_rng(0)
    X = rng.normal(size=(rows, features)).astype(np.float32)
    y = (X[:, :5].sum(1) + rng.normal(size=rows) > 0).astype(np.float32)
    start = time.perf_counter()
    dtrain = xgb.QuantileDMatrix(X, label=y)
    build = time.perf_counter() - start
    params = {
        "tree_method": "hist",
        "device": device,
        "max_depth": 6,
        "eta": 0.1,
        "objective": "binary:logistic",
        "nthread": os.cpu_count(),
        "verbosity": 0,
    }
    start = time.perf_counter()
    booster = xgb.train(params, dtrain, num_boost_round=rounds)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    booster.inplace_predict(X)
    predict_s = time.perf_counter() - start
    return {
        "seconds": train_s,
        "quantile_dmatrix_s": build,
        "predict_s": predict_s,
        "cells_rounds_per_s": rows * features * rounds / train_s,
        "predict_rows_per_s": rows / predict_s,
    }


def cnn_train_throughput(
    width: int = 32,
    size: int = 28,
    batch: int = 128,
    seconds: float = 5.0,
    channels_last: bool = True,
    threads: int | None = None,
) -> float:
    """Training images per second of the imaging CNN on the CPU (forward + backward + AdamW step on random data)."""
    import torch
    from torch import nn

    from meddiag_pipelines.device import torch_settings
    from meddiag_pipelines.imaging.model import ResNet18Small
    from meddiag_pipelines.imaging.train import augment_batch

    with torch_settings("cpu", deterministic=False, threads=threads):
        torch.manual_seed(0)
        model = ResNet18Small(1, 1, width, size)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), 1e-3)
        x = torch.rand(batch, 1, size, size).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 2, (batch, 1)).float()
        gen = torch.Generator().manual_seed(0)
        loss_fn = nn.BCEWithLogitsLoss()

        def step() -> None:
            opt.zero_grad()
            loss_fn(model(augment_batch(x, ["hflip", "affine"], gen)), y).backward()
            opt.step()

        step()
        t, n = time.perf_counter(), 0
        while time.perf_counter() - t < seconds:
            step()
            n += batch
        return n / (time.perf_counter() - t)


def cnn_cpu(seconds: float, width: int = 32, batch: int = 128) -> dict:
    import torch

    from meddiag_pipelines.imaging.model import ResNet18Small

    train_ips = cnn_train_throughput(width=width, size=28, batch=batch, seconds=seconds)
    model = ResNet18Small(1, 1, width, 28).eval().to(memory_format=torch.channels_last)
    x = torch.rand(512, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        model(x)
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < seconds or n == 0:
            model(x)
            n += len(x)
        infer_s = time.perf_counter() - start
    return {
        "seconds": seconds,
        "train_images_per_s": train_ips,
        "infer_images_per_s": n / infer_s,
        "width": width,
        "threads": torch.get_num_threads(),
    }


def synthetic_notes(n: int, n_classes: int = 4, seed: int = 0) -> tuple[list[str], list[int]]:
    """SYNTHETIC short clinical-style notes whose words depend on the class."""
    import numpy as np

    rng = np.random.default_rng(seed)
    common = "patient presents with history of noted reports denies stable acute chronic mild severe left right".split()
    topical = [
        ["chest", "pain", "troponin", "ecg", "angina", "cardiac"],
        ["cough", "fever", "sputum", "pneumonia", "xray", "wheeze"],
        ["glucose", "insulin", "diabetes", "thirst", "hba1c", "neuropathy"],
        ["fracture", "fall", "wrist", "swelling", "cast", "trauma"],
    ]
    y = rng.integers(0, n_classes, n)
    docs = []
    for label in y:
        words = list(rng.choice(common, rng.integers(6, 20))) + list(rng.choice(topical[label % 4], rng.integers(1, 5)))
        if rng.random() < 0.15:  # some notes mention another class's words
            words += list(rng.choice(topical[rng.integers(0, 4)], 2))
        rng.shuffle(words)
        docs.append(" ".join(words))
    return docs, [int(v) for v in y]


def text_cpu(docs: int, epochs: int, device: str = "cpu") -> dict:
    import tempfile
    from pathlib import Path

    import numpy as np

    from meddiag_pipelines.specs import TaskSpec
    from meddiag_pipelines.text.models import load_text_model, train_text_models

    texts, y = synthetic_notes(docs + docs // 4)
    classes = ["cardiac", "respiratory", "endocrine", "injury"]
    spec = TaskSpec.model_validate(
        {
            "name": "bench_text",
            "modality": "text",
            "label": "y",
            "id": "id",
            "text": "text",
            "training": {"epochs": epochs, "patience": epochs, "time_budget_s": 600},
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = train_text_models(
            texts[:docs], np.array(y[:docs]), texts[docs:], np.array(y[docs:]), classes, spec, Path(tmp), device=device
        )
        train_s = time.perf_counter() - start
        out = {"seconds": train_s, "train_docs_per_s": docs / train_s, "chosen": result.chosen}
        for kind in ("baseline", "neural"):
            model = (
                load_text_model(Path(tmp) / kind, device=device)
                if kind == "baseline"
                else load_text_model(Path(tmp) / kind)
            )
            model.predict(texts[:100])
            start = time.perf_counter()
            model.predict(texts)
            out[f"predict_{kind}_docs_per_s"] = len(texts) / (time.perf_counter() - start)
    return out


def run(size: str = "default") -> list[dict]:
    cfg = SIZES["smoke" if size == "smoke" else "default"]
    out = []
    r = measure(
        "bench.training:xgboost_cpu",
        {"rows": cfg["xgb_rows"], "features": cfg["xgb_features"], "rounds": cfg["xgb_rounds"]},
    )
    out.append(
        {
            "name": NAME,
            "impl": "xgboost_hist_cpu",
            "size": size,
            "rows": cfg["xgb_rows"],
            "features": cfg["xgb_features"],
            "rounds": cfg["xgb_rounds"],
            **{k: v for k, v in r.items() if k != "wall_s"},
        }
    )
    r = measure("bench.training:cnn_cpu", {"seconds": cfg["cnn_seconds"]})
    out.append(
        {
            "name": NAME,
            "impl": "cnn_resnet18small_28px_cpu",
            "size": size,
            **{k: v for k, v in r.items() if k != "wall_s"},
            "images_per_s": r.get("train_images_per_s"),
        }
    )
    r = measure("bench.training:text_cpu", {"docs": cfg["text_docs"], "epochs": cfg["text_epochs"]})
    out.append(
        {
            "name": NAME,
            "impl": "text_models_cpu",
            "size": size,
            "docs": cfg["text_docs"],
            "epochs": cfg["text_epochs"],
            **{k: v for k, v in r.items() if k != "wall_s"},
            "docs_per_s": r.get("train_docs_per_s"),
        }
    )
    for rec in out:
        emit(rec)
    return out


def main(argv: list[str]) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m bench training")
    parser.add_argument("--size", default="default", choices=sorted(SIZES))
    return run(parser.parse_args(argv).size)
