"""Evaluation metrics shared by every modality: pure functions, no Dagster.

``evaluate(EvaluationInput) -> dict`` returns the content of ``metrics.json``. Everything in it is a plain
Python value (``float``, ``int``, ``str``, ``bool``, ``None``, ``list``, ``dict``); NaN and infinities become
``None``, so ``json.dumps(metrics, allow_nan=False)`` always works. Only aggregate numbers are produced: no
record ids, no free text, no per-row values.

Conventions
-----------
* 95% confidence intervals (``*_ci``) are ``[low, high]`` percentile intervals of a **stratified** bootstrap
  (binary: positives and negatives resampled separately; multiclass: each class resampled separately),
  ``settings.n_bootstrap`` resamples drawn from ``numpy.random.default_rng`` seeded with ``settings.seed``.
  A CI is ``None`` when the statistic cannot be computed (e.g. one class only).
* Binary: a row is called positive when ``proba >= threshold`` (scikit-learn's ``roc_curve`` convention).
* Thresholds ``youden`` and ``target_sensitivity`` are chosen on the validation set when ``val_y_true`` and
  ``val_proba`` are given (``chosen_on = "validation"``), otherwise on the test set (``chosen_on = "test"``,
  optimistic); they are always *applied* to the test set.

Keys of ``metrics.json``
------------------------
Always present:

``task``, ``model_version``, ``model_name``, ``kind`` (``binary``/``multiclass``/``multilabel``), ``classes``,
``n_train``, ``n_val``, ``n_test``
``auroc``, ``auroc_ci``
    binary: ROC AUC; multiclass: macro one-vs-rest AUROC (classes absent from the test set are skipped);
    multilabel: macro AUROC over labels with both outcomes present. CI: see above (multilabel: row bootstrap,
    unstratified, because labels co-occur).
``auprc``, ``auprc_ci``
    average precision (scikit-learn's step-wise definition, ties grouped); macro over classes/labels.
``brier``
    binary: mean squared error of P(positive); multiclass: mean over rows of the sum over classes of squared
    errors (range 0..2); multilabel: mean over labels of the per-label Brier score.
``accuracy``, ``macro_f1``
    binary: at the operating threshold, macro F1 = mean of the F1 of both classes; multiclass: arg-max
    prediction; multilabel: subset (exact-match) accuracy and macro F1 over labels, each label at its own
    operating threshold.
``baseline``
    ``None`` without a baseline, else ``{name, auroc, auroc_ci, auprc, macro_f1, brier}`` computed on the same
    test rows and bootstrap resamples. A binary/multilabel baseline's macro F1 uses the same threshold rule
    chosen on the **test** set (no baseline validation scores are passed), so it is slightly optimistic.
``comparison``
    ``None`` without a baseline, else a paired bootstrap (same resample indices for model and baseline) of
    model minus baseline: ``{metric, model, baseline, difference, ci, auroc_difference, auroc_difference_ci}``;
    ``metric`` is ``auroc`` (binary), ``macro_f1`` (multiclass) or ``macro_auroc`` (multilabel); the AUROC
    difference is always given too (the promotion gate uses it).
``confusion_matrix``
    ``{labels, matrix, threshold}``: ``matrix`` is a list of lists, rows = true class, columns = predicted, in
    the order of ``labels``. Binary: at the operating threshold (``threshold`` = its value); multiclass:
    arg-max (``threshold`` = ``None``); multilabel: the sum of the per-label 2x2 tables, labels
    ``["absent", "present"]``.
``flow``, ``missing_data``, ``shift``
    passed through from the input (made JSON-safe).
``subgroups``
    ``{column: [row, ...]}`` one row per value (sorted; ``None``/NaN/empty become ``"missing"``). Binary rows:
    ``value, n, n_positive, prevalence, auroc, auroc_ci, auroc_difference`` (subgroup minus overall),
    ``calibration_in_the_large`` (observed rate minus mean predicted), ``sensitivity, specificity`` (at the
    operating threshold), ``flag_below`` and ``status``. ``flag_below`` is true when the subgroup's AUROC CI lies
    wholly below the overall AUROC point estimate (``auroc_ci[1] < auroc``). ``status`` is ``"ok"`` or
    ``"too few to judge"`` (n < ``settings.min_subgroup_n``, or only one outcome present), then AUROC,
    calibration, sensitivity and specificity are ``None`` and ``reason`` says why. Multiclass rows:
    ``value, n, accuracy, macro_f1, status``; multilabel rows: ``value, n, auroc`` (macro over labels with
    both outcomes), ``status``.
``settings``
    the evaluation spec (``target_sensitivity, operating_threshold, min_subgroup_n, n_bootstrap, seed``) plus
    ``confidence`` (0.95), ``ci_method`` and ``thresholds_chosen_on``.

Binary adds:

``prevalence``, ``n_positive``, ``sensitivity``, ``specificity`` (at the operating threshold), ``scaled_brier``
(1 - brier / (prevalence * (1 - prevalence))),
``calibration_slope``
    ``b`` of the logistic recalibration fit ``logit(P(y=1)) = a + b * logit(p)`` (1 = ideal, < 1 = predictions
    too extreme/over-confident, > 1 = too moderate): its maximum-likelihood estimate, ``None`` when there is
    none (the predicted risks separate the outcomes: every positive is ranked at or above every negative, so the
    likelihood keeps rising as ``b`` grows; or the predictions are all equal).
``calibration_slope_ci``
    stratified bootstrap 95% CI of the slope, by the same estimator (percentiles of the resamples' fits): a
    resample whose risks separate its outcomes counts as an infinite slope, so a bound that such resamples
    reach is ``None`` (unbounded); ``None`` with the slope.
``calibration_intercept``
    calibration-in-the-large: ``a`` in ``logit(P(y=1)) = a + 1 * logit(p)``, i.e. the slope is fixed at 1 by
    using ``logit(p)`` as an offset (0 = ideal, < 0 = risks over-estimated on average). p is clipped to
    [1e-6, 1 - 1e-6].
``calibration_curve``
    ``{bins: [{low, high, mean_predicted, observed, count}], smooth: {predicted, observed}, method}``: 10 equal
    width bins on [0, 1] (empty bins omitted; same binning as scikit-learn's ``calibration_curve``), and a
    smoothed curve: a logistic regression of y on a cubic B-spline of logit(p) (4 knots at quantiles, light L2
    penalty) evaluated at 50 points between the 1st and 99th percentile of p.
``decision_curve``
    ``{thresholds, model, treat_all, treat_none, baseline}``: columns over thresholds 0.01..0.99 step 0.01, net
    benefit = TP/n - FP/n * t/(1-t) (rows with p >= t treated); ``treat_all`` = prevalence - (1 - prevalence) *
    t/(1-t); ``treat_none`` = 0; ``baseline`` is ``None`` without a baseline.
``thresholds``
    list of rows ``{name, threshold, chosen_on, sensitivity, specificity, ppv, npv, f1, tp, fp, tn, fn}`` on
    the test set, ``name`` in ``"0.5"``, ``"youden"`` (max sensitivity + specificity - 1) and
    ``"target_sensitivity"`` (the highest threshold whose sensitivity is >= ``settings.target_sensitivity``),
    plus ``"fixed"`` when the spec's operating threshold is a number.
``operating_threshold``
    ``{name, value, chosen_on}``: the spec's ``operating_threshold`` rule and the threshold it gave.

Multiclass adds ``weighted_f1`` and ``per_class``: a list of rows ``{class, precision, recall, f1, support,
auroc, auroc_ci, auprc}`` (one-vs-rest AUROC).

Multilabel adds ``per_label``: a list of rows ``{label, ...}`` holding, for each label, every binary key above
(``auroc``, ``auroc_ci``, ``auprc``, ``brier``, ``calibration_*``, ``thresholds``, ``operating_threshold``,
``confusion_matrix`` ...), plus ``baseline_auroc`` when a baseline is given.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import optimize, special, stats
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)
from sklearn.preprocessing import SplineTransformer

from meddiag_pipelines.probability import CLIP, logit
from meddiag_pipelines.specs import EvaluationSpec

TOO_FEW = "too few to judge"
MISSING = "missing"
CONFIDENCE = 0.95
DECISION_THRESHOLDS = np.round(np.arange(1, 100) / 100.0, 2)
CALIBRATION_BINS = 10
_MAX_CELLS = 2_000_000  # bootstrap index cells per batch (bounds memory for large n)


@dataclass
class EvaluationInput:
    """Everything the evaluator needs; see the module docstring for the shapes and the output."""

    task: str
    model_version: str
    model_name: str
    kind: Literal["binary", "multiclass", "multilabel"]
    classes: list[str]
    y_true: np.ndarray
    proba: np.ndarray
    settings: EvaluationSpec
    n_train: int = 0
    n_val: int = 0
    n_test: int = 0
    val_y_true: np.ndarray | None = None
    val_proba: np.ndarray | None = None
    baseline_name: str | None = None
    baseline_proba: np.ndarray | None = None
    subgroups: dict[str, np.ndarray] = field(default_factory=dict)
    flow: dict[str, int] = field(default_factory=dict)
    missing_data: list[dict] = field(default_factory=list)
    shift: list[dict] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------------
# JSON safety
# ----------------------------------------------------------------------------------------------------------


def to_jsonable(obj: Any) -> Any:
    """Plain Python values only: numpy scalars/arrays converted, NaN/inf -> None, tuples -> lists."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        return x if math.isfinite(x) else None
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if hasattr(obj, "model_dump"):
        return to_jsonable(obj.model_dump())
    return str(obj)


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den > 0 else None


