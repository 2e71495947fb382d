"""timm backbones, offline: tiny random-initialised configs of each family saved as weights files, named by
``image.weights``, loaded by path, trained a few steps, scored, saved and reloaded; wrong checkpoints refused."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from meddiag_pipelines.imaging.backbones import CheckpointMismatch, import_timm, new_backbone
from meddiag_pipelines.imaging.saliency import grad_cam
from meddiag_pipelines.imaging.train import load_image_model, predict_image_model, train_image_model
from meddiag_pipelines.specs import SpecError, load_spec

TINY = {  # the smallest member of each family, at 32 px
    "resnet18": {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64]},
    "vit_tiny_patch16_224": {"depth": 1, "embed_dim": 32, "num_heads": 2, "patch_size": 8},
    "densenet121": {"growth_rate": 8, "block_config": [1, 1, 1, 1]},
    "convnext_atto": {"dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1]},
}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No network: the hub is told to stay offline and any socket connection fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pretrained_file(tmp_path: Path, backbone: str, in_chans: int = 3, fmt: str = "safetensors") -> Path:
    """A stand-in for a downloaded checkpoint: the random-initialised timm model (RGB, 1000 classes) saved."""
    timm = import_timm()
    kwargs = dict(TINY[backbone], **({"img_size": 32} if backbone.startswith("vit") else {}))
    torch.manual_seed(1)
    state = timm.create_model(backbone, pretrained=False, in_chans=in_chans, **kwargs).state_dict()
    path = tmp_path / f"{backbone}.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def write_spec(tmp_path: Path, backbone, weights=None, **image) -> Path:
    spec = {
        "name": "tiny_backbone",
        "modality": "image",
        "label": "label",
        "positive": "finding",
        "image": {
            "format": "folder",
            "size": 28,
            "backbone": backbone,
            "backbone_size": 32,
            "backbone_kwargs": TINY[backbone] if isinstance(backbone, str) else {},
            **image,
        },
        "training": {"epochs": 2, "batch_size": 16, "learning_rate": 1e-3},
    }
    if weights:
        spec["image"]["weights"] = weights
    (tmp_path / "spec").mkdir(exist_ok=True)
    path = tmp_path / "spec" / "tiny_backbone.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def tiny_data(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.random((n, 1, 28, 28)).astype(np.float32)
    y = np.tile([0, 1], n // 2)
    X[y == 1, :, 10:18, 10:18] = 1.0  # a bright square: something to learn
    return X, y


@pytest.mark.parametrize("backbone", list(TINY))
def test_each_family_loads_trains_scores_and_reloads_identically(tmp_path: Path, backbone: str) -> None:
    weights = pretrained_file(tmp_path, backbone)
    spec = load_spec(write_spec(tmp_path, backbone, weights="../" + weights.name))  # relative to the spec file
    assert spec.image.weights == str(weights)
    X, y = tiny_data()
    res = train_image_model(
        X[:30], y[:30], X[30:], y[30:], "binary", 1, spec, tmp_path / "model", device="cpu", num_threads=1
    )
    meta = json.loads((res.model_dir / "model.json").read_text())
    assert meta["architecture"] == "timm" and meta["model_config"]["backbone"] == backbone
    assert meta["weights"] == weights.name and meta["hyperparameters"]["backbone"] == backbone
    p = predict_image_model(res.model_dir, X[:6], device="cpu")
    assert p.shape == (6,) and np.all((p >= 0) & (p <= 1))
    model, _ = load_image_model(res.model_dir, "cpu")  # rebuilt offline from model.json, no weights file needed
    with torch.no_grad():
        again = torch.sigmoid(model(torch.from_numpy(X[:6])))[:, 0].numpy()
    np.testing.assert_array_equal(again, predict_image_model(res.model_dir, X[:6], device="cpu"))
    np.testing.assert_allclose(again, p, atol=1e-6)
    maps = grad_cam(res.model_dir, X[:2])
    assert maps.shape == (2, 28, 28) and 0 <= maps.min() and maps.max() <= 1
    if backbone.startswith("vit"):  # the input gradient (a CNN's Grad-CAM may be all zero on a 1 x 1 last map)
        assert maps.max() == 1


def test_one_channel_first_conv_is_the_sum_of_the_pretrained_rgb_filters(tmp_path: Path) -> None:
    weights = pretrained_file(tmp_path, "resnet18", fmt="pt")  # a torch state dict this time
    rgb = torch.load(weights, weights_only=True)
    model = new_backbone("resnet18", 1, 1, 32, weights=str(weights), timm_kwargs=TINY["resnet18"])
    torch.testing.assert_close(model.body.conv1.weight, rgb["conv1.weight"].sum(dim=1, keepdim=True))
    torch.testing.assert_close(model.body.layer1[0].conv1.weight, rgb["layer1.0.conv1.weight"])
    assert model.body.fc.weight.shape == (1, 64)  # the 1000-class head is not loaded


def test_a_vit_is_built_for_the_backbone_size_and_its_position_embeddings_resampled(tmp_path: Path) -> None:
    weights = pretrained_file(tmp_path, "vit_tiny_patch16_224")  # 32 px: a 4 x 4 grid of patches
    model = new_backbone(
        "vit_tiny_patch16_224",
        1,
        1,
        28,
        backbone_size=48,
        weights=str(weights),
        timm_kwargs=TINY["vit_tiny_patch16_224"],
    )
    assert model.body.pos_embed.shape[1] == 1 + 6 * 6
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 1)


def test_a_wrong_checkpoint_is_refused_in_plain_words(tmp_path: Path) -> None:
    weights = pretrained_file(tmp_path, "densenet121")
    with pytest.raises(
        CheckpointMismatch, match=r"densenet121\.safetensors: does not fit backbone resnet18.*weights missing"
    ):
        new_backbone("resnet18", 1, 1, 32, weights=str(weights), timm_kwargs=TINY["resnet18"])
    torch.save({"not": "tensors"}, tmp_path / "junk.pt")
    with pytest.raises(CheckpointMismatch, match="not a state dict"):
        new_backbone("resnet18", 1, 1, 32, weights=str(tmp_path / "junk.pt"), timm_kwargs=TINY["resnet18"])


def test_a_28_px_task_runs_a_zoo_cnn_at_32_px_by_default() -> None:
    model = new_backbone("convnext_atto", 1, 1, 28, timm_kwargs=TINY["convnext_atto"])  # 4 x 4 stem, then 3 halvings
    assert model.config.backbone_size == 32 and model(torch.rand(2, 1, 28, 28)).shape == (2, 1)


def test_the_spec_names_the_missing_weights_file_and_unknown_backbones(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="image.weights.*not found"):
        load_spec(write_spec(tmp_path, "resnet18", weights="nowhere.safetensors"))
    with pytest.raises(ValueError, match="not a timm architecture"):
        new_backbone("no_such_net", 1, 1, 32)


@pytest.mark.parametrize("finetune", ["linear_probe", "frozen_then_unfrozen"])
def test_fine_tuning_modes_train_the_head_first(tmp_path: Path, finetune: str) -> None:
    weights = pretrained_file(tmp_path, "resnet18")
    spec = load_spec(write_spec(tmp_path, "resnet18", weights=str(weights), finetune=finetune))
    X, y = tiny_data()
    res = train_image_model(
        X[:30], y[:30], X[30:], y[30:], "binary", 1, spec, tmp_path / "model", device="cpu", num_threads=1
    )
    start = new_backbone("resnet18", 1, 1, 28, 32, str(weights), TINY["resnet18"]).state_dict()
    end = torch.load(res.model_dir / "checkpoint.pt", weights_only=True)["model"]  # the last epoch's weights
    body_moved = not torch.equal(start["body.layer1.0.conv1.weight"], end["body.layer1.0.conv1.weight"])
    assert body_moved == (finetune == "frozen_then_unfrozen")  # 2 epochs: the first frozen, the second not
    assert not torch.equal(start["body.fc.weight"], end["body.fc.weight"])
    assert torch.equal(start["body.bn1.running_mean"], end["body.bn1.running_mean"]) == (finetune == "linear_probe")


def test_tuning_chooses_among_backbones_records_the_search_and_resumes_after_a_crash(tmp_path: Path) -> None:
    from meddiag_pipelines.imaging.tuning import fit_image_model

    spec = load_spec(write_spec(tmp_path, "resnet18"))
    kwargs = {b: TINY[b] for b in ("resnet18", "convnext_atto")}
    image = spec.image.model_copy(update={"backbone": list(kwargs), "backbone_kwargs": kwargs})
    spec = spec.model_copy(update={"image": image, "training": spec.training.model_copy(update={"trials": 2})})
    X, y = tiny_data()
    calls = []

    def crash_in_the_second_trial(epoch: int, row: dict) -> None:
        calls.append(epoch)
        if len(calls) == 3:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        fit_image_model(
            X[:30],
            y[:30],
            X[30:],
            y[30:],
            "binary",
            1,
            spec,
            tmp_path / "model",
            "cpu",
            num_threads=1,
            on_epoch_end=crash_in_the_second_trial,
        )
    record = json.loads((tmp_path / "model" / "tuning.json").read_text())
    assert len(record["trials"]) == 1 and record["running"] is not None
    res = fit_image_model(
        X[:30],
        y[:30],
        X[30:],
        y[30:],
        "binary",
        1,
        spec,
        tmp_path / "model",
        "cpu",
        num_threads=1,
        on_epoch_end=lambda e, r: calls.append(e),
    )
    assert len(calls) == 4  # the interrupted trial resumed from its checkpoint after its first epoch
    meta = json.loads((res.model_dir / "model.json").read_text())
    tuning = meta["tuning"]
    assert tuning["n_trials"] == 2 and tuning["n_pruned"] == 0 and "AUROC" in tuning["objective"]
    assert {"learning_rate", "optimizer", "weight_decay", "augment", "backbone"} <= set(tuning["best"])
    assert meta["model_config"]["backbone"] == tuning["best"]["backbone"] == meta["hyperparameters"]["backbone"]
    assert not (tmp_path / "model" / "trials").exists()
    assert predict_image_model(res.model_dir, X[:4], device="cpu").shape == (4,)


def test_tuning_the_from_scratch_cnn_varies_width_and_depth(tmp_path: Path) -> None:
    from meddiag_pipelines.imaging.tuning import fit_image_model

    spec = load_spec(write_spec(tmp_path, "resnet18"))
    spec = spec.model_copy(
        update={
            "image": spec.image.model_copy(update={"backbone": None, "backbone_kwargs": {}}),
            "training": spec.training.model_copy(update={"trials": 2, "tune": True}),
        }
    )
    X, y = tiny_data()
    res = fit_image_model(
        X[:30], y[:30], X[30:], y[30:], "binary", 1, spec, tmp_path / "model", "cpu", width=4, num_threads=1
    )
    meta = json.loads((res.model_dir / "model.json").read_text())
    best = meta["tuning"]["best"]
    assert meta["architecture"] == "ResNet18Small" and best["width"] in (4, 8)
    assert meta["model_config"]["width"] == best["width"] and len(meta["model_config"]["blocks"]) == 4


def test_the_model_card_and_the_report_show_the_search_whatever_the_modality() -> None:
    from meddiag_pipelines.evaluation.metrics import evaluate
    from meddiag_pipelines.evaluation.model_card import render_model_card
    from meddiag_pipelines.imaging.report import tuning_section
    from meddiag_pipelines_tests.test_evaluation_report import _binary_input, _card

    tuning = {
        "best": {"learning_rate": 0.0021, "optimizer": "sgd", "backbone": "vit|x"},
        "n_trials": 6,
        "n_pruned": 2,
        "objective": "validation AUROC",
        "best_value": 0.91234,
    }
    md = render_model_card(evaluate(_binary_input()), _card(hyperparameters={"epochs": 3, "tuning": tuning}))
    assert "Hyperparameter search: 6 trials (2 pruned)" in md and "best 0.912" in md
    assert re.search(r"^\| optimizer \| sgd \|$", md, re.M) and "vit\\|x" in md  # a table cell cannot be injected
    assert not re.search(r"^\| tuning \|", md, re.M)  # not dumped into the hyperparameter table
    title, body = tuning_section({k: v for k, v in tuning.items() if k != "best_value"})  # as the text models write it
    assert title == "Hyperparameter search" and "6 trials, 2 pruned" in body and "<td>sgd</td>" in body


@pytest.mark.slow
def test_a_task_naming_a_vit_with_a_local_weights_file_runs_end_to_end(tmp_path: Path) -> None:
    import dagster as dg
    import polars as pl

    from meddiag_pipelines.specs import BUNDLED_TASKS_DIR
    from meddiag_pipelines_tests.test_imaging_pipeline import run_job, tiny
    from scripts.phantoms import write_phantom_batch

    backbone = "vit_tiny_patch16_224"
    weights = pretrained_file(tmp_path, backbone)
    spec = tiny(load_spec(BUNDLED_TASKS_DIR / "synthetic_chest_phantoms.yaml"), trials=2, tune=True)
    image = {
        "backbone": backbone,
        "backbone_kwargs": TINY[backbone],
        "backbone_size": 32,
        "weights": str(weights),
        "finetune": "frozen_then_unfrozen",
    }
    spec = spec.model_copy(update={"image": spec.image.model_copy(update=image)})
    task, root = spec.name, tmp_path / "data"
    batch = write_phantom_batch(root / "landing" / task / "batch_0001", n=120, seed=7, size=28)
    unlabelled = pl.read_csv(batch / "labels.csv")["id"].to_list()[:3]
    labels = pl.read_csv(batch / "labels.csv")
    labels.with_columns(
        pl.when(pl.col("id").is_in(unlabelled)).then(None).otherwise(pl.col("label")).alias("label")
    ).write_csv(batch / "labels.csv")
    (batch / "_READY").touch()
    with dg.instance_for_test() as instance:
        assert run_job(spec, root, instance).success
    latest = root / "reports" / task / "latest"
    html = (latest / "report.html").read_text()
    assert "Hyperparameter search" in html and "Saliency (input gradient)" in html and "data:image/png;base64," in html
    assert "Hyperparameter search: 2 trials" in (latest / "model_card.md").read_text()
    champion = json.loads((root / "models" / task / "champion.json").read_text())["version"]
    meta = json.loads((root / "models" / task / champion / "model" / "model.json").read_text())
    assert meta["architecture"] == "timm" and meta["weights"] == weights.name and meta["tuning"]["n_trials"] == 2
    assert not (root / "models" / task / champion / "model" / "trials").exists()
    scored = pl.read_parquet(root / "predictions" / task / "batch_0001" / f"{champion}.parquet")
    assert sorted(scored["id"].to_list()) == sorted(unlabelled) and scored["probability"].is_between(0, 1).all()


def test_a_reexecution_adopts_the_search_its_parent_run_left(tmp_path: Path) -> None:
    from meddiag_pipelines.imaging.train import adopt_parent_checkpoint

    parent = tmp_path / "20260101T000000Z-abcdef12" / "model"
    (parent / "trials" / "001").mkdir(parents=True)
    (parent / "tuning.json").write_text("{}")
    (parent / "trials" / "001" / "checkpoint.pt").write_bytes(b"weights")
    fresh = tmp_path / "20260102T000000Z-99999999" / "model"
    assert adopt_parent_checkpoint(fresh, tmp_path, "abcdef12-0000") is True
    assert (fresh / "tuning.json").read_text() == "{}" and (
        fresh / "trials" / "001" / "checkpoint.pt"
    ).read_bytes() == b"weights"
    assert adopt_parent_checkpoint(fresh, tmp_path, "abcdef12-0000") is False  # its own search wins


def test_hub_weights_are_fetched_only_when_named_and_fail_plainly_offline() -> None:
    with pytest.raises(RuntimeError, match="could not fetch the pretrained weights 'resnet18'.*needs the network"):
        new_backbone("resnet18", 1, 1, 32, weights="hub", timm_kwargs=TINY["resnet18"])
