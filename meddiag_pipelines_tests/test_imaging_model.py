"""The CNN's shapes, the augmentation, Grad-CAM and the saliency panel (fast: tiny models)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from meddiag_pipelines.imaging.model import ResNet18Small, build_model
from meddiag_pipelines.imaging.readers import read_image_batch
from meddiag_pipelines.imaging.saliency import grad_cam, saliency_panel_png
from meddiag_pipelines.imaging.train import (
    _ema_update,
    augment_batch,
    choose_width,
    ema_decay,
    predict_image_model,
    train_image_model,
)
from meddiag_pipelines_tests.test_imaging_readers import make_spec
from scripts.phantoms import write_phantom_batch


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the test machine is shared and OpenMP threads spin against each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("size", "channels", "stem"), [(28, 1, "3x3s1"), (64, 3, "3x3s1"), (128, 1, "3x3s2"), (224, 1, "7x7s2+maxpool")]
)
def test_forward_shapes(size: int, channels: int, stem: str) -> None:
    model = ResNet18Small(in_channels=channels, n_outputs=5, width=8, input_size=size).eval()
    assert model.config.stem == stem
    with torch.no_grad():
        x = torch.rand(2, channels, size, size)
        assert model(x).shape == (2, 5)
        feats = model.features(x)
    assert feats.shape[1] == 64
    if size == 28:
        assert feats.shape[2:] == (4, 4)  # no stem downsampling: 28 -> 28 -> 14 -> 7 -> 4
    if size == 64:
        assert feats.shape[2:] == (8, 8)


def test_resnet18_width_and_rebuild() -> None:
    full = ResNet18Small(in_channels=3, n_outputs=1000, width=64, input_size=224)
    assert (
        abs(sum(p.numel() for p in full.parameters()) - 11_689_512) < 0.001 * 11_689_512
    )  # torchvision resnet18's size
    small = ResNet18Small(1, 2, 32, 28)
    clone = build_model(json.loads(json.dumps(small.config.to_dict())))
    clone.load_state_dict(small.state_dict())
    assert clone.config == small.config
    assert (
        choose_width(4708, 28, "cpu") == 32
        and choose_width(78_468, 28, "cpu") == 16
        and choose_width(10, 28, "cuda") == 64
    )


def test_a_config_saved_before_the_pool_option_loads_as_the_average_head() -> None:
    old = ResNet18Small(1, 2, 8, 28).eval()
    config = json.loads(json.dumps(old.config.to_dict()))
    del config["pool"]  # a model.json written before the option
    clone = build_model(config).eval()
    clone.load_state_dict(old.state_dict())  # strict: the same parameters, the classifier reads 8w features
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert clone.config.pool == "avg" and torch.equal(clone(x), old(x))
        assert torch.allclose(clone.penultimate(clone.features(x)), clone.features(x).mean(dim=(2, 3)), atol=1e-6)


def test_the_avgmax_head_reads_the_average_then_the_maximum_of_each_channel() -> None:
    model = ResNet18Small(1, 3, 4, 16, blocks=(1, 1, 1, 1), spatial_dims=3, pool="avgmax").eval()
    feats = torch.zeros(2, 32, 2, 2, 2)
    feats[1, 5, 0, 1, 1] = 8.0  # one bright voxel: an eighth of it in the average, all of it in the maximum
    pooled = model.penultimate(feats)
    assert pooled.shape == (2, 64) and model.fc.in_features == 64
    assert pooled[1, 5] == 1.0 and pooled[1, 32 + 5] == 8.0 and pooled[0].abs().sum() == 0
    with pytest.raises(ValueError, match="pool must be one of"):
        ResNet18Small(1, 1, 4, 16, pool="max")


def test_hflip_tta_scores_the_mean_of_the_image_and_its_mirror_in_eval_only() -> None:
    torch.manual_seed(0)
    model = ResNet18Small(1, 1, 8, 28, hflip_tta=True)
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        single = model.eval().head(model.features(x))
        mirror = model.head(model.features(x.flip(3)))
        assert not torch.allclose(single, mirror)
        torch.testing.assert_close(model(x), (single + mirror) / 2)
        assert build_model(json.loads(json.dumps(model.config.to_dict()))).config.hflip_tta
        assert not build_model({**model.config.to_dict(), "hflip_tta": False}).config.hflip_tta
    model.train()  # training sees one (augmented) view
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.head(model.features(x)))
    assert not ResNet18Small(1, 1, 8, 28).config.hflip_tta


def test_the_weight_average_spans_about_an_epoch_and_warms_up() -> None:
    assert ema_decay(37) == pytest.approx(1 - 1 / 37) and ema_decay(2) == 0.9 and ema_decay(10**6) == 0.9999
    update = _ema_update(0.99)
    averaged, current = [torch.zeros(3)], [torch.ones(3)]
    update(averaged, current, torch.tensor(0))  # first update: decay (1 + 0) / 10, follows the weights closely
    torch.testing.assert_close(averaged[0], torch.full((3,), 0.9))
    update(averaged, current, torch.tensor(10**6))  # later: the configured decay
    torch.testing.assert_close(averaged[0], torch.full((3,), 0.9 + 0.1 * 0.01))
    counter = [torch.tensor(5)]
    update(counter, [torch.tensor(7)], torch.tensor(3))  # integer buffers (batch-norm step counts) are copied
    assert int(counter[0]) == 7


def test_augment_batch_is_seeded_and_keeps_shape() -> None:
    x = torch.rand(6, 1, 28, 28)
    a = augment_batch(x, ["hflip", "vflip", "affine"], torch.Generator().manual_seed(1))
    b = augment_batch(x, ["hflip", "vflip", "affine"], torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    assert torch.equal(augment_batch(x, [], torch.Generator()), x)
    flipped = augment_batch(x, ["hflip"], torch.Generator().manual_seed(0))
    for i in range(6):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(2))


def tiny_model(tmp_path: Path, kind: str = "binary", n_outputs: int = 1):
    rng = np.random.default_rng(0)
    X = rng.random((40, 1, 28, 28)).astype(np.float32)
    if kind == "binary":
        y = np.tile([0, 1], 20)
    elif kind == "multiclass":
        y = np.tile(np.arange(n_outputs), 40)[:40]
    else:
        y = rng.integers(0, 2, (40, n_outputs))
        y[0], y[1] = 0, 1
    spec = make_spec("folder").model_copy(
        update={"training": make_spec().training.model_copy(update={"epochs": 1, "batch_size": 16})}
    )
    res = train_image_model(
        X[:30], y[:30], X[30:], y[30:], kind, n_outputs, spec, tmp_path / kind, device="cpu", width=4, num_threads=1
    )
    return res, X


@pytest.mark.parametrize(
    ("kind", "n_outputs", "shape"), [("binary", 1, (7,)), ("multiclass", 3, (7, 3)), ("multilabel", 4, (7, 4))]
)
def test_predict_shapes_and_model_files(tmp_path: Path, kind: str, n_outputs: int, shape: tuple) -> None:
    res, X = tiny_model(tmp_path, kind, n_outputs)
    meta = json.loads((res.model_dir / "model.json").read_text())
    assert meta["kind"] == kind and meta["input_size"] == 28 and meta["model_config"]["width"] == 4
    assert set(meta["normalisation"]) >= {"mean", "std"}
    p = predict_image_model(res.model_dir, X[:7], device="cpu")
    assert p.shape == shape and np.all((p >= 0) & (p <= 1))
    if kind == "multiclass":
        np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)
    state = torch.load(res.model_dir / "model.pt", weights_only=True)  # plain state dict, safe to load
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())


def test_grad_cam_and_panel(tmp_path: Path) -> None:
    res, X = tiny_model(tmp_path)
    maps = grad_cam(res.model_dir, X[:3])
    assert maps.shape == (3, 28, 28) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1
    assert grad_cam(res.model_dir, X[:2], target_index=0).shape == (2, 28, 28)
    with pytest.raises(ValueError, match=r"target_index 3 outside \[0, 1\)"):
        grad_cam(res.model_dir, X[:2], target_index=3)
    png = saliency_panel_png(X[:3], maps, ["a", "b", "c"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000


def test_phantoms_are_labelled_synthetic_pngs(tmp_path: Path) -> None:
    batch = write_phantom_batch(tmp_path / "ph", n=20, seed=7, size=64, positive_rate=0.5)
    assert batch == tmp_path / "ph"
    text = (batch / "labels.csv").read_text()
    assert text.splitlines()[0] == "file,label,id,patient_id,sex"
    rec = read_image_batch(batch, make_spec("folder")).records
    assert rec.height == 20 and set(rec["label"]) <= {"finding", "normal"} and set(rec["sex"]) <= {"F", "M"}
    assert all("synthetic_phantom" in s for s in rec["source"]) and rec["patient_id"].n_unique() <= 20
    assert rec["height"].unique().to_list() == [64]
    again = write_phantom_batch(tmp_path / "ph2", n=20, seed=7, size=64, positive_rate=0.5)
    assert (again / "labels.csv").read_text() == text  # seeded
    assert read_image_batch(again, make_spec("folder")).records["sha256"].to_list() == rec["sha256"].to_list()


def test_saliency_groups_follow_the_operating_threshold_and_the_predicted_class() -> None:
    from meddiag_pipelines.imaging.report import saliency_groups

    y, proba = np.array([1, 1, 0, 0]), np.array([0.9, 0.2, 0.7, 0.1])
    groups, _, note = saliency_groups("binary", ["no", "yes"], y, proba, {"operating_threshold": {"value": 0.5}})
    assert [(h, m.tolist()) for h, m, _ in groups] == [
        ("True positives", [True, False, False, False]),
        ("False positives", [False, False, True, False]),
        ("False negatives", [False, True, False, False]),
    ]
    assert "0.500" in note and "yes" in note
    groups, scores, _ = saliency_groups(
        "multiclass", ["a", "b", "c"], np.array([0, 2]), np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1]]), {}
    )
    assert [m.tolist() for _, m, _ in groups] == [[True, False], [False, True]] and scores.tolist() == [0.6, 0.5]
    groups, _, _ = saliency_groups(
        "multilabel",
        ["f0", "f1"],
        np.array([[1, 1], [0, 1]]),
        np.array([[0.9, 0.3], [0.8, 0.6]]),
        {"per_label": [{"operating_threshold": {"value": 0.5}}, {"operating_threshold": {"value": 0.5}}]},
    )
    assert [(h, m.tolist(), t) for h, m, t in groups] == [
        ("True positives: f0", [True, False], 0),
        ("True positives: f1", [False, True], 1),
    ]


def test_the_saliency_section_draws_each_group_and_survives_a_failure(tmp_path: Path) -> None:
    import polars as pl

    from meddiag_pipelines.imaging.report import SALIENCY_TITLE, saliency_section

    res, X = tiny_model(tmp_path)
    test_labels = pl.Series(["no", "yes", "yes", "no", "yes"])
    proba = np.array([0.1, 0.9, 0.2, 0.8, 0.7])
    asked: list[list[int]] = []

    def images(rows: list[int]) -> np.ndarray:
        asked.append(rows)
        return X[rows]

    title, body = saliency_section(
        res.model_dir,
        ["no", "yes"],
        "binary",
        test_labels,
        proba,
        {"operating_threshold": {"value": 0.5}},
        images,
        seed=0,
    )
    assert title == SALIENCY_TITLE.format(method="Grad-CAM") and body.count("data:image/png;base64,") == 3
    assert "True positives (2 of 5)" in body and "False negatives (1 of 5)" in body
    assert sorted(r for rows in asked for r in rows) == [1, 2, 3, 4]  # every shown image is one of its group

    def broken(rows: list[int]) -> np.ndarray:
        raise KeyError("the cache is gone")

    title, body = saliency_section(res.model_dir, ["no", "yes"], "binary", test_labels, proba, {}, broken, seed=0)
    assert (
        title == SALIENCY_TITLE.format(method="Grad-CAM")
        and "could not be computed (KeyError)" in body
        and "cache is gone" not in body
    )


def test_images_are_scored_in_chunks_by_either_model(tmp_path: Path) -> None:
    from meddiag_pipelines.imaging.scoring import MIN_CHUNK, pooled_pixels, predict_images
    from meddiag_pipelines.logistic import train_logistic

    rng = np.random.default_rng(1)
    X = rng.random((MIN_CHUNK + 20, 1, 28, 28)).astype(np.float32)
    y = (X[:, 0, :14].mean(axis=(1, 2)) > X[:, 0, 14:].mean(axis=(1, 2))).astype(int)
    P = pooled_pixels(X, 14)
    assert P.shape == (len(X), 196) and np.isclose(P[0, 0], X[0, 0, :2, :2].mean())
    train_logistic(P[:200], y[:200], P[200:], y[200:], 2, tmp_path / "baseline", [f"p{i}" for i in range(196)])
    ids = [str(i) for i in range(len(X))]
    asked: list[int] = []

    def images(chunk: list[str]) -> np.ndarray:
        asked.append(len(chunk))
        return X[[int(i) for i in chunk]]

    plan = {"channels": 1, "size": 28, "classes": ["no", "yes"], "predictor": "pixel_logistic", "baseline_side": 14}
    p = predict_images(tmp_path / "baseline", plan, ids, images, "binary", "cpu", chunk_bytes=1)
    assert asked == [MIN_CHUNK, 20] and p.shape == (len(X),) and p.dtype == np.float64
    whole = predict_images(tmp_path / "baseline", plan, ids, images, "multiclass", "cpu")  # two classes, no positive
    assert asked[2:] == [len(X)] and whole.shape == (len(X), 2) and np.allclose(whole[:, 1], p)
    assert predict_images(tmp_path / "baseline", plan, [], images, "multiclass", "cpu").shape == (0, 2)

    res, X28 = tiny_model(tmp_path / "cnn")
    cnn = predict_images(
        res.model_dir,
        {"channels": 1, "size": 28, "predictor": "cnn"},
        ["0", "1", "2"],
        lambda chunk: X28[[int(i) for i in chunk]],
        "binary",
        "cpu",
    )
    np.testing.assert_allclose(cnn, predict_image_model(res.model_dir, X28[:3], device="cpu"))
