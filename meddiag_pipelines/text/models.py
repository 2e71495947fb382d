"""Text classifiers: a TF-IDF + logistic-regression baseline, a fastText-style PyTorch model and, when the spec
names a ``text_model``, a pretrained Hugging Face encoder fine-tuned for the task (``text/encoder.py``).

All are trained by ``train_text_models``; the one with the best validation macro-F1 is chosen (a tie goes
to the simpler model: baseline, then neural, then encoder), so the chosen model is never worse than the
baseline on validation. All are saved in safe formats only, no pickle anywhere:

``out_dir/baseline``  ``model.json`` (classes, C, temperature, n-gram settings), ``vocab.json`` (word and
                      character n-gram vocabularies, in column order), ``weights.npz`` (idf, coefficients,
                      intercepts; read with ``allow_pickle=False``). The TF-IDF transform is rebuilt from them.
``out_dir/neural``    ``model.json`` (classes, sizes, temperature), ``model.pt`` (a ``state_dict`` read with
                      ``torch.load(..., weights_only=True)``), ``terms.json`` (frequent training words, for
                      ``top_terms_per_class``).
``out_dir/encoder``   (with ``text_model``) the Hugging Face folder (config, tokenizer, ``model.safetensors``),
                      ``head.safetensors`` and ``model.json`` (kind ``hf_encoder``, classes, temperature,
                      max_length, pooling, tuning).
``out_dir/chosen.json``  which model was chosen, the validation scores and temperatures (and the encoder's tuning).

Baseline: TF-IDF of word 1-2-grams and ``char_wb`` 2-5-grams (sublinear tf, idf fitted on train, each block
L2-normalised), class-balanced multinomial logistic regression with C tuned on validation macro-F1 over
``C_GRID``, then a temperature fitted on validation (minimum log-loss) calibrates the probabilities.

Neural: an ``EmbeddingBag`` (mean) over hashed word unigrams, bigrams and character 3-5-grams of each word
(CRC32 into ``N_BUCKETS`` buckets: deterministic across processes), dropout, a linear layer; class-balanced
cross-entropy, sparse Adagrad for the embedding table (``EMBED_LR``) and Adam at the spec's learning rate
for the output layer, early stopping on validation macro-F1 with the spec's
patience, epochs and time budget; temperature-scaled on validation. Seeded; deterministic on the CPU.

Explanations (``explain_texts``) are by occlusion: a word scores the drop in the log-probability of the
predicted class when every occurrence of it is removed from the text; it works the same for every model
(it needs only ``predict``) and names only words that are in the text.
"""

from __future__ import annotations

import json
import math
import re
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression

from meddiag_pipelines.atomic import atomic_write, atomic_write_json
from meddiag_pipelines.device import cpu_threads
from meddiag_pipelines.specs import TaskSpec
from meddiag_pipelines.text.shared import (
    FORMAT_VERSION,
    WORD,
    class_weights,
    fit_temperature,
    frequent_terms,
    full_probs,
    macro_f1,
    probs_from_logits,
)

WORD_NGRAMS = (1, 2)
CHAR_NGRAMS = (2, 5)
MAX_WORD_FEATURES = 50_000
MAX_CHAR_FEATURES = 80_000
MIN_DF = 2
C_GRID = (0.5, 2.0, 8.0, 32.0)
LR_MAX_ITER = 300

N_BUCKETS = 2**18
EMBED_DIM = 64
DROPOUT = 0.2
EMBED_LR = 0.1  # sparse Adagrad on the embedding table; the output layer uses Adam at the spec's rate
EMBED_DIM, EMBED_SEED = 256, 0  # the baseline's embedding for drift: TF-IDF through a fixed random projection
NEURAL_CHAR_NGRAMS = (3, 5)
N_TERMS = 5000
MAX_EXPLAIN_WORDS = 150