# ----------------------------------------------------------------------------------------------------------
# Fast AUROC / average precision and the bootstrap
# ----------------------------------------------------------------------------------------------------------


def rank_auroc(y_true: np.ndarray, score: np.ndarray) -> float:
    """AUROC by the Mann-Whitney U statistic on mid-ranks (ties count one half); NaN with one class only."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, dtype=float)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(s)  # average ranks for ties
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


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


def bootstrap_auroc_ci(y_true: np.ndarray, score: np.ndarray, n_bootstrap: int = 1000, seed: Any = 0) -> list[float] | None:
    """Stratified percentile bootstrap 95% CI of the AUROC (vectorised; fast for large n)."""
    y = np.asarray(y_true).astype(int)
    if y.min(initial=0) == y.max(initial=0):
        return None
    sc = _Scores(score)
    pos_cols = np.sort(y)[:] == 1  # columns follow the stable sort by stratum (= y)
    res = _bootstrap(y, n_bootstrap, seed, lambda idx, order: {"auc": sc.auc_ap(idx, pos_cols)[0]})
    return percentile_ci(res["auc"])


# ----------------------------------------------------------------------------------------------------------
# Binary building blocks
# ----------------------------------------------------------------------------------------------------------


def calibration_intercept_slope(y_true: np.ndarray, proba: np.ndarray) -> tuple[float | None, float | None]:
    """(calibration-in-the-large intercept with slope fixed at 1, recalibration slope); None with one class, and
    a slope of None where it has no finite estimate (:func:`_logistic_slopes`)."""
    y = np.asarray(y_true).astype(int)
    if y.size == 0 or y.min() == y.max():
        return None, None
    lp = logit(proba)
    slope = float(_logistic_slopes(lp[None, :], y[None, :].astype(float))[0])

    def score_eq(a: float) -> float:  # derivative of the log-likelihood in a; decreasing in a
        return float(np.sum(y - special.expit(a + lp)))

    lo, hi = -30.0, 30.0
    intercept = float(optimize.brentq(score_eq, lo, hi)) if score_eq(lo) > 0 > score_eq(hi) else None
    return intercept, slope if math.isfinite(slope) else None


def _separation(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per row of (B, n): +inf where x separates the outcomes upwards (every positive at or above every negative:
    the slope's likelihood rises without end), -inf downwards, NaN where both hold (x constant, or one class),
    0 where the slope has a finite maximum-likelihood estimate (Albert and Anderson 1984, in one dimension)."""
    pos = y > 0.5
    max_neg, min_pos = np.where(pos, -np.inf, x).max(1), np.where(pos, x, np.inf).min(1)
    max_pos, min_neg = np.where(pos, x, -np.inf).max(1), np.where(pos, np.inf, x).min(1)
    up, down = max_neg <= min_pos, max_pos <= min_neg
    return np.select([up & down, up, down], [np.nan, np.inf, -np.inf], 0.0)


