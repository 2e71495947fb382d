"""``python -m meddiag_pipelines.registry export``: a version's torch model to ONNX, checked against onnxruntime on
its test split. Tiny versions are built in a temporary data root by the modalities' own trainers, savers and image
cache; the refusals need no model at all."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from meddiag_pipelines.atomic import atomic_write_json
from meddiag_pipelines.registry.__main__ import main as registry_cli
from meddiag_pipelines.registry.export import export_dir
from meddiag_pipelines.registry.store import ModelRegistry
from meddiag_pipelines.specs import TaskSpec
from meddiag_pipelines.split import SPLIT_COLUMN
from meddiag_pipelines.storage import DataRoot

VERSION = "20261201T000000.000Z-abcdef12"
TEXT_SPEC = {"name": "tiny_notes", "modality": "text", "label": "label", "text": "note", "id": "note_id",
             "classes": ["cardiac", "infection", "trauma"], "training": {"epochs": 2, "batch_size": 8, "seed": 1}}  # fmt: skip


def publish(root: Path, task: str, fill, plan: dict, test_ids: list[str], name: str, classes: list[str]) -> None:
    """A published version whose model folder ``fill(model_dir)`` writes, with its plan and test predictions."""
    registry = ModelRegistry(DataRoot(root))
    staged = registry.staging_dir(task, VERSION)
    fill(staged / "model")
    atomic_write_json(staged / "plan.json", plan)
    pl.DataFrame({"id": test_ids}, schema={"id": pl.String}).write_parquet(staged / "test_predictions.parquet")
    registry.publish(task, VERSION, {"model": {"name": name, "classes": classes}})


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> tuple[Path, list[str]]:
    from meddiag_pipelines.imaging.preprocess import load_cached, update_cache
    from meddiag_pipelines.imaging.readers import read_image_batch
    from meddiag_pipelines.imaging.train import train_image_model
    from scripts.phantoms import write_phantom_batch

    spec = TaskSpec.model_validate({"name": "tiny_cnn", "modality": "image", "label": "label", "id": "id",
                                    "positive": "finding", "classes": ["normal", "finding"],
                                    "image": {"format": "folder", "size": 28}, "training": {"epochs": 1, "batch_size": 8}})  # fmt: skip
    root = tmp_path_factory.mktemp("export_image") / "data"
    batch = write_phantom_batch(root / "landing" / spec.name / "batch_0001", n=20, seed=5, size=28)
    records = read_image_batch(batch, spec).records.sort("id")
    cache = root / "cache" / spec.name
    update_cache(cache, batch, "batch_0001", records.select("id", "source", "sha256"), spec)
    ids = records["id"].to_list()
    X, y = load_cached(cache, ids), (records["label"] == "finding").cast(pl.Int64).to_numpy()

    def fill(model_dir: Path) -> None:
        train_image_model(X[:12], y[:12], X[12:16], y[12:16], "binary", 1, spec, model_dir, device="cpu", width=8)

    plan = {"modality": "image", "cache_dir": f"cache/{spec.name}", "size": 28, "channels": 1, "predictor": "cnn",
            "classes": spec.classes}  # fmt: skip
    publish(root, spec.name, fill, plan, ids[16:], "resnet18_small", spec.classes)
    return root, ids[16:]


@pytest.mark.slow
def test_an_image_version_exports_with_parity_once(image_root, monkeypatch, capsys):
    import onnxruntime

    from meddiag_pipelines.imaging.preprocess import load_cached
    from meddiag_pipelines.imaging.train import predict_image_model
    from meddiag_pipelines.registry import export

    root, test_ids = image_root
    monkeypatch.setenv("MEDDIAG_DATA_DIR", str(root))
    # an export whose outputs differ from torch's is refused with its figure, and nothing is left behind
    with monkeypatch.context() as patched:
        patched.setattr(export, "_export_and_compare", lambda exportable, target: {"max_abs_diff": 0.02})
        assert registry_cli(["export", "tiny_cnn", VERSION]) == 2
    assert "differ from torch's by up to 0.02" in capsys.readouterr().err
    assert not any(p.is_file() for p in (root / "exports").rglob("*"))

    assert registry_cli(["export", "tiny_cnn", VERSION]) == 0
    out = capsys.readouterr().out
    assert "exported to" in out and f"parity on {len(test_ids)} test rows" in out and "logits" in out
    folder = export_dir(root, "tiny_cnn", VERSION)
    parity = json.loads((folder / "parity.json").read_text())
    assert parity["max_abs_diff"] < 1e-4 and parity["n_test"] == len(test_ids) and parity["compared"] == "logits"
    assert parity["inputs"] == {"images": {"0": "batch"}} and parity["output_shape"] == ["batch", 1]
    assert not list((root / "models" / "tiny_cnn" / VERSION).glob("*.onnx"))  # the published version is untouched

    # a batch size other than the traced one; sigmoid of the logits is what scoring gives
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    images = load_cached(root / "cache" / "tiny_cnn", test_ids[:3])
    (logits,) = session.run(["logits"], {"images": images})
    assert logits.shape == (3, 1)
    expected = predict_image_model(root / "models" / "tiny_cnn" / VERSION / "model", images, device="cpu")
    np.testing.assert_allclose(1 / (1 + np.exp(-logits[:, 0])), expected, atol=1e-4)

    # the version is immutable: a second export is a no-op that reports the recorded figure
    before = (folder / "model.onnx").stat().st_mtime_ns
    assert registry_cli(["export", "tiny_cnn", VERSION]) == 0
    assert "already exported" in capsys.readouterr().out and (folder / "model.onnx").stat().st_mtime_ns == before


@pytest.mark.slow
def test_a_text_ngram_version_exports_with_parity(tmp_path, monkeypatch, capsys):
    import onnxruntime

    import meddiag_pipelines.text.models as text_models

    monkeypatch.setattr(text_models, "N_BUCKETS", 2**12)  # a small table: the export, not the model, is under test
    monkeypatch.setattr(text_models, "EMBED_DIM", 8)
    spec = TaskSpec.model_validate(TEXT_SPEC)
    words = {"cardiac": "chest pain troponin", "infection": "fever cough sputum", "trauma": "fracture fall wound"}
    labels = [spec.classes[i % 3] for i in range(30)]
    notes = [f"patient {i} {words[label]} day {i % 5}" for i, label in enumerate(labels)]
    notes[-1] = ""  # a text without words: an empty bag
    y = np.array([i % 3 for i in range(30)])
    root = tmp_path / "data"
    ids = [f"n{i:03d}" for i in range(30)]
    split = pl.DataFrame({"note_id": ids, "note": notes, "label": labels,
                          SPLIT_COLUMN: ["train"] * 18 + ["val"] * 6 + ["test"] * 6})  # fmt: skip
    DataRoot(root).write_parquet(f"warehouse/tables/{spec.name}/split/{VERSION}.parquet", split)

    def fill(model_dir: Path) -> None:
        model, _ = text_models._train_neural(notes[:18], y[:18], notes[18:24], y[18:24], spec.classes, spec, "cpu",
                                             math.inf)  # fmt: skip
        model.save(model_dir)

    plan = {"modality": "text", "text_column": "note", "min_text_chars": 1, "scrubbed_at_read": True, "binary": False}
    test_ids = ids[24:][::-1]  # test_predictions' order, which the check follows
    publish(root, spec.name, fill, plan, test_ids, "fasttext_torch", spec.classes)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_notes.yaml").write_text(json.dumps(TEXT_SPEC))
    monkeypatch.setenv("MEDDIAG_TASKS_DIR", str(tasks))
    monkeypatch.setenv("MEDDIAG_DATA_DIR", str(root))

    assert registry_cli(["export", spec.name, VERSION]) == 0
    assert "parity on 6 test rows" in capsys.readouterr().out
    folder = export_dir(root, spec.name, VERSION)
    parity = json.loads((folder / "parity.json").read_text())
    assert parity["max_abs_diff"] < 1e-4 and parity["output_shape"] == ["batch", 3]
    assert "temperature" in parity["then"] and set(parity["inputs"]) == {"indices", "offsets"}

    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    model = text_models.load_text_model(root / "models" / spec.name / VERSION / "model")
    bags = text_models._bags(notes[24:], model.n_buckets, model.char_ngrams)
    ids_t, offsets = text_models._batch_tensors(bags, "cpu")
    (logits,) = session.run(["logits"], {"indices": ids_t.numpy(), "offsets": offsets.numpy()})
    assert logits.shape == (6, 3)
    np.testing.assert_allclose(logits, model.logits(notes[24:]), atol=1e-4)


def test_an_unknown_version_or_a_tabular_model_is_refused_clearly(tmp_path, monkeypatch, capsys):
    root = tmp_path / "data"
    monkeypatch.setenv("MEDDIAG_DATA_DIR", str(root))
    publish(root, "heart", lambda d: d.mkdir(parents=True), {"numeric": ["age"]}, ["r1"], "xgboost", ["no", "yes"])

    assert registry_cli(["export", "heart", "no-such-version"]) == 2
    assert "has no published version 'no-such-version'" in capsys.readouterr().err
    assert registry_cli(["export", "heart", VERSION]) == 2
    err = capsys.readouterr().err
    assert "tabular model (xgboost) is not a torch model" in err and "model.ubj" in err
    assert not (root / "exports").exists() or not any((root / "exports").rglob("*.onnx"))