@dataclass
class TextTrainResult:
    model_dir: Path  # the chosen model's folder (out_dir/baseline or out_dir/neural)
    chosen: str  # "baseline" or "neural"
    val_scores: dict[str, float]  # validation macro-F1 of each model
    baseline_dir: Path
    seconds: float
    device: str


def _write_npz(path: Path, **arrays: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    atomic_write(path, write)


def _resolve(model_dir: Path) -> tuple[Path, dict]:
    """A model folder, or an out_dir with chosen.json (then the chosen model's folder)."""
    model_dir = Path(model_dir)
    chosen = model_dir / "chosen.json"
    if chosen.is_file() and not (model_dir / "model.json").is_file():
        model_dir = model_dir / json.loads(chosen.read_text(encoding="utf-8"))["chosen"]
    config = json.loads((model_dir / "model.json").read_text(encoding="utf-8"))
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{model_dir}: unknown model format {config.get('format_version')!r}")
    return model_dir, config


# --------------------------------------------------------------------------------------------------------
# baseline: TF-IDF + logistic regression


class TfidfFeatures:
    """Word 1-2-gram and char_wb 2-5-gram TF-IDF, rebuilt exactly from saved vocabularies and idf."""

    def __init__(self, word_vocab: list[str], char_vocab: list[str], idf_word: np.ndarray, idf_char: np.ndarray):
        self.word_vocab, self.char_vocab = list(word_vocab), list(char_vocab)
        self.idf_word, self.idf_char = np.asarray(idf_word, dtype=np.float64), np.asarray(idf_char, dtype=np.float64)
        self._word = CountVectorizer(
            analyzer="word", ngram_range=WORD_NGRAMS, vocabulary={t: i for i, t in enumerate(self.word_vocab)}
        )
        self._char = CountVectorizer(
            analyzer="char_wb", ngram_range=CHAR_NGRAMS, vocabulary={t: i for i, t in enumerate(self.char_vocab)}
        )

    @classmethod
    def fit_transform(cls, texts: list[str]) -> tuple[TfidfFeatures, sp.csr_matrix]:
        """The features fitted on ``texts`` and ``texts``' matrix from the same counting pass (the matrix
        ``transform(texts)`` gives, without counting the n-grams a second time)."""
        texts = [t or "" for t in texts]
        parts, blocks = [], []
        for analyzer, ngrams, cap in (
            ("word", WORD_NGRAMS, MAX_WORD_FEATURES),
            ("char_wb", CHAR_NGRAMS, MAX_CHAR_FEATURES),
        ):
            min_df = MIN_DF if len(texts) >= 50 else 1
            cv = CountVectorizer(analyzer=analyzer, ngram_range=ngrams, min_df=min_df, max_features=cap)
            x = cv.fit_transform(texts)
            vocab = [""] * len(cv.vocabulary_)
            for term, i in cv.vocabulary_.items():
                vocab[i] = term
            df = np.bincount(x.indices, minlength=x.shape[1])
            idf = np.log((1 + x.shape[0]) / (1 + df)) + 1.0
            parts.append((vocab, idf))
            blocks.append(cls._weight(x, idf))
        features = cls(parts[0][0], parts[1][0], parts[0][1], parts[1][1])
        return features, sp.hstack(blocks, format="csr")

    @staticmethod
    def _weight(x: sp.csr_matrix, idf: np.ndarray) -> sp.csr_matrix:
        x = x.astype(np.float64).tocsr()
        x.data = 1.0 + np.log(x.data)
        x = x @ sp.diags(idf)
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
        norms[norms == 0] = 1.0
        return sp.csr_matrix(sp.diags(1.0 / norms) @ x)

    def transform(self, texts: list[str]) -> sp.csr_matrix:
        texts = [t or "" for t in texts]
        xw = self._weight(self._word.transform(texts), self.idf_word)
        xc = self._weight(self._char.transform(texts), self.idf_char)
        return sp.hstack([xw, xc], format="csr")


@dataclass
class _Baseline:
    features: TfidfFeatures
    coef: np.ndarray  # (1, d) binary or (k, d)
    intercept: np.ndarray
    temperature: float
    classes: list[str]
    C: float

    def logits(self, texts: list[str]) -> np.ndarray:
        z = np.asarray(self.features.transform(texts) @ self.coef.T) + self.intercept
        return z[:, 0] if z.shape[1] == 1 else z

    def predict(self, texts: list[str]) -> np.ndarray:
        return probs_from_logits(self.logits(texts), self.temperature)

    def embed(self, texts: list[str]) -> np.ndarray:
        """The TF-IDF vectors the regression reads, through a sparse random projection to
        :data:`EMBED_DIM` dimensions fixed by its seed and the vocabulary's size: nothing to fit or store, and
        it keeps pairwise distances (Johnson-Lindenstrauss), which is all a kernel MMD test reads."""
        from sklearn.random_projection import SparseRandomProjection

        x = self.features.transform(texts)
        projection = SparseRandomProjection(n_components=EMBED_DIM, dense_output=True, random_state=EMBED_SEED)
        return projection.fit(x[:1]).transform(x).astype(np.float32)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "vocab.json", {"word": self.features.word_vocab, "char": self.features.char_vocab})
        _write_npz(
            folder / "weights.npz",
            idf_word=self.features.idf_word,
            idf_char=self.features.idf_char,
            coef=self.coef,
            intercept=self.intercept,
        )
        config = {
            "format_version": FORMAT_VERSION,
            "kind": "tfidf_logreg",
            "classes": self.classes,
            "C": self.C,
            "temperature": self.temperature,
            "word_ngrams": list(WORD_NGRAMS),
            "char_ngrams": list(CHAR_NGRAMS),
            "sublinear_tf": True,
        }
        atomic_write_json(folder / "model.json", config)

    @classmethod
    def load(cls, folder: Path, config: dict) -> _Baseline:
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        with np.load(folder / "weights.npz", allow_pickle=False) as w:
            arrays = {k: w[k] for k in w.files}
        features = TfidfFeatures(vocab["word"], vocab["char"], arrays["idf_word"], arrays["idf_char"])
        return cls(
            features,
            arrays["coef"],
            arrays["intercept"],
            float(config["temperature"]),
            list(config["classes"]),
            float(config["C"]),
        )