def _log_likelihood(eta: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (y * eta - np.logaddexp(0.0, eta)).sum(1)


def _logistic_slopes(x: np.ndarray, y: np.ndarray, iterations: int = 100, tol: float = 1e-9) -> np.ndarray:
    """Maximum-likelihood slopes b of logit P(y) = a + b x for every row of (B, n) resamples at once: Newton's
    method with step halving (the log-likelihood is concave, so it converges) on the rows that have a finite
    estimate; ``+inf``/``-inf``/NaN for the others (:func:`_separation`). A row stops once its step is below
    ``tol`` (a handful of steps for most)."""
    slopes = _separation(x, y)
    rows = np.flatnonzero(slopes == 0.0)
    x, y = x[rows], y[rows]
    a, b = np.zeros(rows.size), np.ones(rows.size)
    eta = x.copy()  # a + b * x of each row's current fit
    ll = _log_likelihood(eta, y)
    active = np.arange(rows.size)
    for _ in range(iterations):
        if active.size == 0:
            break
        xs, ys = x[active], y[active]
        mu = special.expit(eta[active])
        w = np.maximum(mu * (1.0 - mu), 1e-300)
        r = ys - mu
        g_a, g_b = r.sum(1), (r * xs).sum(1)
        h_aa, h_ab, h_bb = w.sum(1), (w * xs).sum(1), (w * xs * xs).sum(1)
        det = np.maximum(h_aa * h_bb - h_ab**2, 1e-300)
        step_a, step_b = (h_bb * g_a - h_ab * g_b) / det, (h_aa * g_b - h_ab * g_a) / det
        t = np.ones(active.size)
        new_eta = eta[active] + step_a[:, None] + step_b[:, None] * xs
        new_ll = _log_likelihood(new_eta, ys)
        for _ in range(60):  # halve the step of a row whose likelihood would fall (rare: far from its optimum)
            worse = np.flatnonzero(new_ll < ll[active] - 1e-12 * np.abs(ll[active]))
            if worse.size == 0:
                break
            t[worse] /= 2.0
            new_eta[worse] = eta[active[worse]] + (t[worse] * step_a[worse])[:, None] + (t[worse] * step_b[worse])[:, None] * xs[worse]
            new_ll[worse] = _log_likelihood(new_eta[worse], ys[worse])
        a[active] += t * step_a
        b[active] += t * step_b
        eta[active], ll[active] = new_eta, new_ll
        active = active[np.maximum(np.abs(t * step_a), np.abs(t * step_b)) >= tol]
    slopes[rows] = b
    return slopes


def calibration_slope_ci(y_true: np.ndarray, proba: np.ndarray, n_bootstrap: int = 1000, seed: Any = 0) -> list | None:
    """Stratified percentile bootstrap 95% CI of the calibration slope, from the estimator of
    :func:`calibration_intercept_slope`. With near-perfect discrimination on a small test set the slope is poorly
    determined: resamples whose risks separate their outcomes have no finite slope, and a bound they reach is
    None (unbounded). None when the slope itself has no finite estimate."""
    y = np.asarray(y_true).astype(int)
    if y.min(initial=0) == y.max(initial=0):
        return None
    lp = logit(proba)
    if not math.isfinite(_logistic_slopes(lp[None, :], y[None, :].astype(float))[0]):
        return None
    res = _bootstrap(y, n_bootstrap, seed, lambda idx, order: {"slope": _logistic_slopes(lp[idx], y[idx].astype(float))})
    slopes = res["slope"][~np.isnan(res["slope"])]
    if slopes.size < 10:
        return None
    alpha = (1.0 - CONFIDENCE) / 2.0
    # Order statistics of the resamples (no interpolation towards an infinite one).
    bounds = np.quantile(slopes, [alpha, 1.0 - alpha], method="inverted_cdf")
    return [float(v) if math.isfinite(v) else None for v in bounds]


def calibration_curve_bins(y_true: np.ndarray, proba: np.ndarray, n_bins: int = CALIBRATION_BINS) -> list[dict]:
    """Equal-width bins on [0, 1] (scikit-learn's binning); empty bins omitted."""
    y = np.asarray(y_true, dtype=float)
    p = np.asarray(proba, dtype=float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(edges[1:-1], p)
    count = np.bincount(ids, minlength=n_bins)
    sum_p = np.bincount(ids, weights=p, minlength=n_bins)
    sum_y = np.bincount(ids, weights=y, minlength=n_bins)
    return [
        {
            "low": float(edges[i]),
            "high": float(edges[i + 1]),
            "mean_predicted": float(sum_p[i] / count[i]),
            "observed": float(sum_y[i] / count[i]),
            "count": int(count[i]),
        }
        for i in range(n_bins)
        if count[i] > 0
    ]


def smooth_calibration(y_true: np.ndarray, proba: np.ndarray, n_points: int = 50) -> dict | None:
    """Logistic regression of y on a cubic B-spline of logit(p), evaluated between the 1st/99th percentile."""
    y = np.asarray(y_true).astype(int)
    p = np.asarray(proba, dtype=float)
    if y.size < 20 or y.min() == y.max() or np.unique(p).size < 5:
        return None
    lp = logit(p)
    try:
        spline = SplineTransformer(n_knots=4, degree=3, knots="quantile", extrapolation="linear")
        basis = spline.fit_transform(lp[:, None])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            lr = LogisticRegression(C=100.0, max_iter=2000).fit(basis, y)
        lo, hi = np.quantile(p, [0.01, 0.99])
        grid = np.linspace(max(lo, CLIP), min(hi, 1 - CLIP), n_points)
        fitted = lr.predict_proba(spline.transform(logit(grid)[:, None]))[:, 1]
    except ValueError:
        return None
    return {"predicted": grid.tolist(), "observed": fitted.tolist()}


def net_benefit(y_true: np.ndarray, proba: np.ndarray, thresholds: np.ndarray = DECISION_THRESHOLDS) -> np.ndarray:
    """Net benefit TP/n - FP/n * t/(1-t) at each threshold t (rows with p >= t treated)."""
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(proba, dtype=float)
    t = np.asarray(thresholds, dtype=float)
    n = y.size
    pos_sorted = np.sort(p[y])
    neg_sorted = np.sort(p[~y])
    tp = pos_sorted.size - np.searchsorted(pos_sorted, t, side="left")
    fp = neg_sorted.size - np.searchsorted(neg_sorted, t, side="left")
    return tp / n - fp / n * t / (1.0 - t)


def decision_curve(y_true: np.ndarray, proba: np.ndarray, baseline: np.ndarray | None = None) -> dict:
    y = np.asarray(y_true).astype(int)
    prev = float(y.mean())
    t = DECISION_THRESHOLDS
    return {
        "thresholds": t.tolist(),
        "model": net_benefit(y, proba, t).tolist(),
        "treat_all": (prev - (1.0 - prev) * t / (1.0 - t)).tolist(),
        "treat_none": [0.0] * t.size,
        "baseline": None if baseline is None else net_benefit(y, baseline, t).tolist(),
    }


def choose_threshold(y_true: np.ndarray, proba: np.ndarray, rule: str | float, target_sensitivity: float = 0.9) -> float:
    """The threshold a rule gives: "0.5", a number, "youden" or "target_sensitivity" (highest threshold whose
    sensitivity >= target). Data-driven rules fall back to 0.5 when y has one class only."""
    if not isinstance(rule, str):
        return float(rule)
    if rule == "0.5":
        return 0.5
    y = np.asarray(y_true).astype(int)
    if y.size == 0 or y.min() == y.max():
        return 0.5
    fpr, tpr, thr = roc_curve(y, proba, drop_intermediate=False)  # thresholds decreasing
    finite = np.isfinite(thr)
    fpr, tpr, thr = fpr[finite], tpr[finite], thr[finite]
    if rule == "youden":
        return float(thr[int(np.argmax(tpr - fpr))])
    if rule == "target_sensitivity":
        ok = np.flatnonzero(tpr >= target_sensitivity - 1e-12)
        return float(thr[ok[0]]) if ok.size else float(thr[-1])
    raise ValueError(f"unknown threshold rule {rule!r}")


def threshold_row(name: str, threshold: float, y_true: np.ndarray, proba: np.ndarray, chosen_on: str) -> dict:
    y = np.asarray(y_true).astype(int)
    pred = (np.asarray(proba) >= threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, pred, labels=[0, 1]).ravel())
    return {
        "name": name,
        "threshold": float(threshold),
        "chosen_on": chosen_on,
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": float(f1_score(y, pred, labels=[0, 1], zero_division=0)),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def _auc_or_nan(y: np.ndarray, s: np.ndarray) -> float:
    return float(roc_auc_score(y, s)) if 0 < y.sum() < y.size else float("nan")


def _ap_or_nan(y: np.ndarray, s: np.ndarray) -> float:
    return float(average_precision_score(y, s)) if y.sum() > 0 else float("nan")


def _binary(
    y: np.ndarray,
    p: np.ndarray,
    settings: EvaluationSpec,
    classes: list[str],
    seed: Any,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    base: np.ndarray | None = None,
) -> tuple[dict, dict | None, dict | None]:
    """(binary block, baseline block, comparison) for one outcome."""
    n = y.size
    n_pos = int(y.sum())
    prev = n_pos / n if n else float("nan")
    two_classes = 0 < n_pos < n
    auroc = _auc_or_nan(y, p)
    auprc = _ap_or_nan(y, p)
    brier = float(brier_score_loss(y, p, labels=[0, 1]))

    # Bootstrap: stratified, shared by model and baseline (paired).
    auroc_ci = auprc_ci = b_ci = diff_ci = None
    if two_classes:
        sc = _Scores(p)
        bs = _Scores(base) if base is not None else None
        pos_cols = np.sort(y) == 1

        def stat(idx: np.ndarray, order: np.ndarray) -> dict:
            auc, ap = sc.auc_ap(idx, pos_cols)
            out = {"auc": auc, "ap": ap}
            if bs is not None:
                b_auc, _ = bs.auc_ap(idx, pos_cols)
                out["b_auc"] = b_auc
                out["diff"] = auc - b_auc
            return out

        res = _bootstrap(y, settings.n_bootstrap, seed, stat)
        auroc_ci, auprc_ci = percentile_ci(res["auc"]), percentile_ci(res["ap"])
        if bs is not None:
            b_ci, diff_ci = percentile_ci(res["b_auc"]), percentile_ci(res["diff"])

    # Thresholds: data-driven rules chosen on validation when given.
    if val is not None and val[0].size > 0:
        vy, vp, chosen_on = val[0], val[1], "validation"
    else:
        vy, vp, chosen_on = y, p, "test"
    tgt = settings.target_sensitivity
    rules: list[tuple[str, str | float, str]] = [
        ("0.5", "0.5", "fixed"),
        ("youden", "youden", chosen_on),
        ("target_sensitivity", "target_sensitivity", chosen_on),
    ]
    op_rule = settings.operating_threshold
    if not isinstance(op_rule, str):
        rules.append(("fixed", float(op_rule), "fixed"))
    rows = [threshold_row(name, choose_threshold(vy, vp, rule, tgt), y, p, on) for name, rule, on in rules]
    op_name = op_rule if isinstance(op_rule, str) else "fixed"
    op_row = next(r for r in rows if r["name"] == op_name)
    op_value = op_row["threshold"]
    pred = (p >= op_value).astype(int)

    intercept, slope = calibration_intercept_slope(y, p)
    block = {
        "n": n,
        "n_positive": n_pos,
        "prevalence": prev,
        "auroc": auroc,
        "auroc_ci": auroc_ci,
        "auprc": auprc,
        "auprc_ci": auprc_ci,
        "brier": brier,
        "scaled_brier": 1.0 - brier / (prev * (1.0 - prev)) if two_classes else None,
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, labels=[0, 1], average="macro", zero_division=0)),
        "sensitivity": op_row["sensitivity"],
        "specificity": op_row["specificity"],
        "calibration_intercept": intercept,
        "calibration_slope": slope,
        "calibration_slope_ci": calibration_slope_ci(y, p, settings.n_bootstrap, seed),
        "calibration_curve": {
            "bins": calibration_curve_bins(y, p),
            "smooth": smooth_calibration(y, p),
            "method": "10 equal-width bins; smooth = logistic regression on a cubic B-spline of logit(p)",
        },
        "decision_curve": decision_curve(y, p, base),
        "thresholds": rows,
        "operating_threshold": {"name": op_name, "value": op_value, "chosen_on": op_row["chosen_on"]},
        "confusion_matrix": {
            "labels": list(classes),
            "matrix": confusion_matrix(y, pred, labels=[0, 1]).tolist(),
            "threshold": op_value,
        },
    }
    if base is None:
        return block, None, None
    b_thr = choose_threshold(y, base, op_rule if isinstance(op_rule, str) else float(op_rule), tgt)
    b_pred = (base >= b_thr).astype(int)
    b_auc = _auc_or_nan(y, base)
    baseline = {
        "auroc": b_auc,
        "auroc_ci": b_ci,
        "auprc": _ap_or_nan(y, base),
        "macro_f1": float(f1_score(y, b_pred, labels=[0, 1], average="macro", zero_division=0)),
        "brier": float(brier_score_loss(y, base, labels=[0, 1])),
        "threshold": b_thr,
    }
    comparison = {
        "metric": "auroc",
        "model": auroc,
        "baseline": b_auc,
        "difference": auroc - b_auc,
        "ci": diff_ci,
        "auroc_difference": auroc - b_auc,
        "auroc_difference_ci": diff_ci,
    }
    return block, baseline, comparison


