"""Embedding drift (issue 28): the model's own embeddings of a sample of its training rows, frozen with each
version (``embeddings.npy``, never recomputed), and per scored batch a kernel MMD permutation test against them;
through the task graph for an image task and a text task (a shifted batch drifts, an in-distribution one does
not), and a tabular task's monitoring.json keeps its keys. SYNTHETIC data, or the bundled ICD-10-CM texts."""

from __future__ import annotations

import io
import json
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
from PIL import Image

from meddiag_pipelines.monitoring.drift import EMBEDDING_ALPHA, MMD_METHOD, SchemaError, batch_drift, embedding_drift
from meddiag_pipelines.monitoring.record import monitoring_entry, render_monitoring_html
from meddiag_pipelines.monitoring.reference import (
    EMBEDDING_ROWS,
    EMBEDDINGS_FILE,
    REFERENCE_DIR,
    ReferenceError,
    build_reference,
    freeze_reference,
    load_reference,
)
from meddiag_pipelines.specs import BUNDLED_TASKS_DIR, load_spec
from meddiag_pipelines_tests.conftest import land
from meddiag_pipelines_tests.test_imaging_pipeline import run_job, tiny
from meddiag_pipelines_tests.test_monitoring import TYPES, patients, reference, scored
from meddiag_pipelines_tests.test_text_pipeline import icd_rows, materialize, small_spec
from scripts.phantoms import write_phantom_batch


def normal(n: int, seed: int, shift: float = 0.0, dim: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).normal(shift, 1.0, size=(n, dim)).astype(np.float32)


# -- the test ---------------------------------------------------------------------------------------------------
def test_the_mmd_test_flags_a_shift_and_passes_the_same_distribution():
    ref = normal(1_000, 1)
    same, moved = embedding_drift(ref, normal(100, 2)), embedding_drift(ref, normal(100, 3, shift=0.5))
    assert same["method"] == moved["method"] == MMD_METHOD and same["threshold"] == EMBEDDING_ALPHA
    assert not same["drifted"] and same["p_value"] >= EMBEDDING_ALPHA
    assert moved["drifted"] and moved["p_value"] < EMBEDDING_ALPHA and moved["statistic"] > same["statistic"]
    assert embedding_drift(ref, normal(100, 3, shift=0.5)) == moved  # seeded: the same answer every time


def test_the_mmd_test_holds_its_level_on_same_distribution_batches():
    ref = normal(500, 1)
    alarms = [embedding_drift(ref, normal(60, 100 + i), seed=i)["drifted"] for i in range(40)]
    assert sum(alarms) <= 6  # 5% of 40 is 2; 6 or more has probability < 0.5% under a level-5% test


def test_the_mmd_test_samples_a_large_batch_and_refuses_other_dimensions():
    ref = normal(3_000, 1)
    result = embedding_drift(ref, normal(5_000, 2))
    assert result["n_reference"] == result["n_batch"] == EMBEDDING_ROWS
    with pytest.raises(SchemaError, match=r"shape \(10, 8\); the reference's have 16 dimensions"):
        embedding_drift(ref, normal(10, 2, dim=8))
    assert embedding_drift(ref, normal(1, 2))["p_value"] is None  # one row: nothing to test, no alarm


# -- the reference and the record -------------------------------------------------------------------------------
def test_embeddings_are_frozen_as_npy_without_pickle_and_checked_against_their_digest(tmp_path):
    train = patients(1_500, 1)
    ref = build_reference("t", "v1", "binary", ["0", "1"], train, TYPES, embeddings=normal(1_500, 4))
    folder = freeze_reference(tmp_path, ref)
    stored = np.load(folder / EMBEDDINGS_FILE, allow_pickle=False)
    assert stored.dtype == np.float32 and stored.shape == (EMBEDDING_ROWS, 16)
    assert np.array_equal(load_reference(tmp_path).embeddings, stored)
    with pytest.raises(FileExistsError, match="frozen; it is never recomputed"):
        freeze_reference(tmp_path, ref)
    (folder / EMBEDDINGS_FILE).write_bytes((folder / EMBEDDINGS_FILE).read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ReferenceError, match=r"embeddings\.npy: does not match its digest"):
        load_reference(tmp_path)


def test_embedding_drift_is_recorded_named_alerted_and_shown(tmp_path):
    ref = load_reference(freeze_reference(tmp_path, _with_embeddings()).parent)
    drift = batch_drift(ref, patients(200, 5), scored(200, 6)[0], normal(200, 7, shift=1.0))
    entry = monitoring_entry("b2", "v1", drift, None)
    assert set(entry["drift"]["embeddings"]) >= {"method", "statistic", "p_value", "threshold", "drifted"}
    assert entry["drift"]["embeddings"]["drifted"] and not entry["drift"]["dataset_drift"]
    assert [a["kind"] for a in entry["alerts"]] == ["embedding_drift"] and entry["alerts"][0]["severity"] == "WARN"
    html = render_monitoring_html("t", [entry])
    assert MMD_METHOD in html and "<th>embedding drift</th>" in html