def _fit_logistic(x: sp.csr_matrix, y: np.ndarray, c: float, seed: int) -> LogisticRegression:
    lr = LogisticRegression(
        C=c, class_weight="balanced", solver="saga", max_iter=LR_MAX_ITER, tol=1e-3, random_state=seed
    )
    return lr.fit(x, y)


def _train_baseline(
    train_texts: list[str], y_train: np.ndarray, val_texts: list[str], y_val: np.ndarray, classes: list[str], seed: int
) -> tuple[_Baseline, float]:
    features, x_train = TfidfFeatures.fit_transform(train_texts)
    x_val = features.transform(val_texts)
    # The C grid's fits are independent and saga runs without the GIL: fitted in threads, one per CPU, each
    # exactly as it would be alone (the grid in the time of its slowest fit on 2 cores, not the sum of the
    # four). The warning filter is process-wide.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        with ThreadPoolExecutor(max_workers=min(len(C_GRID), cpu_threads())) as pool:
            fits = list(pool.map(lambda c: _fit_logistic(x_train, y_train, c, seed), C_GRID))
    best: tuple[float, float, LogisticRegression] | None = None
    for c, lr in zip(C_GRID, fits, strict=True):
        f1 = macro_f1(y_val, full_probs(lr.predict_proba(x_val)), len(classes))
        if best is None or f1 > best[0] + 1e-12:
            best = (f1, c, lr)
    assert best is not None
    _, c, lr = best
    coef, intercept = lr.coef_.astype(np.float64), lr.intercept_.astype(np.float64)
    if len(lr.classes_) != len(classes):  # a class absent from train: give it a never-chosen row
        full_coef = np.zeros((len(classes), coef.shape[1]))
        full_int = np.full(len(classes), -1e3)
        full_coef[lr.classes_] = coef
        full_int[lr.classes_] = intercept
        coef, intercept = full_coef, full_int
    model = _Baseline(features, coef, intercept, 1.0, list(classes), float(c))
    model.temperature = fit_temperature(model.logits(val_texts), y_val)
    return model, macro_f1(y_val, model.predict(val_texts), len(classes))