# ----------------------------------------------------------------------------------------------------------
# Multiclass
# ----------------------------------------------------------------------------------------------------------


def multiclass_brier(y: np.ndarray, proba: np.ndarray) -> float:
    """Mean over rows of the sum over classes of (one-hot - p)^2 (range 0..2)."""
    onehot = np.eye(proba.shape[1])[y]
    return float(np.mean(np.sum((onehot - proba) ** 2, axis=1)))


def _macro_f1_from_codes(codes: np.ndarray, k: int) -> np.ndarray:
    """codes (b, n) = y * k + pred -> macro F1 per resample over classes present in y or pred."""
    cm = _bucket_counts(codes, k * k).reshape(-1, k, k)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    den = cm.sum(axis=2) + cm.sum(axis=1)  # support + predicted = 2tp + fp + fn
    f1 = np.divide(2 * tp, den, out=np.zeros_like(tp), where=den > 0)
    present = den > 0
    return f1.sum(axis=1) / np.maximum(present.sum(axis=1), 1)


def _multiclass(inp: EvaluationInput, y: np.ndarray, P: np.ndarray, B: np.ndarray | None, s: EvaluationSpec) -> dict:
    k = len(inp.classes)
    pred = P.argmax(axis=1)
    present = [c for c in range(k) if 0 < np.sum(y == c) < y.size]
    per_auc = [_auc_or_nan((y == c).astype(int), P[:, c]) for c in range(k)]
    per_ap = [_ap_or_nan((y == c).astype(int), P[:, c]) for c in range(k)]
    auroc = float(np.mean([per_auc[c] for c in present])) if present else float("nan")
    auprc = float(np.mean([per_ap[c] for c in present])) if present else float("nan")
    macro_f1 = float(f1_score(y, pred, average="macro", zero_division=0))

    scores = [_Scores(P[:, c]) for c in range(k)]
    b_scores = [_Scores(B[:, c]) for c in range(k)] if B is not None else None
    b_pred = B.argmax(axis=1) if B is not None else None

    def stat(idx: np.ndarray, order: np.ndarray) -> dict:
        y_cols = y[order]
        out: dict[str, np.ndarray] = {}
        aucs, aps = [], []
        for c in range(k):
            a, ap = scores[c].auc_ap(idx, y_cols == c)
            aucs.append(a)
            aps.append(ap)
        out["auc_c"] = np.stack(aucs, axis=1)
        out["ap"] = np.nanmean(np.stack(aps, axis=1)[:, present], axis=1) if present else np.full(idx.shape[0], np.nan)
        out["auc"] = np.nanmean(out["auc_c"][:, present], axis=1) if present else np.full(idx.shape[0], np.nan)
        f1 = _macro_f1_from_codes(y_cols[None, :] * k + pred[idx], k)
        if b_scores is not None:
            b_auc = np.stack([b_scores[c].auc_ap(idx, y_cols == c)[0] for c in range(k)], axis=1)
            out["b_auc"] = np.nanmean(b_auc[:, present], axis=1) if present else np.full(idx.shape[0], np.nan)
            out["auc_diff"] = out["auc"] - out["b_auc"]
            out["f1_diff"] = f1 - _macro_f1_from_codes(y_cols[None, :] * k + b_pred[idx], k)
        return out

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of all-NaN slices
        res = _bootstrap(y, s.n_bootstrap, s.seed, stat)
    prec, rec, f1s, sup = precision_recall_fscore_support(y, pred, labels=list(range(k)), zero_division=0)
    per_class = [
        {
            "class": inp.classes[c],
            "precision": prec[c],
            "recall": rec[c],
            "f1": f1s[c],
            "support": int(sup[c]),
            "auroc": per_auc[c],
            "auroc_ci": percentile_ci(res["auc_c"][:, c]),
            "auprc": per_ap[c],
        }
        for c in range(k)
    ]
    out = {
        "auroc": auroc,
        "auroc_ci": percentile_ci(res["auc"]),
        "auprc": auprc,
        "auprc_ci": percentile_ci(res["ap"]),
        "brier": multiclass_brier(y, P),
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": macro_f1,
        "weighted_f1": float(f1_score(y, pred, average="weighted", zero_division=0)),
        "per_class": per_class,
        "confusion_matrix": {
            "labels": list(inp.classes),
            "matrix": confusion_matrix(y, pred, labels=list(range(k))).tolist(),
            "threshold": None,
        },
        "baseline": None,
        "comparison": None,
    }
    if B is not None:
        b_auc = [_auc_or_nan((y == c).astype(int), B[:, c]) for c in present]
        b_ap = [_ap_or_nan((y == c).astype(int), B[:, c]) for c in present]
        b_auroc = float(np.mean(b_auc)) if present else float("nan")
        b_f1 = float(f1_score(y, b_pred, average="macro", zero_division=0))
        out["baseline"] = {
            "name": inp.baseline_name,
            "auroc": b_auroc,
            "auroc_ci": percentile_ci(res["b_auc"]),
            "auprc": float(np.mean(b_ap)) if present else None,
            "macro_f1": b_f1,
            "brier": multiclass_brier(y, B),
        }
        out["comparison"] = {
            "metric": "macro_f1",
            "model": macro_f1,
            "baseline": b_f1,
            "difference": macro_f1 - b_f1,
            "ci": percentile_ci(res["f1_diff"]),
            "auroc_difference": auroc - b_auroc,
            "auroc_difference_ci": percentile_ci(res["auc_diff"]),
        }
    return out


