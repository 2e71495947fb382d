"""The pretrained-encoder text model (``text_model``), offline: a tiny random-initialised BERT written to tmp_path
is loaded by path, fine-tuned a few steps, scored, saved and reloaded; no test touches the network."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from meddiag_pipelines.specs import SpecError, TaskSpec, load_spec
from meddiag_pipelines.text.encoder import encoder_source, train_encoder
from meddiag_pipelines.text.models import (
    class_probabilities,
    explain_texts,
    load_text_model,
    top_terms_per_class,
    train_text_models,
)

CLASSES = ["cardiac", "lung", "skin"]
KEYWORDS = {
    "cardiac": ["heart", "angina", "infarction", "arrhythmia"],
    "lung": ["asthma", "pneumonia", "cough", "bronchitis"],
    "skin": ["rash", "eczema", "psoriasis", "dermatitis"],
}
SHARED = ["acute", "chronic", "mild", "severe", "with", "without", "complication", "left", "right", "unspecified"]


def _texts(n_per_class: int, seed: int) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for c, name in enumerate(CLASSES):
        for _ in range(n_per_class):
            words = [*rng.choice(SHARED, 1), *rng.choice(KEYWORDS[name], 2)]
            texts.append(" ".join(rng.permutation(words)))
            labels.append(c)
    return texts, np.array(labels)


def _bert_folder(folder: Path, head: bool = False) -> Path:
    """A tiny random BERT saved by transformers (a bare BertModel, as a sentence-transformers folder is)."""
    from meddiag_pipelines.text.encoder import _transformers

    tf = _transformers()
    folder.mkdir(parents=True)
    words = sorted({w for ws in KEYWORDS.values() for w in ws} | set(SHARED))
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = tf.BertTokenizerFast(vocab=str(folder / "vocab.txt"))  # transformers 5: vocab, not vocab_file
    config = tf.BertConfig(
        vocab_size=len(words) + 5,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    net = (tf.BertForSequenceClassification if head else tf.BertModel)(config)
    net.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _spec(folder: Path, **encoder) -> TaskSpec:
    return TaskSpec.model_validate(
        {
            "name": "tiny_notes",
            "modality": "text",
            "label": "y",
            "text": "note",
            "text_model": str(folder),
            "training": {"epochs": 2, "batch_size": 16, "learning_rate": 0.01, "patience": 2, "seed": 1},
            "text_encoder": {"max_length": 16, "epochs": 4, "batch_size": 4, "learning_rate": 3e-3, **encoder},
        }
    )


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the network was touched")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def data():
    return (*_texts(12, seed=0), *_texts(6, seed=1))


@pytest.mark.slow
def test_tiny_bert_is_fine_tuned_tuned_saved_and_reloaded_identically(tmp_path, data, offline):
    spec = _spec(_bert_folder(tmp_path / "tiny_bert"), trials=2)
    xt, yt, xv, yv = data
    model, f1 = train_encoder(xt, yt, xv, yv, CLASSES, spec, "cpu", deadline=float("inf"))
    assert f1 > 0.5  # the keywords are learnt in a few steps (chance: 0.33)
    tuning = model.tuning
    assert set(tuning) == {"best", "n_trials", "n_pruned", "objective"} and tuning["n_trials"] == 2
    assert set(tuning["best"]) == {"learning_rate", "weight_decay", "warmup"}
    model.save(tmp_path / "encoder")
    files = {p.name for p in (tmp_path / "encoder").iterdir()}
    assert {"config.json", "model.safetensors", "model.json", "terms.json", "tokenizer.json"} <= files
    assert not {f for f in files if f.endswith((".bin", ".pt", ".pkl"))}
    config = json.loads((tmp_path / "encoder" / "model.json").read_text())
    assert config["kind"] == "hf_encoder" and config["classes"] == CLASSES and config["max_length"] == 16
    assert config["pooling"] == "mean" and (tmp_path / "encoder" / "head.safetensors").is_file()
    assert config["tuning"] == tuning
    reloaded = load_text_model(tmp_path / "encoder")
    np.testing.assert_array_equal(reloaded.logits(xv), model.logits(xv))
    assert class_probabilities(tmp_path / "encoder", xv, binary=False).shape == (len(xv), 3)


def test_the_head_reads_the_mean_of_the_unpadded_token_states(tmp_path, data, offline):
    """Mean pooling (the default): the logits are the head applied to the mean of the text's own token states, so
    a text scores the same alone as padded beside a longer one; ``cls`` reads the first token's state."""
    from meddiag_pipelines.text.encoder import _Encoder, _pretrained

    folder = _bert_folder(tmp_path / "tiny_bert")
    texts = ["heart", "severe chronic asthma with cough without complication"]
    for pooling in ("mean", "cls"):
        tokenizer, net = _pretrained(str(folder), 3, _spec(folder, pooling=pooling).text_encoder)
        model = _Encoder(net.eval(), tokenizer, CLASSES, 1.0, 16)
        ids, mask = model._inputs(texts[:1])
        with torch.no_grad():
            states = net.encoder(input_ids=ids, attention_mask=mask).last_hidden_state[0]
            pooled = states.mean(dim=0) if pooling == "mean" else states[0]
            expected = net.classifier(pooled).numpy()
        np.testing.assert_allclose(model.full_logits(texts[:1])[0], expected, atol=1e-6)
        np.testing.assert_allclose(model.full_logits(texts)[0], expected, atol=1e-5)  # padded to the longer text