# --------------------------------------------------------------------------------------------------------
# neural: fastText-style bag of hashed n-grams


def _bucket(feature: str, n_buckets: int) -> int:
    return zlib.crc32(feature.encode("utf-8")) % n_buckets


def hashed_features(
    text: str, n_buckets: int = N_BUCKETS, char_ngrams: tuple[int, int] = NEURAL_CHAR_NGRAMS
) -> list[int]:
    """Bucket ids of the word unigrams, bigrams and per-word character n-grams of one text."""
    words = WORD.findall((text or "").lower())
    ids = [_bucket("w:" + w, n_buckets) for w in words]
    ids += [_bucket(f"b:{a} {b}", n_buckets) for a, b in zip(words, words[1:], strict=False)]
    lo, hi = char_ngrams
    for w in words:
        padded = f"<{w}>"
        for n in range(lo, hi + 1):
            ids += [_bucket("c:" + padded[i : i + n], n_buckets) for i in range(len(padded) - n + 1)]
    return ids


def _bags(texts: list[str], n_buckets: int, char_ngrams: tuple[int, int]) -> list[np.ndarray]:
    return [np.asarray(hashed_features(t, n_buckets, char_ngrams), dtype=np.int64) for t in texts]


def _build_net(n_buckets: int, dim: int, n_out: int, dropout: float):
    import torch
    from torch import nn

    class FastText(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.EmbeddingBag(n_buckets, dim, mode="mean", sparse=True)
            self.dropout = nn.Dropout(dropout)
            self.out = nn.Linear(dim, n_out)
            nn.init.uniform_(self.embedding.weight, -1.0 / dim, 1.0 / dim)

        def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
            return self.out(self.dropout(self.embedding(ids, offsets)))

    return FastText()


def _batch_tensors(bags: list[np.ndarray], device: str):
    import torch

    lengths = [len(b) for b in bags]
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    ids = np.concatenate(bags) if sum(lengths) else np.zeros(0, dtype=np.int64)
    return torch.from_numpy(ids).to(device), torch.from_numpy(offsets).to(device)


@dataclass
class _Neural:
    net: object
    classes: list[str]
    temperature: float
    n_buckets: int
    dim: int
    char_ngrams: tuple[int, int]
    terms: list[str]
    device: str = "cpu"

    @property
    def n_out(self) -> int:
        return 1 if len(self.classes) == 2 else len(self.classes)

    def logits_from_bags(self, bags: list[np.ndarray], batch: int = 2048) -> np.ndarray:
        import torch

        self.net.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(bags), batch):
                ids, offsets = _batch_tensors(bags[i : i + batch], self.device)
                out.append(self.net(ids, offsets).float().cpu().numpy())
        z = np.concatenate(out) if out else np.zeros((0, self.n_out))
        return z[:, 0].astype(np.float64) if self.n_out == 1 else z.astype(np.float64)

    def logits(self, texts: list[str]) -> np.ndarray:
        return self.logits_from_bags(_bags(texts, self.n_buckets, self.char_ngrams))

    def embed(self, texts: list[str], batch: int = 2048) -> np.ndarray:
        """The mean of each text's n-gram embeddings: what the output layer reads."""
        import torch

        bags, out = _bags(texts, self.n_buckets, self.char_ngrams), []
        with torch.no_grad():
            for i in range(0, len(bags), batch):
                out.append(self.net.embedding(*_batch_tensors(bags[i : i + batch], self.device)).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), dtype=np.float32)

    def predict(self, texts: list[str]) -> np.ndarray:
        return probs_from_logits(self.logits(texts), self.temperature)

    def save(self, folder: Path) -> None:
        import torch

        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                torch.save(state, fh)

        atomic_write(folder / "model.pt", write)
        atomic_write_json(folder / "terms.json", self.terms)
        config = {
            "format_version": FORMAT_VERSION,
            "kind": "fasttext_torch",
            "classes": self.classes,
            "temperature": self.temperature,
            "n_buckets": self.n_buckets,
            "dim": self.dim,
            "char_ngrams": list(self.char_ngrams),
            "dropout": DROPOUT,
            "hash": "crc32",
        }
        atomic_write_json(folder / "model.json", config)

    @classmethod
    def load(cls, folder: Path, config: dict, device: str = "cpu") -> _Neural:
        import torch

        classes = list(config["classes"])
        n_out = 1 if len(classes) == 2 else len(classes)
        net = _build_net(int(config["n_buckets"]), int(config["dim"]), n_out, float(config.get("dropout", DROPOUT)))
        state = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        net.to(device)
        terms = json.loads((folder / "terms.json").read_text(encoding="utf-8"))
        return cls(
            net,
            classes,
            float(config["temperature"]),
            int(config["n_buckets"]),
            int(config["dim"]),
            tuple(config["char_ngrams"]),
            terms,
            device,
        )