# ----------------------------------------------------------------------------------------------------------
# Multilabel
# ----------------------------------------------------------------------------------------------------------


def _multilabel(inp: EvaluationInput, Y: np.ndarray, P: np.ndarray, B: np.ndarray | None, s: EvaluationSpec) -> dict:
    n, k = Y.shape
    per_label, baselines = [], []
    preds = np.zeros_like(Y)
    b_preds = np.zeros_like(Y)
    val_Y = None if inp.val_y_true is None else np.asarray(inp.val_y_true).astype(int)
    val_P = None if inp.val_proba is None else np.asarray(inp.val_proba, dtype=float)
    for j, label in enumerate(inp.classes):
        val = (val_Y[:, j], val_P[:, j]) if val_Y is not None and val_P is not None else None
        block, base, _ = _binary(
            Y[:, j], P[:, j], s, ["absent", "present"], [s.seed, j], val, None if B is None else B[:, j]
        )
        preds[:, j] = P[:, j] >= block["operating_threshold"]["value"]
        row = {"label": label, **block}
        if base is not None:
            b_preds[:, j] = B[:, j] >= base["threshold"]
            row["baseline_auroc"] = base["auroc"]
            baselines.append(base)
        per_label.append(row)
    present = [j for j in range(k) if 0 < Y[:, j].sum() < n]
    auroc = float(np.mean([per_label[j]["auroc"] for j in present])) if present else float("nan")
    auprc = float(np.mean([per_label[j]["auprc"] for j in present])) if present else float("nan")

    # Row bootstrap (unstratified: labels co-occur), paired for model and baseline.
    sc = [_Scores(P[:, j]) for j in present]
    bsc = [_Scores(B[:, j]) for j in present] if B is not None else None

    def stat(idx: np.ndarray, order: np.ndarray) -> dict:
        aucs, aps, b_aucs = [], [], []
        for i, j in enumerate(present):
            a, ap = sc[i].auc_ap(idx, None, Y[:, j])
            aucs.append(a)
            aps.append(ap)
            if bsc is not None:
                b_aucs.append(bsc[i].auc_ap(idx, None, Y[:, j])[0])
        out = {"auc": np.nanmean(np.stack(aucs, 1), 1), "ap": np.nanmean(np.stack(aps, 1), 1)}
        if bsc is not None:
            out["b_auc"] = np.nanmean(np.stack(b_aucs, 1), 1)
            out["diff"] = out["auc"] - out["b_auc"]
        return out

    res: dict = {}
    if present:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = _bootstrap(np.zeros(n, dtype=int), s.n_bootstrap, [s.seed, k], stat)
    cm = sum(np.asarray(r["confusion_matrix"]["matrix"]) for r in per_label)
    macro_f1 = float(f1_score(Y, preds, average="macro", zero_division=0))
    out = {
        "auroc": auroc,
        "auroc_ci": percentile_ci(res["auc"]) if res else None,
        "auprc": auprc,
        "auprc_ci": percentile_ci(res["ap"]) if res else None,
        "brier": float(np.mean([r["brier"] for r in per_label])),
        "accuracy": float(accuracy_score(Y, preds)),
        "macro_f1": macro_f1,
        "per_label": per_label,
        "confusion_matrix": {"labels": ["absent", "present"], "matrix": cm.tolist(), "threshold": None},
        "baseline": None,
        "comparison": None,
    }
    if B is not None:
        b_auroc = float(np.mean([baselines[j]["auroc"] for j in present])) if present else float("nan")
        out["baseline"] = {
            "name": inp.baseline_name,
            "auroc": b_auroc,
            "auroc_ci": percentile_ci(res["b_auc"]) if res else None,
            "auprc": float(np.mean([baselines[j]["auprc"] for j in present])) if present else None,
            "macro_f1": float(f1_score(Y, b_preds, average="macro", zero_division=0)),
            "brier": float(np.mean([b["brier"] for b in baselines])),
        }
        diff_ci = percentile_ci(res["diff"]) if res else None
        out["comparison"] = {
            "metric": "macro_auroc",
            "model": auroc,
            "baseline": b_auroc,
            "difference": auroc - b_auroc,
            "ci": diff_ci,
            "auroc_difference": auroc - b_auroc,
            "auroc_difference_ci": diff_ci,
        }
    return out