def test_the_new_head_learns_at_its_own_rate(tmp_path):
    from meddiag_pipelines.text.encoder import _param_groups, _pretrained

    folder = _bert_folder(tmp_path / "tiny_bert")
    for lora in (False, True):
        _, net = _pretrained(str(folder), 3, _spec(folder, lora=lora).text_encoder)
        head, body = _param_groups(net, head_lr=2e-3, encoder_lr=8e-5)
        assert head["lr"] == 2e-3 and body["lr"] == 8e-5
        assert {id(p) for p in head["params"]} == {id(p) for p in net.classifier.parameters()}
        trainable = {id(p) for p in net.parameters() if p.requires_grad}
        assert {id(p) for p in head["params"] + body["params"]} == trainable and body["params"]


def test_lora_trains_adapters_only_and_saves_a_standalone_folder(tmp_path, data, offline):
    spec = _spec(_bert_folder(tmp_path / "tiny_bert"), lora=True, lora_rank=4, learning_rate=3e-2, epochs=2)
    xt, yt, xv, yv = data
    model, _ = train_encoder(xt, yt, xv, yv, CLASSES, spec, "cpu", deadline=float("inf"))
    trainable = {n: p for n, p in model.net.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "classifier" in n for n in trainable)
    assert any("query" in n for n in trainable) and any("value" in n for n in trainable)
    lora_b = [p for n, p in trainable.items() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # zero at init: trained
    before = model.logits(xv)
    model.save(tmp_path / "encoder")
    assert not (tmp_path / "encoder" / "adapter_config.json").exists()  # merged: no base folder needed to load
    np.testing.assert_allclose(load_text_model(tmp_path / "encoder").logits(xv), before, atol=1e-5)


def test_the_encoder_competes_and_serves_the_lifecycle(tmp_path, data, offline):
    """A folder that already is a classifier (of another class count) gets the task's head; the encoder sits
    beside the two other models in chosen.json and explains, scores and lists terms like them."""
    spec = _spec(_bert_folder(tmp_path / "tiny_bert", head=True), epochs=2)
    xt, yt, xv, yv = data
    result = train_text_models(xt, yt, xv, yv, CLASSES, spec, tmp_path / "out", device="cpu")
    chosen = json.loads((tmp_path / "out" / "chosen.json").read_text())
    assert set(chosen["val_macro_f1"]) == {"baseline", "neural", "encoder"}
    assert chosen["tuning"]["encoder"]["n_trials"] == 1 and "encoder" in chosen["temperature"]
    assert result.val_scores[result.chosen] == max(result.val_scores.values())
    encoder = tmp_path / "out" / "encoder"
    words = explain_texts(encoder, xv[:2])
    assert (
        len(words) == 2 and all(words) and all(w.lower() in xv[i].lower() for i, ws in enumerate(words) for w, _ in ws)
    )
    terms = top_terms_per_class(encoder, k=3)
    assert set(terms) == set(CLASSES)


def test_binary_encoder_gives_one_probability_per_text(tmp_path, data, offline):
    xt, yt, xv, yv = data
    keep_t, keep_v = yt < 2, yv < 2
    spec = _spec(_bert_folder(tmp_path / "tiny_bert"), epochs=1)
    model, _ = train_encoder(
        [t for t, k in zip(xt, keep_t, strict=False) if k],
        yt[keep_t],
        [t for t, k in zip(xv, keep_v, strict=False) if k],
        yv[keep_v],
        CLASSES[:2],
        spec,
        "cpu",
        deadline=float("inf"),
    )
    p = model.predict(xv[:4])
    assert p.shape == (4,) and ((p > 0) & (p < 1)).all()
    module = model.module()
    ids, mask = model._inputs(xv[:4])
    assert tuple(module(ids, mask).shape) == (4, 2)


def test_text_model_paths(tmp_path):
    model = _bert_folder(tmp_path / "models" / "tiny")
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text("name: tiny\nmodality: text\nlabel: y\ntext: note\ntext_model: models/tiny\n")
    assert load_spec(spec_file).text_model == str(model.resolve())  # relative to the spec file
    assert encoder_source(str(model)) == (str(model), True)  # a folder: local files only
    assert encoder_source("hub:org/some-bert") == ("org/some-bert", False)
    with pytest.raises(ValueError, match="not a Hugging Face model folder"):
        encoder_source(str(tmp_path / "missing"))
    spec_file.write_text("name: tiny\nmodality: text\nlabel: y\ntext: note\ntext_model: 'hub:'\n")
    with pytest.raises(SpecError, match="text_model"):
        load_spec(spec_file)


@pytest.mark.slow
def test_a_text_task_naming_an_encoder_folder_runs_through_the_pipeline(tmp_path, layout, offline):
    import dagster as dg

    from meddiag_pipelines_tests.conftest import land
    from meddiag_pipelines_tests.test_text_pipeline import (
        ALL_CHECKS_PASSED,
        check_outcomes,
        icd_rows,
        materialize,
        small_spec,
    )

    rows = icd_rows(60)
    folder = _bert_folder(tmp_path / "tiny_bert")
    spec = small_spec(
        text_model=str(folder), text_encoder={"max_length": 24, "epochs": 1, "batch_size": 32, "learning_rate": 1e-2}
    )
    land(layout, spec.name, "batch_0001", rows)
    with dg.instance_for_test() as instance:
        result = materialize(spec, layout, instance)
        assert result.success and check_outcomes(result) == ALL_CHECKS_PASSED
        event = instance.get_latest_materialization_event(dg.AssetKey([spec.name, "candidate_model"]))
        params = event.asset_materialization.metadata["params"].value
    assert params["text_model"] == "tiny_bert" and params["tuning"]["n_trials"] == 1
    assert "val_macro_f1_encoder" in params
    registry = layout.local / "models" / spec.name
    version = json.loads((registry / "champion.json").read_text())["version"]
    assert json.loads((registry / version / "model" / "encoder" / "model.json").read_text())["kind"] == "hf_encoder"
    assert (layout.reports(spec.name) / "latest" / "report.html").is_file()


@pytest.mark.slow
def test_an_encoder_exports_to_onnx_matching_torch(tmp_path, data, offline):
    """The ONNX export of an encoder (tokenizer outside, dynamic batch and sequence axes) gives torch's logits."""
    from meddiag_pipelines.registry.export import _export_and_compare
    from meddiag_pipelines.text.export import encoder_exportable

    xt, yt, xv, yv = data
    model, _ = train_encoder(
        xt, yt, xv, yv, CLASSES, _spec(_bert_folder(tmp_path / "tiny_bert"), epochs=1), "cpu", deadline=float("inf")
    )
    parity = _export_and_compare(encoder_exportable(model, [*xv, "heart"]), tmp_path / "model.onnx")
    assert parity["max_abs_diff"] <= 1e-4 and parity["output_shape"] == ["batch", len(CLASSES)]