def _train_neural(
    train_texts: list[str],
    y_train: np.ndarray,
    val_texts: list[str],
    y_val: np.ndarray,
    classes: list[str],
    spec: TaskSpec,
    device: str,
    deadline: float,
) -> tuple[_Neural, float]:
    import torch
    from torch import nn

    cfg = spec.training
    k = len(classes)
    n_out = 1 if k == 2 else k
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    net = _build_net(N_BUCKETS, EMBED_DIM, n_out, DROPOUT).to(device)
    train_bags = _bags(train_texts, N_BUCKETS, NEURAL_CHAR_NGRAMS)
    val_bags = _bags(val_texts, N_BUCKETS, NEURAL_CHAR_NGRAMS)
    weights = class_weights(y_train, k)
    if n_out == 1:
        loss_fn = nn.BCEWithLogitsLoss(reduction="none")
        sample_w = torch.tensor(weights[y_train], dtype=torch.float32)
    else:
        loss_fn = nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32, device=device))
    y_t = torch.tensor(y_train, dtype=torch.long)
    opt_sparse = torch.optim.Adagrad(list(net.embedding.parameters()), lr=EMBED_LR)
    opt_dense = torch.optim.Adam(list(net.out.parameters()), lr=cfg.learning_rate)
    model = _Neural(net, list(classes), 1.0, N_BUCKETS, EMBED_DIM, NEURAL_CHAR_NGRAMS, [], device)
    best_f1, best_state, stale = -1.0, None, 0
    for _epoch in range(cfg.epochs):
        net.train()
        order = torch.randperm(len(train_bags), generator=gen).numpy()
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            ids, offsets = _batch_tensors([train_bags[j] for j in idx], device)
            out = net(ids, offsets)
            target = y_t[idx].to(device)
            if n_out == 1:
                loss = (loss_fn(out[:, 0], target.float()) * sample_w[idx].to(device)).mean()
            else:
                loss = loss_fn(out, target)
            opt_sparse.zero_grad()
            opt_dense.zero_grad()
            loss.backward()
            opt_sparse.step()
            opt_dense.step()
        f1 = macro_f1(y_val, probs_from_logits(model.logits_from_bags(val_bags), 1.0), k)
        if f1 > best_f1 + 1e-9:
            best_f1, stale = f1, 0
            best_state = {n: v.detach().clone() for n, v in net.state_dict().items()}
        else:
            stale += 1
        if stale >= cfg.patience or time.monotonic() > deadline:
            break
    if best_state is not None:
        net.load_state_dict(best_state)
    model.temperature = fit_temperature(model.logits_from_bags(val_bags), y_val)
    model.terms = frequent_terms(train_texts, N_TERMS)
    return model, macro_f1(y_val, probs_from_logits(model.logits_from_bags(val_bags), model.temperature), k)


