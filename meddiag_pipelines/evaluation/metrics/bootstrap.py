"""Fast AUROC and average precision, and the (stratified, paired) bootstrap that gives every CI."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

CONFIDENCE = 0.95
_MAX_CELLS = 2_000_000  # bootstrap index cells per batch (bounds memory for large n)


def _dense_rank(score: np.ndarray) -> tuple[np.ndarray, int]:
    uniq, inv = np.unique(np.asarray(score, dtype=float), return_inverse=True)
    return inv.reshape(-1).astype(np.intp), int(uniq.size)


def _bucket_counts(buckets: np.ndarray, n_buckets: int, weights: np.ndarray | None = None) -> np.ndarray:
    """(b, m) bucket ids -> (b, n_buckets) (weighted) counts, one bincount for the whole batch."""
    b = buckets.shape[0]
    flat = (buckets + (np.arange(b, dtype=np.intp) * n_buckets)[:, None]).ravel()
    w = None if weights is None else np.asarray(weights, dtype=float).ravel()
    out = np.bincount(flat, weights=w, minlength=b * n_buckets)
    return out.reshape(b, n_buckets).astype(float, copy=False)


def _auc_ap_from_counts(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and average precision per row from positive/negative counts per ascending score bucket.

    AUROC = sum over positives of (#negatives with a lower score + half the tied negatives) / (P * N).
    AP = sum over thresholds (descending, ties grouped) of recall increment * precision, as scikit-learn.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        n_pos = pos.sum(axis=1)
        n_neg = neg.sum(axis=1)
        below = np.cumsum(neg, axis=1) - neg
        auc = (pos * (below + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg)
        pos_d = pos[:, ::-1]
        tp = np.cumsum(pos_d, axis=1)
        called = tp + np.cumsum(neg[:, ::-1], axis=1)
        precision = np.divide(tp, called, out=np.zeros_like(tp), where=called > 0)
        ap = (pos_d * precision).sum(axis=1) / n_pos
    auc = np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)
    ap = np.where(n_pos > 0, ap, np.nan)
    return auc, ap


class _Scores:
    """A score vector pre-ranked once, so every bootstrap resample is a bincount, not a sort."""

    def __init__(self, score: np.ndarray):
        self.bucket, self.n_buckets = _dense_rank(score)

    def auc_ap(self, idx: np.ndarray, pos_cols: np.ndarray | None, y: np.ndarray | None = None):
        """idx: (b, n) row indices. Stratified: pos_cols marks positive columns. Else y gives outcomes."""
        b_idx = self.bucket[idx]
        if pos_cols is not None:
            pos = _bucket_counts(b_idx[:, pos_cols], self.n_buckets)
            neg = _bucket_counts(b_idx[:, ~pos_cols], self.n_buckets)
        else:
            yy = y[idx].astype(float)
            pos = _bucket_counts(b_idx, self.n_buckets, yy)
            neg = _bucket_counts(b_idx, self.n_buckets, 1.0 - yy)
        return _auc_ap_from_counts(pos, neg)


def _resamples(strata: np.ndarray, n_boot: int, rng: np.random.Generator) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (idx, order) batches: idx is (b, n); column j always holds a row of the stratum of row order[j]."""
    strata = np.asarray(strata)
    n = strata.size
    order = np.argsort(strata, kind="stable")
    _, starts = np.unique(strata[order], return_index=True)
    bounds = list(zip(starts, list(starts[1:]) + [n], strict=True))
    per_batch = max(1, _MAX_CELLS // max(n, 1))
    done = 0
    while done < n_boot:
        b = min(per_batch, n_boot - done)
        idx = np.empty((b, n), dtype=np.intp)
        for lo, hi in bounds:
            members = order[lo:hi]
            idx[:, lo:hi] = members[rng.integers(0, hi - lo, size=(b, hi - lo))]
        done += b
        yield idx, order


def _bootstrap(strata: np.ndarray, n_boot: int, seed: Any, stat: Callable[[np.ndarray, np.ndarray], dict]) -> dict:
    """Run ``stat(idx, order) -> {name: (b,) or (b, k) array}`` over batches; concatenate per name."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {}
    for idx, order in _resamples(strata, n_boot, rng):
        for k, v in stat(idx, order).items():
            parts.setdefault(k, []).append(np.asarray(v, dtype=float))
    return {k: np.concatenate(v, axis=0) for k, v in parts.items()}


def percentile_ci(values: np.ndarray, confidence: float = CONFIDENCE) -> list[float] | None:
    """Percentile interval of the finite values; None when fewer than 10 are finite."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size < 10:
        return None
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(v, [alpha, 1.0 - alpha])
    return [float(lo), float(hi)]


def bootstrap_auroc_ci(
    y_true: np.ndarray, score: np.ndarray, n_bootstrap: int = 1000, seed: Any = 0
) -> list[float] | None:
    """Stratified percentile bootstrap 95% CI of the AUROC (vectorised; fast for large n)."""
    y = np.asarray(y_true).astype(int)
    if y.min(initial=0) == y.max(initial=0):
        return None
    sc = _Scores(score)
    pos_cols = np.sort(y)[:] == 1  # columns follow the stable sort by stratum (= y)
    res = _bootstrap(y, n_bootstrap, seed, lambda idx, order: {"auc": sc.auc_ap(idx, pos_cols)[0]})
    return percentile_ci(res["auc"])