def _with_embeddings():
    train = patients(800, 1)
    val, y = scored(400, 2)
    val = val.with_columns(label=pl.Series([("0", "1")[v] for v in y]))
    return build_reference("t", "v1", "binary", ["0", "1"], train, TYPES, val, normal(800, 3))


def test_a_tabular_entry_keeps_its_contract_keys(tmp_path):
    ref = reference(tmp_path)
    entry = monitoring_entry("b1", "v1", batch_drift(ref, patients(200, 5), scored(200, 6)[0]), None)
    assert set(entry) == {"batch", "model_version", "at", "n_rows", "drift", "estimated", "realised", "alerts"}
    assert {"dataset_drift", "share", "columns", "prediction"} <= set(entry["drift"])
    assert entry["drift"]["embeddings"] is None and ref.embeddings is None
    assert not (tmp_path / REFERENCE_DIR / EMBEDDINGS_FILE).exists()


# -- through the task graph -------------------------------------------------------------------------------------
def champion_reference_dir(root: Path, task: str) -> Path:
    version = json.loads((root / "models" / task / "champion.json").read_text())["version"]
    return root / "models" / task / version / REFERENCE_DIR


def recorded(root: Path, task: str) -> dict[str, dict]:
    return {e["batch"]: e for e in json.loads((root / "reports" / task / "monitoring.json").read_text())}


def drift_check(result) -> dg.AssetCheckEvaluation:
    return next(
        e
        for e in result.get_asset_check_evaluations()
        if e.asset_key.path[-1] == "predictions" and e.check_name == "batch_drift"
    )


def unlabelled_phantoms(folder: Path, n: int, seed: int, invert: bool) -> None:
    """A batch of phantoms to score (no labels); ``invert``: every image negated (another scanner's look)."""
    write_phantom_batch(folder, n=n, seed=seed, size=28)
    if invert:
        for png in (folder / "images").glob("*.png"):
            buffer = io.BytesIO()
            Image.fromarray(255 - np.asarray(Image.open(png)), mode="L").save(buffer, format="PNG")
            png.write_bytes(buffer.getvalue())
    labels = pl.read_csv(folder / "labels.csv").with_columns(pl.lit(None, pl.String).alias("label"))
    labels.write_csv(folder / "labels.csv")
    (folder / "_READY").touch()


@pytest.mark.slow
def test_an_image_task_drifts_on_inverted_images_not_on_more_of_the_same(tmp_path):
    spec = tiny(load_spec(BUNDLED_TASKS_DIR / "synthetic_chest_phantoms.yaml"))
    task, root = spec.name, tmp_path / "data"
    (write_phantom_batch(root / "landing" / task / "batch_0001", n=180, seed=7, size=28) / "_READY").touch()
    unlabelled_phantoms(root / "landing" / task / "batch_0002", 60, seed=8, invert=False)
    with dg.instance_for_test() as instance:
        assert run_job(spec, root, instance).success
        folder = champion_reference_dir(root, task)
        frozen = (folder / EMBEDDINGS_FILE).read_bytes()
        meta = json.loads((folder / "reference.json").read_text())["embeddings"]
        assert meta["sample_rows"] == meta["n"] >= 10 and meta["dim"] >= 8  # the CNN's features of validation rows
        same = recorded(root, task)["batch_0002"]["drift"]["embeddings"]
        assert same["method"] == MMD_METHOD and not same["drifted"], same

        unlabelled_phantoms(root / "landing" / task / "batch_0003", 60, seed=9, invert=True)
        result = run_job(spec, root, instance)
    moved = recorded(root, task)["batch_0003"]
    assert moved["drift"]["embeddings"]["drifted"] and "embedding_drift" in [a["kind"] for a in moved["alerts"]]
    check = drift_check(result)
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN and "batch_0003" in check.description
    assert (folder / EMBEDDINGS_FILE).read_bytes() == frozen  # never recomputed