# --------------------------------------------------------------------------------------------------------
# public API


def train_text_models(
    train_texts: list[str],
    y_train: np.ndarray,
    val_texts: list[str],
    y_val: np.ndarray,
    classes: list[str],
    spec: TaskSpec,
    out_dir: Path,
    device: str | None = None,
) -> TextTrainResult:
    """Train the baseline, the neural model and (when the spec names ``text_model``) the pretrained encoder, save
    them all and pick the best on validation macro-F1 (a tie goes to the simpler model)."""
    import torch

    from meddiag_pipelines.device import torch_device, torch_settings

    start = time.monotonic()
    device = device or torch_device()
    out_dir = Path(out_dir)
    y_train, y_val = np.asarray(y_train, dtype=np.int64), np.asarray(y_val, dtype=np.int64)
    if len(classes) < 2:
        raise ValueError("need at least two classes")
    if len(train_texts) != len(y_train) or len(val_texts) != len(y_val):
        raise ValueError("texts and labels differ in length")
    if not len(val_texts) or not len(train_texts):
        raise ValueError("need training and validation texts")
    if spec.text_model is not None:  # a wrong folder fails now, not after the other models have trained
        from meddiag_pipelines.text.encoder import encoder_source

        encoder_source(spec.text_model)
    baseline, f1_base = _train_baseline(train_texts, y_train, val_texts, y_val, classes, spec.training.seed)
    baseline.save(out_dir / "baseline")
    deadline = start + spec.training.time_budget_s
    # Deterministic algorithms on the CPU, at the caller's thread count; torch's settings are restored after.
    with (
        torch_settings(device, deterministic=device == "cpu", threads=torch.get_num_threads()),
        warnings.catch_warnings(),
    ):
        warnings.filterwarnings("ignore", message="Sparse invariant checks")
        neural, f1_neural = _train_neural(train_texts, y_train, val_texts, y_val, classes, spec, device, deadline)
    neural.save(out_dir / "neural")
    models = {"baseline": baseline, "neural": neural}
    scores = {"baseline": f1_base, "neural": f1_neural}
    if spec.text_model is not None:
        from meddiag_pipelines.text.encoder import train_encoder

        with torch_settings(device, deterministic=device == "cpu", threads=torch.get_num_threads()):
            models["encoder"], scores["encoder"] = train_encoder(
                train_texts, y_train, val_texts, y_val, classes, spec, device, deadline
            )
        models["encoder"].save(out_dir / "encoder")
    chosen = max(scores, key=lambda name: (scores[name], -list(scores).index(name)))  # a tie: the simpler model
    extra = {"tuning": {"encoder": models["encoder"].tuning}} if "encoder" in models else {}
    atomic_write_json(
        out_dir / "chosen.json",
        {
            "chosen": chosen,
            "val_macro_f1": scores,
            "classes": list(classes),
            "baseline_C": baseline.C,
            "temperature": {name: model.temperature for name, model in models.items()},
            **extra,
        },
    )
    return TextTrainResult(out_dir / chosen, chosen, scores, out_dir / "baseline", time.monotonic() - start, device)


def load_text_model(model_dir: Path, device: str = "cpu"):
    """The saved baseline, neural model or encoder (``text.encoder._Encoder``), by its model.json kind."""
    folder, config = _resolve(model_dir)
    if config["kind"] == "tfidf_logreg":
        return _Baseline.load(folder, config)
    if config["kind"] == "fasttext_torch":
        return _Neural.load(folder, config, device)
    if config["kind"] == "hf_encoder":
        from meddiag_pipelines.text.encoder import _Encoder

        return _Encoder.load(folder, config, device)
    raise ValueError(f"{folder}: unknown model kind {config['kind']!r}")