# ----------------------------------------------------------------------------------------------------------
# Subgroups
# ----------------------------------------------------------------------------------------------------------


def subgroup_values(values: np.ndarray) -> np.ndarray:
    """Values as strings; None, NaN and empty strings become "missing"."""
    out = []
    for v in np.asarray(values, dtype=object).ravel():
        if v is None or (isinstance(v, (float, np.floating)) and math.isnan(v)) or (isinstance(v, str) and not v.strip()):
            out.append(MISSING)
        else:
            out.append(str(v))
    return np.asarray(out, dtype=object)


def _subgroups(inp: EvaluationInput, kind: str, y: np.ndarray, P: np.ndarray, overall: dict, s: EvaluationSpec) -> dict:
    result: dict[str, list[dict]] = {}
    for ci, (column, raw) in enumerate(sorted(inp.subgroups.items())):
        vals = subgroup_values(raw)
        if vals.size != y.shape[0]:
            raise ValueError(f"subgroup column {column!r} has {vals.size} values for {y.shape[0]} test rows")
        rows = []
        for vi, value in enumerate(sorted(set(vals.tolist()))):
            mask = vals == value
            n = int(mask.sum())
            row: dict[str, Any] = {"value": value, "n": n}
            too_few = n < s.min_subgroup_n
            if kind == "binary":
                row.update(_binary_subgroup(y[mask], P[mask], overall, s, [s.seed, ci, vi], too_few))
            elif kind == "multiclass":
                pred = P[mask].argmax(axis=1)
                row["accuracy"] = None if too_few else float(accuracy_score(y[mask], pred))
                row["macro_f1"] = None if too_few else float(f1_score(y[mask], pred, average="macro", zero_division=0))
                row["status"] = TOO_FEW if too_few else "ok"
                if too_few:
                    row["reason"] = f"n < {s.min_subgroup_n}"
            else:
                ys, ps = y[mask], P[mask]
                aucs = [_auc_or_nan(ys[:, j], ps[:, j]) for j in range(ys.shape[1]) if 0 < ys[:, j].sum() < n]
                ok = not too_few and bool(aucs)
                row["auroc"] = float(np.mean(aucs)) if ok else None
                row["status"] = "ok" if ok else TOO_FEW
                if not ok:
                    row["reason"] = f"n < {s.min_subgroup_n}" if too_few else "no label with both outcomes"
            rows.append(row)
        result[column] = rows
    return result


