"""ONNX export of a text task's torch model (``meddiag registry export``, :mod:`meddiag_pipelines.registry.export`).
The n-gram model takes the (indices, offsets) of an ``EmbeddingBag``, the hashing staying in Python before the
session (CRC32 of strings has no ONNX operator); an encoder takes (input_ids, attention_mask), both with the axes
``{0: "batch", 1: "sequence"}``, the tokenizer staying in Python."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from meddiag_pipelines.registry.export import CHUNK, Exportable, ExportRefused, VersionToExport
from meddiag_pipelines.text.encoder import _Encoder
from meddiag_pipelines.text.models import _bags, _batch_tensors, _Neural, load_text_model, texts_of


def exportable(version: VersionToExport) -> Exportable:
    """The version's n-gram network or encoder, checked on its test texts (read only once the model loads)."""
    _ = version.test_ids  # refused here, before the model loads, when the version has no test rows
    column = version.plan["text_column"]
    return text_exportable(version.model_dir, lambda: texts_of(version.test_rows([column]), column))


EXAMPLE_TEXTS = ["chest pain on exertion", "no acute findings"]  # traced only: the example's values do not matter


def text_inputs_exportable(
    module,
    axes: dict[str, dict[int, str]],
    encode: Callable[[list[str]], dict[str, np.ndarray]],
    texts: list[str],
    then: str,
) -> Exportable:
    """A text model whose inputs ``encode(texts)`` makes in Python (hashing, a tokenizer), chunk by chunk. An
    encoder passes a module returning the logits tensor, ``axes`` {0: "batch", 1: "sequence"} for input_ids and
    attention_mask, and its tokenizer (padded, as int64 arrays) as ``encode``."""

    def batches() -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(texts), CHUNK):
            yield encode(texts[start : start + CHUNK])

    return Exportable(module, axes, encode(EXAMPLE_TEXTS), batches, len(texts), then)


def encoder_exportable(model, texts: list[str]) -> Exportable:
    """A Hugging Face encoder: its tokenizer runs before the session (padded to the longest text of a chunk)."""

    def tokens(chunk: list[str]) -> dict[str, np.ndarray]:
        enc = model.tokenizer(
            [t or "" for t in chunk], truncation=True, max_length=model.max_length, padding=True, return_tensors="np"
        )
        return {
            "input_ids": enc["input_ids"].astype(np.int64),
            "attention_mask": enc["attention_mask"].astype(np.int64),
        }

    then = (
        f"divide by the temperature {model.temperature:.6g}, then softmax over the classes; inputs: the "
        f"tokenizer of the version's model/encoder/ folder, truncated at {model.max_length} tokens"
    )
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}
    return text_inputs_exportable(model.module(), axes, tokens, texts, then)


def text_exportable(model_dir: Path, test_texts: Callable[[], list[str]]) -> Exportable:
    try:
        model = load_text_model(model_dir)
    except ValueError as exc:  # a model kind this module has no adapter for
        raise ExportRefused(f"{exc}: no ONNX export for it yet") from exc
    if isinstance(model, _Encoder):
        return encoder_exportable(model, test_texts())
    if not isinstance(model, _Neural):
        raise ExportRefused(
            f"{model_dir.parent.name}: the chosen text model is the TF-IDF + logistic-regression "
            "baseline, not a torch model; its vocab.json and weights.npz are portable as they are"
        )
    model.net.eval()

    def hashed(chunk: list[str]) -> dict[str, np.ndarray]:
        ids, offsets = _batch_tensors(_bags(chunk, model.n_buckets, model.char_ngrams), "cpu")
        return {"indices": ids.numpy(), "offsets": offsets.numpy()}

    sigmoid = "sigmoid: P(second class)" if model.n_out == 1 else "softmax over the classes"
    then = (
        f"divide by the temperature {model.temperature:.6g}, then {sigmoid}; indices: CRC32 buckets of the "
        "n-grams of each text (text.models.hashed_features), offsets: where each text starts"
    )
    axes = {"indices": {0: "n_indices"}, "offsets": {0: "batch"}}
    return text_inputs_exportable(model.net, axes, hashed, test_texts(), then)
