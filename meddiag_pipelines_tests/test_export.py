"""``python -m meddiag_pipelines.registry export``: a version's model to ONNX, checked against onnxruntime on its
test split. Tiny versions are built in a temporary data root by the modalities' own trainers, savers and image
cache; the refusals need no model at all."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from meddiag_pipelines.atomic import atomic_write_json
from meddiag_pipelines.registry.__main__ import main as registry_cli
from meddiag_pipelines.registry.export import export_dir
from meddiag_pipelines.registry.store import ModelRegistry
from meddiag_pipelines.scoring import prediction_frame
from meddiag_pipelines.specs import TaskSpec
from meddiag_pipelines.split import SPLIT_COLUMN
from meddiag_pipelines.storage import DataRoot
from meddiag_pipelines_tests.conftest import SYNTHETIC_SPEC, synthetic_records

VERSION = "20261201T000000.000Z-abcdef12"
TEXT_SPEC = {
    "name": "tiny_notes",
    "modality": "text",
    "label": "label",
    "text": "note",
    "id": "note_id",
    "classes": ["cardiac", "infection", "trauma"],
    "training": {"epochs": 2, "batch_size": 8, "seed": 1},
}


def publish(
    root: Path,
    task: str,
    fill,
    plan: dict,
    test_ids: list[str],
    name: str,
    classes: list[str],
    predictions=None,
    version: str = VERSION,
) -> None:
    """A published version whose model folder ``fill(model_dir)`` writes, with its plan and test predictions
    (``predictions(model_dir)``: the frame, else only the ids)."""
    registry = ModelRegistry(DataRoot(root))
    staged = registry.staging_dir(task, version)
    fill(staged / "model")
    atomic_write_json(staged / "plan.json", plan)
    frame = predictions(staged / "model") if predictions else pl.DataFrame({"id": test_ids}, schema={"id": pl.String})
    frame.write_parquet(staged / "test_predictions.parquet")
    registry.publish(task, version, {"model": {"name": name, "classes": classes}})


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> tuple[Path, list[str]]:
    from meddiag_pipelines.imaging.preprocess import load_cached, update_cache
    from meddiag_pipelines.imaging.readers import read_image_batch
    from meddiag_pipelines.imaging.train import train_image_model
    from scripts.phantoms import write_phantom_batch

    spec = TaskSpec.model_validate(
        {
            "name": "tiny_cnn",
            "modality": "image",
            "label": "label",
            "id": "id",
            "positive": "finding",
            "classes": ["normal", "finding"],
            "image": {"format": "folder", "size": 28},
            "training": {"epochs": 1, "batch_size": 8},
        }
    )
    root = tmp_path_factory.mktemp("export_image") / "data"
    batch = write_phantom_batch(root / "landing" / spec.name / "batch_0001", n=20, seed=5, size=28)
    records = read_image_batch(batch, spec).records.sort("id")
    cache = root / "cache" / spec.name
    update_cache(cache, batch, "batch_0001", records.select("id", "source", "sha256"), spec)
    ids = records["id"].to_list()
    X, y = load_cached(cache, ids), (records["label"] == "finding").cast(pl.Int64).to_numpy()

    def fill(model_dir: Path) -> None:
        train_image_model(X[:12], y[:12], X[12:16], y[12:16], "binary", 1, spec, model_dir, device="cpu", width=8)

    plan = {
        "modality": "image",
        "cache_dir": f"cache/{spec.name}",
        "size": 28,
        "channels": 1,
        "predictor": "cnn",
        "classes": spec.classes,
    }
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
    split = pl.DataFrame(
        {"note_id": ids, "note": notes, "label": labels, SPLIT_COLUMN: ["train"] * 18 + ["val"] * 6 + ["test"] * 6}
    )
    DataRoot(root).write_parquet(f"warehouse/tables/{spec.name}/split/{VERSION}.parquet", split)

    def fill(model_dir: Path) -> None:
        model, _ = text_models._train_neural(
            notes[:18], y[:18], notes[18:24], y[18:24], spec.classes, spec, "cpu", math.inf
        )
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


def test_an_unknown_version_or_a_task_without_its_spec_is_refused_clearly(tmp_path, monkeypatch, capsys):
    root = tmp_path / "data"
    monkeypatch.setenv("MEDDIAG_DATA_DIR", str(root))
    plan = {"numeric": ["age"], "medians": {"age": 50.0}, "indicators": [], "categorical": {}}
    publish(root, "heart", lambda d: d.mkdir(parents=True), plan, ["r1"], "xgboost", ["no", "yes"])

    assert registry_cli(["export", "heart", "no-such-version"]) == 2
    assert "has no published version 'no-such-version'" in capsys.readouterr().err
    assert registry_cli(["export", "heart", VERSION]) == 2
    assert "heart: no spec of this task in the spec folders" in capsys.readouterr().err
    assert not (root / "exports").exists() or not any((root / "exports").rglob("*.onnx"))


# -- tabular: XGBoost and the logistic baseline, binary and multi-class ---------------------------------------------
LOGISTIC = "20261201T000000.000Z-abcdef13"
GRADE_SPEC = {
    **{k: v for k, v in SYNTHETIC_SPEC.items() if k != "positive"},
    "name": "synthetic_grade",
    "label": "grade",
    "classes": ["low", "mid", "high"],
}


def tabular_versions(root: Path, spec: TaskSpec, records: pl.DataFrame) -> None:
    """Both tabular models trained once by the project's trainer on a hand split (its split table written where
    the run's would be); version ``VERSION`` keeps XGBoost, ``LOGISTIC`` the logistic model; test predictions in
    reverse split order."""
    from meddiag_pipelines.flat.features import fit_plan, transform
    from meddiag_pipelines.flat.models import model_inputs, predict_tabular, train_tabular_models
    from meddiag_pipelines.labels import class_list, encode_labels

    split = records.with_columns(pl.Series(SPLIT_COLUMN, ["train"] * 100 + ["val"] * 30 + ["test"] * 30))
    train, val, test = (split.filter(pl.col(SPLIT_COLUMN) == s) for s in ("train", "val", "test"))
    plan, classes = fit_plan(train, spec), class_list(spec, split)
    trained = root.parent / "trained" / spec.name
    (X_train, y_train), (X_val, y_val) = (
        (transform(f, plan).to_numpy(), encode_labels(f[spec.label], classes)) for f in (train, val)
    )
    train_tabular_models(X_train, y_train, X_val, y_val, len(classes), spec.training, trained, plan.model_names)

    def predictions(model_dir: Path) -> pl.DataFrame:
        rows = test.reverse()
        return prediction_frame(
            spec, rows, predict_tabular(model_dir, model_inputs(model_dir, rows, plan.as_dict())), classes
        )

    for version, chosen in ((VERSION, "xgboost"), (LOGISTIC, "logistic")):

        def fill(model_dir: Path, chosen: str = chosen) -> None:
            shutil.copytree(trained, model_dir)
            atomic_write_json(model_dir / "chosen.json", {"chosen": chosen})

        DataRoot(root).write_parquet(f"warehouse/tables/{spec.name}/split/{version}.parquet", split)
        publish(root, spec.name, fill, plan.as_dict(), [], chosen, classes, predictions, version)


@pytest.fixture(scope="module")
def tabular_root(tmp_path_factory) -> tuple[Path, Path]:
    """A data root with an XGBoost version (``VERSION``) and a logistic one (``LOGISTIC``) of a binary task and
    a three-class one, and the spec folder naming both tasks."""
    from meddiag_pipelines_tests.conftest import fast

    base = tmp_path_factory.mktemp("export_tabular")
    root, tasks = base / "data", base / "tasks"
    tasks.mkdir()
    records = synthetic_records(160, seed=3)
    score = pl.col("x1") - pl.col("x2")
    graded = records.with_columns(
        grade=pl.when(score < -0.5).then(pl.lit("low")).when(score < 0.5).then(pl.lit("mid")).otherwise(pl.lit("high"))
    ).drop("outcome")
    for raw, frame in ((SYNTHETIC_SPEC, records), (GRADE_SPEC, graded)):
        (tasks / f"{raw['name']}.yaml").write_text(json.dumps(raw))
        spec = fast(TaskSpec.model_validate(raw))
        tabular_versions(
            root, spec.model_copy(update={"training": spec.training.model_copy(update={"trials": 1})}), frame
        )
    return root, tasks


def test_a_tabular_xgboost_version_exports_with_parity_once(tabular_root, monkeypatch, capsys):
    import onnxruntime

    from meddiag_pipelines.flat.models import model_inputs, predict_tabular, read_meta

    root, tasks = tabular_root
    monkeypatch.setenv("MEDDIAG_DATA_DIR", str(root))
    monkeypatch.setenv("MEDDIAG_TASKS_DIR", str(tasks))
    assert registry_cli(["export", "synthetic_risk", VERSION]) == 0
    out = capsys.readouterr().out
    assert "parity on 30 test rows" in out and "max |onnxruntime - xgboost| of the probabilities" in out
    folder = export_dir(root, "synthetic_risk", VERSION)
    parity = json.loads((folder / "parity.json").read_text())
    assert (
        parity["max_abs_diff"] <= 1e-4 and parity["output_shape"] == ["batch"] and parity["output"] == "probabilities"
    )
    assert parity["split_probe_rows"] > 0 and parity["max_abs_diff_at_split_thresholds"] <= 1e-4
    assert parity["test_predictions_max_abs_diff"] <= 1e-4 and "recalibration" in parity["then"]

    # new records through the plan features.json carries (a missing value, a subgroup never seen): what scoring gives
    model_dir = root / "models" / "synthetic_risk" / VERSION / "model"
    features = json.loads((folder / "features.json").read_text())
    assert [c["name"] for c in features["columns"]] == read_meta(model_dir)["feature_names"]
    rows = synthetic_records(6, seed=9, start=500).with_columns(
        pl.lit(None, pl.Float64).alias("x3"), pl.Series("group", ["A", "B", "C"] * 2)
    )
    X = model_inputs(model_dir, rows, features["plan"]).astype(np.float32)
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    (proba,) = session.run(["probabilities"], {"features": X})
    np.testing.assert_allclose(proba, predict_tabular(model_dir, X), atol=1e-4)

    before = (folder / "model.onnx").stat().st_mtime_ns
    assert registry_cli(["export", "synthetic_risk", VERSION]) == 0
    assert "already exported" in capsys.readouterr().out and (folder / "model.onnx").stat().st_mtime_ns == before


@pytest.mark.parametrize(
    ("task", "version", "shape", "reference"),
    [
        ("synthetic_risk", LOGISTIC, ["batch"], "numpy"),
        ("synthetic_grade", VERSION, ["batch", 3], "xgboost"),
        ("synthetic_grade", LOGISTIC, ["batch", 3], "numpy"),
    ],
)
def test_logistic_and_multiclass_tabular_versions_export_with_parity(
    tabular_root, monkeypatch, task, version, shape, reference
):
    import onnxruntime

    from meddiag_pipelines.registry.export import export_version

    root, tasks = tabular_root
    monkeypatch.setenv("MEDDIAG_TASKS_DIR", str(tasks))
    record = export_version(root, task, version)
    assert record["max_abs_diff"] <= 1e-4 and record["output_shape"] == shape and record["reference"] == reference
    assert record["n_test"] == 30 and record["test_predictions_max_abs_diff"] <= 1e-4
    session = onnxruntime.InferenceSession(
        str(export_dir(root, task, version) / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (proba,) = session.run(["probabilities"], {"features": np.zeros((2, session.get_inputs()[0].shape[1]), np.float32)})
    if len(shape) == 2:  # per-class probabilities
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)


def test_a_tabular_export_that_moves_a_split_or_misses_the_test_rows_is_refused(tabular_root, tmp_path, monkeypatch):
    import onnxmltools

    from meddiag_pipelines.registry import export

    root = tmp_path / "data"
    shutil.copytree(tabular_root[0] / "models", root / "models")
    shutil.copytree(tabular_root[0] / "warehouse", root / "warehouse")
    monkeypatch.setenv("MEDDIAG_TASKS_DIR", str(tabular_root[1]))
    convert = onnxmltools.convert_xgboost

    def nudged(*args, **kwargs):  # every threshold one float32 step up: a value on it now goes left
        model = convert(*args, **kwargs)
        for attribute in model.graph.node[0].attribute:
            if attribute.name == "nodes_values":
                attribute.floats[:] = np.nextafter(np.float32(attribute.floats), np.float32(np.inf)).tolist()
        return model

    with monkeypatch.context() as patched:
        patched.setattr(onnxmltools, "convert_xgboost", nudged)
        with pytest.raises(export.ExportRefused, match="on rows set on the trees' split thresholds"):
            export.export_version(root, "synthetic_risk", VERSION)
    assert not (root / "exports").exists() or not any((root / "exports").rglob("*.onnx"))

    # test predictions the rows found do not reproduce: not the rows the version was evaluated on
    recorded = root / "models" / "synthetic_grade" / LOGISTIC / "test_predictions.parquet"
    frame = pl.read_parquet(recorded)
    frame.with_columns(pl.col("p_low") + 0.01).write_parquet(recorded)
    with pytest.raises(export.ExportRefused, match="not the ones it was evaluated on"):
        export.export_version(root, "synthetic_grade", LOGISTIC)
