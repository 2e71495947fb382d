"""CNN training on synthetic phantoms: it learns, it is deterministic on CPU, and it resumes after a crash."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from meddiag_pipelines.imaging.preprocess import load_cached, update_cache
from meddiag_pipelines.imaging.readers import read_image_batch
from meddiag_pipelines.imaging.train import (
    CHECKPOINT,
    adopt_parent_checkpoint,
    macro_auroc,
    predict_image_model,
    train_image_model,
)
from meddiag_pipelines.specs import TaskSpec
from scripts.phantoms import write_phantom_batch

pytestmark = pytest.mark.slow


def phantom_spec(**training) -> TaskSpec:
    return TaskSpec.model_validate(
        {
            "name": "phantom_nodule",
            "modality": "image",
            "label": "label",
            "positive": "finding",
            "id": "id",
            "patient_id": "patient_id",
            "subgroups": ["sex"],
            "image": {"format": "folder", "size": 28, "augment": ["hflip", "affine"]},
            "training": {"batch_size": 32, "learning_rate": 3e-3, "patience": 4, **training},
        }
    )


@pytest.fixture(scope="module")
def phantom_data(tmp_path_factory) -> tuple[np.ndarray, np.ndarray]:
    root = tmp_path_factory.mktemp("phantoms")
    batch = write_phantom_batch(root / "batch", n=1200, seed=11, size=28)
    spec = phantom_spec()
    records = read_image_batch(batch, spec).records
    update_cache(root / "cache", batch, "b1", records, spec)
    X = load_cached(root / "cache", records["id"].to_list())
    y = (records["label"] == "finding").to_numpy().astype(np.int64)
    return X, y


def test_learns_the_synthetic_finding(phantom_data, tmp_path: Path) -> None:
    X, y = phantom_data
    spec = phantom_spec(epochs=8)
    res = train_image_model(
        X[:900], y[:900], X[900:], y[900:], "binary", 1, spec, tmp_path / "m", device="cpu", width=8, num_threads=1
    )
    assert res.best_val_auroc > 0.8, res.history
    assert res.device == "cpu" and len(res.history) <= 8 and res.history[0]["images_per_second"] > 0
    p = predict_image_model(res.model_dir, X[900:], device="cpu")
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y[900:], p) == pytest.approx(res.best_val_auroc, abs=1e-4)  # model.pt = the best epoch
    meta = json.loads((res.model_dir / "model.json").read_text())
    assert meta["best_epoch"] == res.best_epoch and meta["kind"] == "binary"


def small(phantom_data):
    X, y = phantom_data
    return X[:160], y[:160], X[1000:1080], y[1000:1080]


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(model_dir / "model.pt", weights_only=True)


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa and wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_deterministic_on_cpu(phantom_data, tmp_path: Path) -> None:
    Xt, yt, Xv, yv = small(phantom_data)
    spec = phantom_spec(epochs=2)
    r1 = train_image_model(Xt, yt, Xv, yv, "binary", 1, spec, tmp_path / "a", device="cpu", width=8, num_threads=1)
    r2 = train_image_model(Xt, yt, Xv, yv, "binary", 1, spec, tmp_path / "b", device="cpu", width=8, num_threads=1)
    assert_same_weights(r1.model_dir, r2.model_dir)
    assert [h["val_auroc"] for h in r1.history] == [h["val_auroc"] for h in r2.history]
    np.testing.assert_array_equal(
        predict_image_model(r1.model_dir, Xv, "cpu"), predict_image_model(r2.model_dir, Xv, "cpu")
    )


def test_the_weight_average_is_what_is_saved_and_scored(phantom_data, tmp_path: Path) -> None:
    Xt, yt, Xv, yv = small(phantom_data)
    res = train_image_model(
        Xt,
        yt,
        Xv,
        yv,
        "binary",
        1,
        phantom_spec(epochs=2, patience=10),
        tmp_path / "m",
        device="cpu",
        width=8,
        num_threads=1,
    )
    ckpt = torch.load(res.model_dir / CHECKPOINT, weights_only=True)
    saved = weights(res.model_dir)
    assert ckpt["best_state"] and all(torch.equal(saved[k], v) for k, v in ckpt["best_state"].items())
    assert {f"module.{k}" for k in saved} <= set(ckpt["ema"]) and int(ckpt["ema"]["n_averaged"]) == 2 * 5  # every step
    # the raw weights the optimiser left are not what was saved
    assert not all(torch.equal(saved[k], ckpt["model"][k]) for k in saved if saved[k].is_floating_point())
    meta = json.loads((res.model_dir / "model.json").read_text())
    assert 0.9 <= meta["ema_decay"] < 1 and meta["model_config"]["hflip_tta"]  # trained with hflip: scored with it
    assert macro_auroc(yv, predict_image_model(res.model_dir, Xv, "cpu"), "binary") == pytest.approx(
        res.best_val_auroc, abs=1e-6
    )


class Crash(RuntimeError):
    pass


def test_resumes_after_a_crash(phantom_data, tmp_path: Path) -> None:
    Xt, yt, Xv, yv = small(phantom_data)
    spec = phantom_spec(epochs=4, patience=10)
    full = train_image_model(Xt, yt, Xv, yv, "binary", 1, spec, tmp_path / "full", device="cpu", width=8, num_threads=1)

    def crash_after_2(epoch: int, row: dict) -> None:
        if epoch == 2:
            raise Crash("simulated crash after epoch 2")

    out = tmp_path / "crashy"
    train = partial(train_image_model, device="cpu", width=8, num_threads=1)  # the same data into the same folder
    crashy = partial(train, Xt, yt, Xv, yv, "binary", 1, spec, out)
    with pytest.raises(Crash, match="simulated crash after epoch 2"):
        crashy(on_epoch_end=crash_after_2)
    assert (out / "checkpoint.pt").exists() and not (out / "model.pt").exists()
    seen = []
    resumed = crashy(on_epoch_end=lambda e, r: seen.append(e))
    assert resumed.resumed_from_epoch == 2 and seen == [3, 4]
    assert [h["val_auroc"] for h in resumed.history] == [h["val_auroc"] for h in full.history]
    assert resumed.best_epoch == full.best_epoch
    assert_same_weights(full.model_dir, resumed.model_dir)
    # a finished run called again does no more epochs; other data starts afresh
    again = crashy(on_epoch_end=lambda e, r: seen.append(e))
    assert seen == [3, 4] and again.resumed_from_epoch == 4
    one_epoch = spec.model_copy(update={"training": spec.training.model_copy(update={"epochs": 1})})
    other = train(Xt[:80], yt[:80], Xv, yv, "binary", 1, one_epoch, out)
    assert other.resumed_from_epoch == 0 and len(other.history) == 1


def test_time_budget_and_multiclass(phantom_data, tmp_path: Path) -> None:
    Xt, yt, Xv, yv = small(phantom_data)
    spec = phantom_spec(epochs=50, time_budget_s=0.5)
    res = train_image_model(Xt, yt, Xv, yv, "binary", 1, spec, tmp_path / "t", device="cpu", width=8, num_threads=1)
    assert res.stopped == "time_budget" and len(res.history) < 50
    # three classes: the finding, normal, and a made-up third class from the sex subgroup (a shape check)
    y3 = (yt + (np.arange(len(yt)) % 3 == 0)).clip(0, 2)
    v3 = (yv + (np.arange(len(yv)) % 3 == 0)).clip(0, 2)
    res3 = train_image_model(
        Xt, y3, Xv, v3, "multiclass", 3, phantom_spec(epochs=1), tmp_path / "mc", device="cpu", width=8, num_threads=1
    )
    p = predict_image_model(res3.model_dir, Xv, "cpu")
    assert p.shape == (len(Xv), 3) and np.isfinite(res3.best_val_auroc)


def test_time_budget_run_continues_when_given_more_time(phantom_data, tmp_path: Path) -> None:
    Xt, yt, Xv, yv = small(phantom_data)
    short = train_image_model(
        Xt,
        yt,
        Xv,
        yv,
        "binary",
        1,
        phantom_spec(epochs=3, time_budget_s=0.2),
        tmp_path / "m",
        device="cpu",
        width=8,
        num_threads=1,
    )
    assert short.stopped == "time_budget"
    more = train_image_model(
        Xt,
        yt,
        Xv,
        yv,
        "binary",
        1,
        phantom_spec(epochs=3, time_budget_s=600),
        tmp_path / "m",
        device="cpu",
        width=8,
        num_threads=1,
    )
    assert more.stopped == "epochs" and len(more.history) == 3 and more.resumed_from_epoch == len(short.history)


def test_a_reexecution_adopts_the_checkpoint_its_parent_run_left(tmp_path: Path) -> None:
    staging = tmp_path / ".staging"
    parent = staging / "20260101T000000Z-abcdef12" / "model"
    parent.mkdir(parents=True)
    (parent / CHECKPOINT).write_bytes(b"weights")
    (staging / "20260101T000000Z-77777777" / "model").mkdir(parents=True)  # another run's folder, no checkpoint
    fresh = staging / "20260102T000000Z-99999999" / "model"
    assert adopt_parent_checkpoint(fresh, staging, None) is False  # a first run starts afresh
    assert adopt_parent_checkpoint(fresh, staging, "77777777-0000") is False  # its parent left no checkpoint
    assert not fresh.exists()
    assert adopt_parent_checkpoint(fresh, staging, "abcdef12-0000-0000-0000-000000000000") is True
    assert (fresh / CHECKPOINT).read_bytes() == b"weights" and sorted(p.name for p in fresh.iterdir()) == [CHECKPOINT]
    (parent / CHECKPOINT).write_bytes(b"newer")
    assert adopt_parent_checkpoint(fresh, staging, "abcdef12-0000") is False  # its own checkpoint wins
    assert (fresh / CHECKPOINT).read_bytes() == b"weights"