def _binary_subgroup(y: np.ndarray, p: np.ndarray, overall: dict, s: EvaluationSpec, seed: Any, too_few: bool) -> dict:
    n = y.size
    n_pos = int(y.sum())
    row: dict[str, Any] = {"n_positive": n_pos, "prevalence": n_pos / n if n else None}
    one_class = n_pos == 0 or n_pos == n
    if too_few or one_class:
        row.update(
            auroc=None,
            auroc_ci=None,
            auroc_difference=None,
            calibration_in_the_large=None,
            sensitivity=None,
            specificity=None,
            flag_below=False,
            status=TOO_FEW,
            reason=f"n < {s.min_subgroup_n}" if too_few else "only one outcome present",
        )
        return row
    auc = float(roc_auc_score(y, p))
    ci = bootstrap_auroc_ci(y, p, s.n_bootstrap, seed)
    thr = overall["operating_threshold"]["value"]
    t = threshold_row("operating", thr, y, p, "fixed")
    overall_auc = overall["auroc"]
    row.update(
        auroc=auc,
        auroc_ci=ci,
        auroc_difference=auc - overall_auc if overall_auc is not None and math.isfinite(overall_auc) else None,
        calibration_in_the_large=float(y.mean() - p.mean()),
        sensitivity=t["sensitivity"],
        specificity=t["specificity"],
        flag_below=bool(ci is not None and overall_auc is not None and ci[1] < overall_auc),
        status="ok",
    )
    return row


# ----------------------------------------------------------------------------------------------------------
# Shift
# ----------------------------------------------------------------------------------------------------------


