"""Text models on a small ICD-10-CM subset: choice by validation macro-F1, safe reload, explanations."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from meddiag_pipelines.specs import TaskSpec
from meddiag_pipelines.text.models import (
    class_probabilities,
    explain_texts,
    predict_text,
    top_terms_per_class,
    train_text_models,
)
from meddiag_pipelines.text.shared import fit_temperature, macro_f1

BATCH = Path(__file__).resolve().parents[1] / "data" / "landing" / "icd10_chapters" / "batch_0001" / "records.csv"
CHAPTERS = ["circulatory", "eye", "infectious", "neoplasms", "pregnancy", "respiratory"]
SPEC = TaskSpec(
    name="icd_small",
    modality="text",
    label="chapter",
    text="description",
    id="code",
    patient_id="category",
    training={"epochs": 8, "batch_size": 64, "learning_rate": 0.005, "patience": 3, "seed": 3},
)


def _subset():
    df = pl.read_csv(BATCH, infer_schema=False).filter(pl.col("chapter").is_in(CHAPTERS))
    df = df.sample(n=1200, seed=1).sort("code")
    # split by category (the leakage guard of the real task): every 4th category to validation
    cats = sorted(df["category"].unique().to_list())
    val_cats = set(cats[::4])
    train, val = df.filter(~pl.col("category").is_in(val_cats)), df.filter(pl.col("category").is_in(val_cats))
    classes = sorted(CHAPTERS)
    enc = {c: i for i, c in enumerate(classes)}
    return (
        train["description"].to_list(),
        np.array([enc[c] for c in train["chapter"]]),
        val["description"].to_list(),
        np.array([enc[c] for c in val["chapter"]]),
        classes,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("textmodels")
    xt, yt, xv, yv, classes = _subset()
    res = train_text_models(xt, yt, xv, yv, classes, SPEC, out, device="cpu")
    return res, out, xt, yt, xv, yv, classes


@pytest.mark.slow
def test_choice_and_saved_files(trained):
    res, out, *_ = trained
    assert res.chosen in {"baseline", "neural"} and res.device == "cpu"
    assert res.val_scores[res.chosen] >= res.val_scores["baseline"]
    assert res.val_scores["baseline"] > 0.6 and res.val_scores["neural"] > 0.5
    assert res.model_dir == out / res.chosen and res.baseline_dir == out / "baseline"
    chosen = json.loads((out / "chosen.json").read_text())
    assert chosen["chosen"] == res.chosen
    assert {p.name for p in (out / "baseline").iterdir()} == {"model.json", "vocab.json", "weights.npz"}
    assert {p.name for p in (out / "neural").iterdir()} == {"model.json", "model.pt", "terms.json"}
    # safe formats: the npz holds only plain arrays, no pickled objects
    with np.load(out / "baseline" / "weights.npz", allow_pickle=False) as w:
        assert sorted(w.files) == ["coef", "idf_char", "idf_word", "intercept"]
        assert all(w[k].dtype != object for k in w.files)
    with zipfile.ZipFile(out / "baseline" / "weights.npz") as z:
        assert sorted(z.namelist()) == ["coef.npy", "idf_char.npy", "idf_word.npy", "intercept.npy"]


@pytest.mark.slow
def test_reload_equals_in_memory_and_probabilities(trained):
    res, out, xt, yt, xv, yv, classes = trained
    for name in ("baseline", "neural"):
        p = predict_text(out / name, xv)
        assert p.shape == (len(xv), len(classes))
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-9)
        f1 = macro_f1(yv, p, len(classes))
        assert f1 == pytest.approx(res.val_scores[name], abs=1e-12)  # reloaded = in-memory on validation
    np.testing.assert_array_equal(predict_text(out, xv), predict_text(res.model_dir, xv))


@pytest.mark.slow
def test_explanations_name_words_of_the_text(trained):
    res, out, xt, yt, xv, yv, classes = trained
    texts = xv[:8]
    for model_dir in (out / "baseline", out / "neural"):
        expl = explain_texts(model_dir, texts, top_k=4)
        assert len(expl) == len(texts)
        assert all(expl_i for expl_i in expl)
        for text, terms in zip(texts, expl, strict=True):
            assert len(terms) <= 4
            words = {w.lower() for w in re.findall(r"\w\w+", text)}
            assert all(term.lower() in words and weight > 0 for term, weight in terms), (text, terms)
        tops = top_terms_per_class(model_dir, k=10)
        assert set(tops) == set(classes)
        assert all(0 < len(v) <= 10 for v in tops.values())
    assert any(t == "pregnancy" or "pregnan" in t for t, _ in top_terms_per_class(out / "baseline", 15)["pregnancy"])


@pytest.mark.slow
def test_neural_is_deterministic_on_cpu(trained, tmp_path):
    from meddiag_pipelines.text.models import _train_neural

    _, _, xt, yt, xv, yv, classes = trained
    spec = SPEC.model_copy(update={"training": SPEC.training.model_copy(update={"epochs": 2})})
    xt, yt = xt[:400], yt[:400]
    a, fa = _train_neural(xt, yt, xv, yv, classes, spec, "cpu", deadline=float("inf"))
    b, fb = _train_neural(xt, yt, xv, yv, classes, spec, "cpu", deadline=float("inf"))
    assert fa == fb
    np.testing.assert_array_equal(a.predict(xv), b.predict(xv))


@pytest.mark.slow
def test_binary_task_shapes(tmp_path):
    rng = np.random.default_rng(0)
    pos = [
        "crushing chest pain radiating to the left arm",
        "troponin rise with st elevation",
        "acute mi with chest pain",
    ]
    neg = ["itchy rash on the forearm", "seasonal allergic rhinitis with sneezing", "mild eczema flare"]
    texts, ys = [], []
    for i in range(160):
        k = int(rng.integers(2))
        texts.append(f"{(pos if k else neg)[i % 3]} case {i}")
        ys.append(k)
    y = np.array(ys)
    spec = SPEC.model_copy(update={"training": SPEC.training.model_copy(update={"epochs": 3})})
    res = train_text_models(texts[:120], y[:120], texts[120:], y[120:], ["no", "yes"], spec, tmp_path, device="cpu")
    p = predict_text(tmp_path, texts[120:])
    assert p.shape == (40,) and ((p > 0.5) == y[120:]).mean() > 0.9
    np.testing.assert_array_equal(class_probabilities(tmp_path, texts[120:], binary=True), p)
    both = class_probabilities(tmp_path, texts[120:], binary=False)  # two classes, no positive: multi-class
    assert both.shape == (40, 2) and np.allclose(both[:, 1], p) and np.allclose(both.sum(axis=1), 1)
    tops = top_terms_per_class(tmp_path / "baseline", k=5)
    assert set(tops) == {"no", "yes"} and tops["yes"] and tops["no"]
    expl = explain_texts(tmp_path, texts[120:125], top_k=3)
    assert len(expl) == 5 and all(expl)
    assert res.val_scores["baseline"] > 0.9


def test_temperature_recovers_a_known_scale():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(4000, 3)) * 2
    p = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in p])
    assert fit_temperature(true_logits * 3.0, y) == pytest.approx(3.0, rel=0.1)


@pytest.mark.slow
def test_the_report_lists_the_top_terms_of_every_class(trained):
    from meddiag_pipelines.text.report import top_terms_html

    _, out, *_, classes = trained
    table = top_terms_html(out, k=3)
    assert table.count("<tr><td>") == len(classes) and all(f"<td>{c}</td>" in table for c in classes)
    assert "http" not in table and "<script" not in table


def test_missing_training_texts_are_counted():
    from meddiag_pipelines.text.report import missing_texts

    rows = pl.DataFrame({"note": ["chest pain", "  ", None, "rash"]})
    assert missing_texts(rows, "note") == [
        {"feature": "note", "n_missing": 2, "rate": 0.5, "handling": "empty text (blocked by validation)"}
    ]
    assert missing_texts(rows.head(1), "note")[0]["handling"] == "none needed"
