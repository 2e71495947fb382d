"""Calibration of binary risks: intercept and slope (with the slope's CI), binned and smoothed curves."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from scipy import optimize, special
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import SplineTransformer

from meddiag_pipelines.evaluation.metrics.bootstrap import CONFIDENCE, _bootstrap
from meddiag_pipelines.probability import CLIP, logit

CALIBRATION_BINS = 10


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
            new_eta[worse] = (
                eta[active[worse]]
                + (t[worse] * step_a[worse])[:, None]
                + (t[worse] * step_b[worse])[:, None] * xs[worse]
            )
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
    res = _bootstrap(
        y, n_bootstrap, seed, lambda idx, order: {"slope": _logistic_slopes(lp[idx], y[idx].astype(float))}
    )
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