def standardized_mean_differences(dev: dict[str, np.ndarray], test: dict[str, np.ndarray]) -> list[dict]:
    """SMD = (test mean - dev mean) / sqrt((dev var + test var) / 2) per numeric feature present in both.

    NaNs are ignored; non-numeric columns are skipped. ``flag`` is true when |smd| > 0.1 (or when both sds
    are 0 and the means differ: smd is then None). Rows sorted by |smd|, largest first.
    """
    rows = []
    for name in dev:
        if name not in test:
            continue
        try:
            a = np.asarray(dev[name], dtype=float).ravel()
            b = np.asarray(test[name], dtype=float).ravel()
        except (TypeError, ValueError):
            continue
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        if a.size == 0 or b.size == 0:
            continue
        ma, mb = float(a.mean()), float(b.mean())
        sd = math.sqrt((float(a.var(ddof=1)) if a.size > 1 else 0.0) / 2 + (float(b.var(ddof=1)) if b.size > 1 else 0.0) / 2)
        if sd > 0:
            smd: float | None = (mb - ma) / sd
            flag = abs(smd) > 0.1
        else:
            smd = 0.0 if ma == mb else None
            flag = ma != mb
        rows.append({"feature": str(name), "dev_mean": ma, "test_mean": mb, "smd": smd, "flag": bool(flag),
                     "n_dev": int(a.size), "n_test": int(b.size)})
    rows.sort(key=lambda r: (-(math.inf if r["smd"] is None else abs(r["smd"])), r["feature"]))
    return rows


# ----------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------


def _check(inp: EvaluationInput) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    k = len(inp.classes)
    y = np.asarray(inp.y_true)
    P = np.asarray(inp.proba, dtype=float)
    B = None if inp.baseline_proba is None else np.asarray(inp.baseline_proba, dtype=float)
    if inp.kind not in ("binary", "multiclass", "multilabel"):
        raise ValueError(f"kind must be binary, multiclass or multilabel, got {inp.kind!r}")
    if y.shape[0] == 0:
        raise ValueError("no test rows to evaluate")
    if inp.kind == "binary":
        if k != 2:
            raise ValueError(f"binary tasks need classes [negative, positive], got {inp.classes}")
        if y.ndim != 1 or P.shape != y.shape:
            raise ValueError(f"binary: y_true and proba must both be (n,), got {y.shape} and {P.shape}")
    elif inp.kind == "multiclass":
        if y.ndim != 1 or P.shape != (y.shape[0], k):
            raise ValueError(f"multiclass: y_true (n,) and proba (n, {k}) expected, got {y.shape} and {P.shape}")
        if not np.allclose(P.sum(axis=1), 1.0, atol=1e-3):
            raise ValueError("multiclass: proba rows must sum to 1")
    else:
        if y.ndim != 2 or y.shape[1] != k or P.shape != y.shape:
            raise ValueError(f"multilabel: y_true and proba must both be (n, {k}), got {y.shape} and {P.shape}")
    if not np.all(np.isfinite(P)) or P.min() < 0 or P.max() > 1:
        raise ValueError("proba must be finite probabilities in [0, 1]")
    if inp.kind == "multiclass":
        if not np.all((y >= 0) & (y < k) & (y == np.round(y))):
            raise ValueError(f"multiclass: y_true must be class indices 0..{k - 1}")
    elif not np.all(np.isin(y, [0, 1])):
        raise ValueError("y_true must be 0/1")
    if B is not None:
        if B.shape != P.shape:
            raise ValueError(f"baseline_proba must have the shape of proba {P.shape}, got {B.shape}")
        if not np.all(np.isfinite(B)) or B.min() < 0 or B.max() > 1:
            raise ValueError("baseline_proba must be finite probabilities in [0, 1]")
    if (inp.val_y_true is None) != (inp.val_proba is None):
        raise ValueError("give both val_y_true and val_proba, or neither")
    if inp.val_proba is not None and np.asarray(inp.val_proba).shape[1:] != P.shape[1:]:
        raise ValueError("val_proba must have the per-row shape of proba")
    return y.astype(int), P, B


def evaluate(inp: EvaluationInput) -> dict:
    """All metrics for one model on its test set; the content of metrics.json (see the module docstring)."""
    s = inp.settings if isinstance(inp.settings, EvaluationSpec) else EvaluationSpec.model_validate(inp.settings)
    y, P, B = _check(inp)
    has_val = inp.val_y_true is not None and np.asarray(inp.val_y_true).shape[0] > 0
    head: dict[str, Any] = {
        "task": inp.task,
        "model_version": inp.model_version,
        "model_name": inp.model_name,
        "kind": inp.kind,
        "classes": list(inp.classes),
        "n_train": int(inp.n_train),
        "n_val": int(inp.n_val),
        "n_test": int(inp.n_test or y.shape[0]),
    }
    if inp.kind == "binary":
        val = (np.asarray(inp.val_y_true).astype(int), np.asarray(inp.val_proba, dtype=float)) if has_val else None
        block, base, comp = _binary(y, P, s, inp.classes, s.seed, val, B)
        block.pop("n")
        if base is not None:
            base = {"name": inp.baseline_name, **base}
        body = {**block, "baseline": base, "comparison": comp}
    elif inp.kind == "multiclass":
        body = _multiclass(inp, y, P, B, s)
    else:
        body = _multilabel(inp, y, P, B, s)
    settings = {
        **s.model_dump(),
        "confidence": CONFIDENCE,
        "ci_method": "stratified percentile bootstrap" if inp.kind != "multilabel" else
        "percentile bootstrap (per label stratified; macro figures resample rows)",
        "thresholds_chosen_on": "validation" if has_val and inp.kind != "multiclass" else
        ("argmax" if inp.kind == "multiclass" else "test"),
    }
    metrics = {
        **head,
        **body,
        "flow": dict(inp.flow),
        "missing_data": list(inp.missing_data),
        "shift": list(inp.shift),
        "subgroups": _subgroups(inp, inp.kind, y, P, body, s),
        "settings": settings,
    }
    return to_jsonable(metrics)
