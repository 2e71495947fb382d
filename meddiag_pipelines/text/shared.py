"""What the text models (the TF-IDF baseline, the n-gram network, the pretrained encoder) share: probabilities
from logits, temperature scaling, validation macro-F1, class weights, and the frequent words their top-terms
tables score."""

from __future__ import annotations

import math
import re

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.metrics import f1_score

from meddiag_pipelines.probability import softmax

FORMAT_VERSION = 1
WORD = re.compile(r"\w\w+", re.UNICODE)  # a word: two or more word characters


def probs_from_logits(logits: np.ndarray, temperature: float) -> np.ndarray:
    """(n,) logits -> (n,) P(class 1); (n, k) logits -> (n, k) probabilities."""
    z = logits / temperature
    if z.ndim == 1:
        return 1.0 / (1.0 + np.exp(-z))
    return softmax(z)


def full_probs(p: np.ndarray) -> np.ndarray:
    return np.column_stack([1 - p, p]) if p.ndim == 1 else p


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature that minimises the validation log-loss (searched on log T in [-3, 3])."""

    def nll(log_t: float) -> float:
        p = full_probs(probs_from_logits(logits, math.exp(log_t)))
        return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))))

    res = minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded", options={"xatol": 1e-4})
    return float(math.exp(res.x))


def macro_f1(y: np.ndarray, probs: np.ndarray, n_classes: int) -> float:
    pred = full_probs(probs).argmax(axis=1)
    return float(f1_score(y, pred, average="macro", labels=list(range(n_classes)), zero_division=0))


def class_weights(y: np.ndarray, k: int) -> np.ndarray:
    """Balanced class weights n / (k * count); 0 for a class absent from ``y``."""
    counts = np.bincount(y, minlength=k).astype(np.float64)
    return np.where(counts > 0, len(y) / (k * np.maximum(counts, 1)), 0.0)


def frequent_terms(texts: list[str], n: int) -> list[str]:
    """The ``n`` words found in the most texts (in two at least), ties in alphabetical order."""
    counts: dict[str, int] = {}
    for t in texts:
        for w in set(WORD.findall((t or "").lower())):
            counts[w] = counts.get(w, 0) + 1
    return [w for w, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= 2][:n]