@pytest.mark.slow
def test_a_text_task_drifts_on_texts_of_another_domain_not_on_held_back_notes(layout):
    spec = small_spec(patient_id=None)  # rows split one by one: the held-back notes are exchangeable with training's
    task = spec.name
    rows = icd_rows(110)
    held_back = rows.filter(pl.int_range(pl.len()) % 11 == 0)
    land_rows = rows.join(held_back, on="code", how="anti")
    land(layout, task, "batch_0001", land_rows)
    land(layout, task, "batch_0002", held_back.with_columns(pl.lit(None, pl.String).alias("chapter")))
    with dg.instance_for_test() as instance:
        assert materialize(spec, layout, instance).success
        folder = champion_reference_dir(layout.local, task)
        frozen = (folder / EMBEDDINGS_FILE).read_bytes()
        same = recorded(layout.local, task)["batch_0002"]["drift"]["embeddings"]
        assert same["method"] == MMD_METHOD and not same["drifted"], same

        land(layout, task, "batch_0003", other_domain(held_back.height))
        result = materialize(spec, layout, instance)
    moved = recorded(layout.local, task)["batch_0003"]["drift"]["embeddings"]
    assert moved["drifted"] and moved["p_value"] < same["p_value"], moved
    assert not drift_check(result).passed
    assert (folder / EMBEDDINGS_FILE).read_bytes() == frozen  # never recomputed


def other_domain(n: int) -> pl.DataFrame:
    """SYNTHETIC texts from another domain (shipping invoices), to score."""
    rng = np.random.default_rng(5)
    goods = ["pallets of timber", "crates of oranges", "barrels of oil", "containers of steel", "bales of cotton"]
    ports = ["Rotterdam", "Antwerp", "Hamburg", "Valencia", "Gdansk"]
    return pl.DataFrame(
        {
            "code": [f"X{i:03d}" for i in range(n)],
            "category": [f"X{i % 7:02d}" for i in range(n)],
            "chapter": pl.Series([None] * n, dtype=pl.String),
            "description": [
                f"Invoice for {rng.integers(2, 90)} {rng.choice(goods)} shipped from {rng.choice(ports)} "
                f"to {rng.choice(ports)}, freight prepaid"
                for _ in range(n)
            ],
        }
    )


# -- what each model embeds -------------------------------------------------------------------------------------
def test_an_image_model_embeds_what_its_classifier_reads(tmp_path):
    import torch

    from meddiag_pipelines.imaging.scoring import embed_images, pooled_pixels
    from meddiag_pipelines.imaging.train import load_image_model
    from meddiag_pipelines_tests.test_imaging_model import tiny_model

    res, X = tiny_model(tmp_path)
    plan = {"channels": 1, "size": 28, "predictor": "cnn"}
    emb = embed_images(res.model_dir, plan, ["0", "1", "2"], lambda ids: X[[int(i) for i in ids]], "cpu")
    model, _ = load_image_model(res.model_dir, "cpu")
    with torch.no_grad():
        logits = model.head(model.features(torch.from_numpy(X[:3])))
        np.testing.assert_allclose(model.fc(torch.from_numpy(emb)).numpy(), logits.numpy(), atol=1e-5)
    assert emb.dtype == np.float32 and emb.shape == (3, model.fc.in_features)
    pixels = {**plan, "predictor": "pixel_logistic", "baseline_side": 14}
    pooled = embed_images(tmp_path, pixels, ["0", "1"], lambda ids: X[[int(i) for i in ids]], "cpu")
    np.testing.assert_allclose(pooled, pooled_pixels(X[:2], 14))


@pytest.mark.slow
def test_each_text_model_embeds_what_its_output_layer_reads(tmp_path):
    """The encoder's pooled states and the fastText mean embedding give the logits through their heads (texts of
    different lengths, scored in length order, come back in the given order); the baseline's projection is fixed."""
    import torch

    from meddiag_pipelines.text.models import EMBED_DIM, embed_texts, load_text_model, train_text_models
    from meddiag_pipelines_tests.test_text_encoder import CLASSES, _bert_folder, _spec, _texts

    xt, yt = _texts(12, seed=0)
    xv, yv = _texts(6, seed=1)
    spec = _spec(_bert_folder(tmp_path / "tiny_bert"), epochs=1)
    train_text_models(xt, yt, xv, yv, CLASSES, spec, tmp_path / "out", device="cpu")
    texts = ["severe heart angina with infarction left", "rash", "mild cough asthma"]
    encoder = load_text_model(tmp_path / "out" / "encoder")
    emb = embed_texts(tmp_path / "out" / "encoder", texts)
    with torch.no_grad():
        np.testing.assert_allclose(
            encoder.net.classifier(torch.from_numpy(emb)).numpy(), encoder.full_logits(texts), atol=1e-4
        )
    neural = load_text_model(tmp_path / "out" / "neural")
    emb = embed_texts(tmp_path / "out" / "neural", texts)
    with torch.no_grad():
        np.testing.assert_allclose(neural.net.out(torch.from_numpy(emb)).numpy(), neural.logits(texts), atol=1e-4)
    baseline = embed_texts(tmp_path / "out" / "baseline", texts)
    assert baseline.shape == (3, EMBED_DIM) and np.array_equal(
        baseline, embed_texts(tmp_path / "out" / "baseline", texts)
    )
    assert not np.allclose(baseline[0], baseline[1])