def predict_text(model_dir: Path, texts: list[str]) -> np.ndarray:
    """Calibrated probabilities: binary (n,) P(classes[1]); multi-class (n, k)."""
    return load_text_model(model_dir).predict(list(texts))


def embed_texts(model_dir: Path, texts: list[str]) -> np.ndarray:
    """(n, d) float32 embeddings of ``texts`` by the saved model (each model's ``embed``)."""
    return np.asarray(load_text_model(model_dir).embed(list(texts)), dtype=np.float32)


def texts_of(rows: pl.DataFrame, column: str) -> list[str]:
    """A text column as the models read it: strings, a missing text as ''."""
    return rows[column].cast(pl.String).fill_null("").to_list()


def class_probabilities(model_dir: Path, texts: list[str], binary: bool) -> np.ndarray:
    """:func:`predict_text` in the evaluator's shape: a task of two classes without a positive one is a multi-class
    task, so it gets both columns."""
    proba = predict_text(model_dir, texts)
    return np.column_stack([1 - proba, proba]) if proba.ndim == 1 and not binary else proba


def _occlusion_variants(text: str) -> tuple[list[str], list[str]]:
    words: dict[str, str] = {}
    for m in WORD.finditer(text or ""):
        key = m.group().lower()
        if key not in words:
            words[key] = m.group()
        if len(words) >= MAX_EXPLAIN_WORDS:
            break
    variants = [re.sub(rf"(?i)(?<!\w){re.escape(w)}(?!\w)", " ", text) for w in words.values()]
    return list(words.values()), variants


def explain_texts(model_dir: Path, texts: list[str], top_k: int = 5) -> list[list[tuple[str, float]]]:
    """For each text, up to ``top_k`` words (as written in it) that pushed it toward its predicted class.

    A word's weight is log P(predicted | text) - log P(predicted | text without that word), > 0.
    """
    model = load_text_model(model_dir)
    texts = list(texts)
    base = full_probs(model.predict(texts))
    pred = base.argmax(axis=1)
    all_words, all_variants, owner = [], [], []
    for i, t in enumerate(texts):
        words, variants = _occlusion_variants(t)
        all_words += words
        all_variants += variants
        owner += [i] * len(words)
    occluded = full_probs(model.predict(all_variants)) if all_variants else np.zeros((0, base.shape[1]))
    out: list[list[tuple[str, float]]] = [[] for _ in texts]
    for j, i in enumerate(owner):
        c = pred[i]
        score = math.log(max(base[i, c], 1e-12)) - math.log(max(occluded[j, c], 1e-12))
        if score > 0:
            out[i].append((all_words[j], round(float(score), 6)))
    return [sorted(terms, key=lambda x: (-x[1], x[0]))[:top_k] for terms in out]


def top_terms_per_class(model_dir: Path, k: int = 15) -> dict[str, list[tuple[str, float]]]:
    """The words (and word bigrams, for the baseline) most indicative of each class.

    Baseline: word n-gram coefficients, relative to the mean over classes. Neural: each frequent training
    word scored alone through the model (its logit relative to the mean over classes).
    """
    model = load_text_model(model_dir)
    if isinstance(model, _Baseline):
        n_word = len(model.features.word_vocab)
        terms = model.features.word_vocab
        w = model.coef[:, :n_word]
    else:
        terms = model.terms
        z = model.logits(terms)
        w = z[None, :] if z.ndim == 1 else z.T
    if w.shape[0] == 1:  # binary: one score toward classes[1]
        scores = np.vstack([-w[0], w[0]])
    else:
        scores = w - w.mean(axis=0, keepdims=True)
    out: dict[str, list[tuple[str, float]]] = {}
    for c, name in enumerate(model.classes):
        if len(terms) == 0:
            out[name] = []
            continue
        order = np.argsort(-scores[c], kind="stable")[:k]
        out[name] = [(terms[i], round(float(scores[c, i]), 6)) for i in order if scores[c, i] > 0]
    return out
