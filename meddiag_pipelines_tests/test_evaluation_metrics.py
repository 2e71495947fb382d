"""Metrics of the shared evaluator, checked against scikit-learn and hand computations."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
from scipy import special, stats
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from meddiag_pipelines.evaluation import EvaluationInput, evaluate, standardized_mean_differences
from meddiag_pipelines.evaluation import metrics as M
from meddiag_pipelines.evaluation.metrics.bootstrap import _resamples, _Scores
from meddiag_pipelines.evaluation.metrics.calibration import _logistic_slopes
from meddiag_pipelines.evaluation.metrics.multiclass import _macro_f1_from_codes
from meddiag_pipelines.specs import EvaluationSpec
from meddiag_pipelines_tests.conftest import run_cli

FAST = EvaluationSpec(n_bootstrap=200)


def calibrated(n: int, seed: int, mean: float = -1.0, sd: float = 1.5):
    """p = expit(N(mean, sd)), y ~ Bernoulli(p): calibrated by construction."""
    rng = np.random.default_rng(seed)
    lp = rng.normal(mean, sd, n)
    p = special.expit(lp)
    y = (rng.random(n) < p).astype(int)
    return y, p, lp


def binary_input(n: int = 1500, seed: int = 0, **kw) -> EvaluationInput:
    y, p, _ = calibrated(n, seed)
    args = dict(
        task="t",
        model_version="v1",
        model_name="xgboost",
        kind="binary",
        classes=["neg", "pos"],
        y_true=y,
        proba=p,
        settings=FAST,
        n_test=n,
    )
    args.update(kw)
    return EvaluationInput(**args)


# --------------------------------------------------------------------------------------------------------
# Rank AUROC, vectorised bootstrap AUROC / AP
# --------------------------------------------------------------------------------------------------------


def test_resampled_auroc_hand_example_and_one_class():
    # positives 0.8, 0.4; negatives 0.4, 0.1: pairs (0.8>0.4)=1, (0.8>0.1)=1, (0.4=0.4)=0.5, (0.4>0.1)=1 -> 3.5/4
    auc, _ = _Scores(np.array([0.8, 0.4, 0.4, 0.1])).auc_ap(np.arange(4)[None, :], None, np.array([1, 1, 0, 0]))
    assert auc.tolist() == [pytest.approx(0.875)]
    one_class, _ = _Scores(np.array([0.2, 0.3, 0.4])).auc_ap(np.arange(3)[None, :], None, np.array([1, 1, 1]))
    assert np.isnan(one_class).tolist() == [True]


def test_vectorised_auc_and_ap_match_sklearn_on_resamples():
    rng = np.random.default_rng(2)
    n = 700
    y = rng.integers(0, 2, n)
    s = np.round(rng.normal(y, 1.0), 1)  # ties
    idx = rng.integers(0, n, size=(6, n))
    auc, ap = _Scores(s).auc_ap(idx, None, y)
    for i in range(idx.shape[0]):
        yy, ss = y[idx[i]], s[idx[i]]
        assert auc[i] == pytest.approx(roc_auc_score(yy, ss), abs=1e-12)
        assert ap[i] == pytest.approx(average_precision_score(yy, ss), abs=1e-12)


def test_stratified_resamples_keep_class_counts_and_use_the_seed():
    y = np.array([0] * 30 + [1] * 10)
    batches = list(_resamples(y, 5, np.random.default_rng(0)))
    idx, order = batches[0]
    assert idx.shape == (5, 40)
    assert np.all(y[idx] == y[order][None, :])  # every column keeps its stratum
    again = list(_resamples(y, 5, np.random.default_rng(0)))[0][0]
    assert np.array_equal(idx, again)


def test_bootstrap_ci_covers_true_auroc_in_simulation():
    # scores N(0,1) for negatives and N(d,1) for positives: true AUROC = Phi(d / sqrt 2)
    d = 1.0
    true_auc = stats.norm.cdf(d / math.sqrt(2))
    rng = np.random.default_rng(3)
    covered = 0
    reps = 40
    for r in range(reps):
        y = np.r_[np.zeros(150, int), np.ones(150, int)]
        s = rng.normal(d * y, 1.0)
        lo, hi = M.bootstrap_auroc_ci(y, s, n_bootstrap=200, seed=r)
        assert lo < roc_auc_score(y, s) < hi
        covered += lo <= true_auc <= hi
    assert covered / reps >= 0.85


def test_bootstrap_auroc_ci_covers_the_auroc_at_large_n():
    """The vectorised bootstrap at 50,000 rows (its speed is a bench figure, not a test)."""
    rng = np.random.default_rng(4)
    n = 50_000
    y = rng.integers(0, 2, n)
    s = rng.normal(y * 0.5, 1.0)
    ci = M.bootstrap_auroc_ci(y, s, n_bootstrap=1000, seed=0)
    auc = roc_auc_score(y, s)
    assert ci[0] < auc < ci[1] and ci[1] - ci[0] < 0.03


# --------------------------------------------------------------------------------------------------------
# Calibration, decision curve, thresholds
# --------------------------------------------------------------------------------------------------------


def test_calibration_slope_and_intercept_on_simulated_data():
    y, p, lp = calibrated(20_000, 5)
    a, b = M.calibration_intercept_slope(y, p)
    assert b == pytest.approx(1.0, abs=0.08)
    assert a == pytest.approx(0.0, abs=0.08)
    # over-confident (pushed toward 0/1): slope well below 1
    _, b_over = M.calibration_intercept_slope(y, special.expit(2.0 * lp))
    assert b_over < 0.65
    # too modest: slope above 1
    _, b_under = M.calibration_intercept_slope(y, special.expit(0.5 * lp))
    assert b_under > 1.6
    # risks over-estimated on average: intercept (slope fixed at 1) about -1
    shifted = special.expit(lp + 1.0)
    a_shift, _ = M.calibration_intercept_slope(y, shifted)
    assert a_shift == pytest.approx(-1.0, abs=0.1)
    # the intercept solves the offset model's score equation: mean expit(a + logit p) == mean y
    assert np.mean(special.expit(a_shift + special.logit(shifted))) == pytest.approx(y.mean(), abs=1e-6)
    assert M.calibration_intercept_slope(np.ones(10), np.full(10, 0.3)) == (None, None)


def test_bootstrap_slopes_equal_unpenalised_fits_and_separated_resamples_have_none():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    x = rng.normal(size=(8, 400)) * np.array([0.5, 1, 2, 3, 1, 1, 1, 1])[:, None]
    y = (rng.random((8, 400)) < special.expit(0.3 + 0.8 * x)).astype(float)
    y[5] = (x[5] > 0).astype(float)  # perfectly separated: no finite maximum
    y[6] = (x[6] < 0).astype(float)  # separated downwards
    x[7] = 0.5  # constant predictions: the slope is not identified
    slopes = _logistic_slopes(x, y)
    for row in range(5):
        fit = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000).fit(x[row, :, None], y[row])
        assert slopes[row] == pytest.approx(fit.coef_[0, 0], rel=1e-5)
    assert slopes[5] == np.inf and slopes[6] == -np.inf and np.isnan(slopes[7])


def near_separable(n: int, swapped: int, seed: int):
    """Risks that rank every positive above every negative but for ``swapped`` pairs exchanged across the gap."""
    rng = np.random.default_rng(seed)
    p = np.r_[rng.uniform(0.05, 0.45, n), rng.uniform(0.55, 0.95, n)]
    y = np.r_[np.zeros(n), np.ones(n)].astype(int)
    if swapped:
        y[:swapped], y[-swapped:] = 1, 0
    return y, p


@pytest.mark.parametrize("case", ["ordinary", "near_separable", "one_swap", "separable"])
def test_the_calibration_slope_lies_within_its_own_interval(case):
    """Issue 24: a slope of 263.2 was reported with a 95% CI of 59.0 to 61.0 (point and interval from two
    estimators that both gave up on a separated test set). Now one estimator gives both; a separated test set has
    no slope (None, not a number), and an interval bound that separated resamples reach is None (unbounded)."""
    y, p = {
        "ordinary": lambda: calibrated(400, 11)[:2],
        "near_separable": lambda: near_separable(40, 3, 12),
        "one_swap": lambda: near_separable(40, 1, 13),
        "separable": lambda: near_separable(40, 0, 14),
    }[case]()
    m = evaluate(binary_input(y_true=y, proba=p, n_test=y.size))
    slope, ci = m["calibration_slope"], m["calibration_slope_ci"]
    if case == "separable":
        assert slope is None and ci is None
        return
    low, high = (-np.inf if ci[0] is None else ci[0]), (np.inf if ci[1] is None else ci[1])
    assert low <= slope <= high, (slope, ci)
    if case == "ordinary":
        assert ci[1] is not None and ci[1] - ci[0] < 1.5
    if case == "one_swap":
        assert ci[1] is None  # most resamples separate: the upper bound is open


def test_calibration_bins_match_sklearn_and_smooth_curve_follows_diagonal():
    y, p, _ = calibrated(20_000, 6)
    bins = M.calibration_curve_bins(y, p)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    assert np.allclose([b["observed"] for b in bins], prob_true)
    assert np.allclose([b["mean_predicted"] for b in bins], prob_pred)
    assert sum(b["count"] for b in bins) == y.size
    smooth = M.smooth_calibration(y, p)
    dev = np.abs(np.array(smooth["observed"]) - np.array(smooth["predicted"]))
    assert dev.max() < 0.06
    over = M.smooth_calibration(y, special.expit(3 * special.logit(p)))
    assert np.abs(np.array(over["observed"]) - np.array(over["predicted"])).max() > 0.15


def test_net_benefit_by_hand():
    y = np.array([1, 1, 0, 0, 1])
    p = np.array([0.9, 0.4, 0.35, 0.1, 0.6])
    nb = M.net_benefit(y, p, np.array([0.3, 0.4, 0.95]))
    assert nb[0] == pytest.approx(3 / 5 - 1 / 5 * 0.3 / 0.7)  # treated: 0.9, 0.4, 0.35, 0.6 -> TP 3, FP 1
    assert nb[1] == pytest.approx(3 / 5)  # p >= 0.4 treated: TP 3, FP 0
    assert nb[2] == pytest.approx(0.0)
    dc = M.decision_curve(y, p)
    t = np.array(dc["thresholds"])
    assert t[0] == 0.01 and t[-1] == 0.99 and t.size == 99
    i = int(np.flatnonzero(np.isclose(t, 0.25))[0])
    assert dc["treat_all"][i] == pytest.approx(0.6 - 0.4 * 0.25 / 0.75)
    assert dc["treat_none"][i] == 0.0 and dc["baseline"] is None


def test_threshold_rules():
    y, p, _ = calibrated(3000, 7)
    for target in (0.8, 0.9, 0.95):
        t = M.choose_threshold(y, p, "target_sensitivity", target)
        row = M.threshold_row("target_sensitivity", t, y, p, "test")
        assert row["sensitivity"] >= target
        higher = np.unique(p)[np.unique(p) > t]  # the next threshold up no longer reaches the target
        assert (p[y == 1] >= higher[0]).mean() < target
    t = M.choose_threshold(y, p, "youden")
    uniq = np.unique(p)
    j = [(p[y == 1] >= u).mean() + (p[y == 0] < u).mean() - 1 for u in uniq]
    assert (p[y == 1] >= t).mean() + (p[y == 0] < t).mean() - 1 == pytest.approx(max(j))
    assert M.choose_threshold(y, p, "0.5") == 0.5
    assert M.choose_threshold(y, p, 0.37) == 0.37
    assert M.choose_threshold(np.zeros(5), np.linspace(0, 1, 5), "youden") == 0.5


def test_threshold_row_matches_sklearn():
    y, p, _ = calibrated(800, 8)
    r = M.threshold_row("x", 0.3, y, p, "test")
    pred = (p >= 0.3).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred).ravel()
    assert (r["tp"], r["fp"], r["tn"], r["fn"]) == (tp, fp, tn, fn)
    prec, rec, f1, _ = precision_recall_fscore_support(y, pred, average="binary")
    assert r["sensitivity"] == pytest.approx(rec) and r["ppv"] == pytest.approx(prec) and r["f1"] == pytest.approx(f1)
    assert r["specificity"] == pytest.approx(tn / (tn + fp)) and r["npv"] == pytest.approx(tn / (tn + fn))


# --------------------------------------------------------------------------------------------------------
# evaluate(): binary
# --------------------------------------------------------------------------------------------------------


ALWAYS = {
    "task",
    "model_version",
    "model_name",
    "kind",
    "classes",
    "n_train",
    "n_val",
    "n_test",
    "auroc",
    "auroc_ci",
    "auprc",
    "auprc_ci",
    "brier",
    "accuracy",
    "macro_f1",
    "baseline",
    "comparison",
    "confusion_matrix",
    "flow",
    "missing_data",
    "shift",
    "subgroups",
    "settings",
}
BINARY = {
    "scaled_brier",
    "calibration_intercept",
    "calibration_slope",
    "calibration_curve",
    "decision_curve",
    "thresholds",
    "operating_threshold",
}


def test_binary_metrics_match_sklearn():
    inp = binary_input()
    m = evaluate(inp)
    y, p = inp.y_true, inp.proba
    assert ALWAYS | BINARY <= set(m)
    json.dumps(m, allow_nan=False)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p))
    assert m["auprc"] == pytest.approx(average_precision_score(y, p))
    assert m["brier"] == pytest.approx(brier_score_loss(y, p))
    prev = y.mean()
    assert m["scaled_brier"] == pytest.approx(1 - brier_score_loss(y, p) / (prev * (1 - prev)))
    assert m["auroc_ci"][0] < m["auroc"] < m["auroc_ci"][1]
    assert m["auprc_ci"][0] < m["auprc"] < m["auprc_ci"][1]
    op = m["operating_threshold"]
    assert op["name"] == "youden" and op["chosen_on"] == "test"
    pred = (p >= op["value"]).astype(int)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["confusion_matrix"]["labels"] == ["neg", "pos"]
    assert m["confusion_matrix"]["matrix"] == confusion_matrix(y, pred).tolist()
    assert [r["name"] for r in m["thresholds"]] == ["0.5", "youden", "target_sensitivity"]
    target = next(r for r in m["thresholds"] if r["name"] == "target_sensitivity")
    assert target["sensitivity"] >= FAST.target_sensitivity  # chosen on the same (test) data here
    assert m["calibration_slope"] == pytest.approx(1.0, abs=0.25)
    assert m["baseline"] is None and m["comparison"] is None
    assert m["settings"]["n_bootstrap"] == 200 and m["settings"]["seed"] == FAST.seed


def test_thresholds_chosen_on_validation_are_applied_to_test():
    vy, vp, _ = calibrated(1000, 9)
    settings = EvaluationSpec(n_bootstrap=200, operating_threshold="target_sensitivity", target_sensitivity=0.85)
    m = evaluate(binary_input(settings=settings, val_y_true=vy, val_proba=vp))
    t_val = M.choose_threshold(vy, vp, "target_sensitivity", 0.85)
    op = m["operating_threshold"]
    assert op == {"name": "target_sensitivity", "value": pytest.approx(t_val), "chosen_on": "validation"}
    assert (vp[vy == 1] >= op["value"]).mean() >= 0.85  # met on the data it was chosen on
    assert m["confusion_matrix"]["threshold"] == pytest.approx(t_val)
    assert m["settings"]["thresholds_chosen_on"] == "validation"


def test_fixed_numeric_operating_threshold():
    m = evaluate(binary_input(settings=EvaluationSpec(n_bootstrap=200, operating_threshold=0.2)))
    assert m["operating_threshold"]["name"] == "fixed" and m["operating_threshold"]["value"] == 0.2
    fixed = next(r for r in m["thresholds"] if r["name"] == "fixed")
    assert m["sensitivity"] == fixed["sensitivity"]


def test_baseline_and_paired_comparison():
    inp = binary_input()
    rng = np.random.default_rng(10)
    base = np.clip(inp.proba + rng.normal(0, 0.15, inp.proba.size), 0, 1)
    m = evaluate(binary_input(baseline_name="logreg", baseline_proba=base))
    assert m["baseline"]["name"] == "logreg"
    assert m["baseline"]["auroc"] == pytest.approx(roc_auc_score(inp.y_true, base))
    assert m["baseline"]["brier"] == pytest.approx(brier_score_loss(inp.y_true, base))
    c = m["comparison"]
    assert c["metric"] == "auroc"
    assert c["difference"] == pytest.approx(m["auroc"] - m["baseline"]["auroc"])
    assert c["ci"][0] < c["difference"] < c["ci"][1]
    assert c["auroc_difference_ci"] == c["ci"]
    assert m["decision_curve"]["baseline"] == pytest.approx(M.net_benefit(inp.y_true, base).tolist())
    # paired: a baseline identical to the model differs by exactly 0 in every resample
    same = evaluate(binary_input(baseline_name="same", baseline_proba=inp.proba.copy()))
    assert same["comparison"]["ci"] == [0.0, 0.0]


def test_bootstrap_is_seeded_and_default_has_1000_resamples():
    assert EvaluationSpec().n_bootstrap >= 1000
    a = evaluate(binary_input(n=400, settings=EvaluationSpec()))
    b = evaluate(binary_input(n=400, settings=EvaluationSpec()))
    c = evaluate(binary_input(n=400, settings=EvaluationSpec(seed=7)))
    assert a["settings"]["n_bootstrap"] == 1000
    assert a["auroc_ci"] == b["auroc_ci"]
    assert a["auroc_ci"] != c["auroc_ci"]


def test_one_class_test_set_gives_none_not_nan():
    n = 200
    m = evaluate(binary_input(n=n, y_true=np.zeros(n, int)))
    assert m["auroc"] is None and m["auroc_ci"] is None and m["calibration_slope"] is None
    json.dumps(m, allow_nan=False)


# --------------------------------------------------------------------------------------------------------
# Subgroups
# --------------------------------------------------------------------------------------------------------


def test_binary_subgroups_flags_and_too_few():
    rng = np.random.default_rng(11)
    n_good, n_bad = 1200, 400
    y = rng.integers(0, 2, n_good + n_bad)
    p = special.expit(rng.normal(2.5 * (y - 0.5), 1.0))
    p[n_good:] = rng.random(n_bad)  # noise for the last group: AUROC about 0.5
    site = np.array(["a"] * n_good + ["b"] * n_bad, dtype=object)
    site[:10] = "c"  # 10 rows: too few
    sex = np.array(rng.choice(["F", "M"], y.size), dtype=object)
    sex[:3] = None
    sex[3:6] = np.nan
    sex[6:9] = ""
    ones = np.array(["x"] * y.size, dtype=object)
    ones[np.flatnonzero(y == 1)[:40]] = "only_pos"
    inp = binary_input(y_true=y, proba=p, n_test=y.size, subgroups={"site": site, "sex": sex, "one_class": ones})
    m = evaluate(inp)
    json.dumps(m, allow_nan=False)
    sites = {r["value"]: r for r in m["subgroups"]["site"]}
    assert sites["b"]["flag_below"] is True and sites["b"]["status"] == "ok"
    assert sites["b"]["auroc_ci"][1] < m["auroc"]
    assert sites["a"]["flag_below"] is False
    assert sites["c"]["status"] == "too few to judge" and sites["c"]["auroc"] is None and sites["c"]["n"] == 10
    mask = site == "b"
    assert sites["b"]["auroc"] == pytest.approx(roc_auc_score(y[mask], p[mask]))
    assert sites["b"]["calibration_in_the_large"] == pytest.approx(y[mask].mean() - p[mask].mean())
    assert sites["b"]["prevalence"] == pytest.approx(y[mask].mean())
    thr = m["operating_threshold"]["value"]
    assert sites["b"]["sensitivity"] == pytest.approx((p[mask & (y == 1)] >= thr).mean())
    assert sites["b"]["specificity"] == pytest.approx((p[mask & (y == 0)] < thr).mean())
    sexes = {r["value"]: r for r in m["subgroups"]["sex"]}
    assert set(sexes) == {"F", "M", "missing"} and sexes["missing"]["n"] == 9
    one = {r["value"]: r for r in m["subgroups"]["one_class"]}
    assert one["only_pos"]["status"] == "too few to judge" and one["only_pos"]["reason"] == "only one outcome present"
    assert sum(r["n"] for r in m["subgroups"]["site"]) == y.size


def test_subgroup_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="subgroup column 'sex'"):
        evaluate(binary_input(n=100, subgroups={"sex": np.array(["F"] * 99)}))


# --------------------------------------------------------------------------------------------------------
# Multiclass
# --------------------------------------------------------------------------------------------------------


def multiclass_data(n: int = 1200, k: int = 4, seed: int = 12, strength: float = 1.5):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), y] += strength
    return y, special.softmax(logits, axis=1)


def test_multiclass_metrics_match_sklearn():
    y, P = multiclass_data()
    rng = np.random.default_rng(14)
    B = special.softmax(np.log(P) + rng.normal(0, 1.0, P.shape), axis=1)  # a noisier baseline
    classes = ["normal", "benign", "malignant", "other"]
    grp = np.array(["s1"] * 1000 + ["s2"] * 180 + ["s3"] * 20, dtype=object)
    inp = EvaluationInput(
        "mc",
        "v1",
        "resnet18_small",
        "multiclass",
        classes,
        y,
        P,
        FAST,
        baseline_name="lr",
        baseline_proba=B,
        subgroups={"site": grp},
    )
    m = evaluate(inp)
    json.dumps(m, allow_nan=False)
    assert ALWAYS | {"weighted_f1", "per_class"} <= set(m)
    pred = P.argmax(1)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, P, multi_class="ovr", average="macro"))
    assert m["auroc_ci"][0] < m["auroc"] < m["auroc_ci"][1]
    onehot = np.eye(4)[y]
    assert m["auprc"] == pytest.approx(average_precision_score(onehot, P, average="macro"))
    assert m["brier"] == pytest.approx(brier_score_loss(y, P, labels=[0, 1, 2, 3], scale_by_half=False))
    assert m["brier"] == pytest.approx(np.mean(np.sum((onehot - P) ** 2, axis=1)))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["weighted_f1"] == pytest.approx(f1_score(y, pred, average="weighted"))
    assert m["confusion_matrix"]["matrix"] == confusion_matrix(y, pred).tolist()
    assert m["confusion_matrix"]["labels"] == classes
    prec, rec, f1, sup = precision_recall_fscore_support(y, pred)
    assert [row["class"] for row in m["per_class"]] == classes
    for c, row in enumerate(m["per_class"]):
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (prec[c], rec[c], f1[c], sup[c])
        )
        assert row["auroc"] == pytest.approx(roc_auc_score(y == c, P[:, c]))
        assert row["auroc_ci"][0] < row["auroc"] < row["auroc_ci"][1]
    c = m["comparison"]
    assert c["metric"] == "macro_f1"
    b_f1 = f1_score(y, B.argmax(1), average="macro")
    assert m["baseline"]["macro_f1"] == pytest.approx(b_f1)
    assert c["difference"] == pytest.approx(m["macro_f1"] - b_f1)
    assert c["ci"][0] < c["difference"] < c["ci"][1]
    assert c["auroc_difference"] == pytest.approx(m["auroc"] - m["baseline"]["auroc"])
    rows = {r["value"]: r for r in m["subgroups"]["site"]}
    assert rows["s3"]["status"] == "too few to judge" and rows["s3"]["accuracy"] is None
    mask = grp == "s2"
    assert rows["s2"]["accuracy"] == pytest.approx(accuracy_score(y[mask], pred[mask]))
    assert rows["s2"]["macro_f1"] == pytest.approx(f1_score(y[mask], pred[mask], average="macro"))


def test_vectorised_macro_f1_matches_sklearn():
    y, P = multiclass_data(n=300, k=3)
    pred = P.argmax(1)
    rng = np.random.default_rng(15)
    idx = rng.integers(0, y.size, (5, y.size))
    got = _macro_f1_from_codes(y[idx] * 3 + pred[idx], 3)
    for i in range(5):
        assert got[i] == pytest.approx(f1_score(y[idx[i]], pred[idx[i]], average="macro"))


# --------------------------------------------------------------------------------------------------------
# Multilabel
# --------------------------------------------------------------------------------------------------------


def multilabel_input(n: int = 900, seed: int = 16, **kw) -> EvaluationInput:
    rng = np.random.default_rng(seed)
    prev = np.array([0.3, 0.15, 0.5])
    Y = (rng.random((n, 3)) < prev).astype(int)
    P = special.expit(rng.normal(0, 1, (n, 3)) + 1.8 * (Y - 0.5) + special.logit(prev))
    args = dict(
        task="ml",
        model_version="v1",
        model_name="resnet18_small",
        kind="multilabel",
        classes=["effusion", "nodule", "cardiomegaly"],
        y_true=Y,
        proba=P,
        settings=FAST,
    )
    args.update(kw)
    return EvaluationInput(**args)


def test_multilabel_metrics():
    inp = multilabel_input()
    rng = np.random.default_rng(17)
    B = np.clip(inp.proba + rng.normal(0, 0.2, inp.proba.shape), 0, 1)
    vY, vP = multilabel_input(n=400, seed=18).y_true, multilabel_input(n=400, seed=18).proba
    grp = np.array(["a"] * 880 + ["b"] * 20, dtype=object)
    inp = multilabel_input(baseline_name="lr", baseline_proba=B, val_y_true=vY, val_proba=vP, subgroups={"g": grp})
    m = evaluate(inp)
    json.dumps(m, allow_nan=False)
    Y, P = inp.y_true, inp.proba
    assert ALWAYS | {"per_label"} <= set(m)
    per = m["per_label"]
    assert [r["label"] for r in per] == inp.classes
    for j, r in enumerate(per):
        assert r["auroc"] == pytest.approx(roc_auc_score(Y[:, j], P[:, j]))
        assert r["auroc_ci"][0] < r["auroc"] < r["auroc_ci"][1]
        assert r["operating_threshold"]["chosen_on"] == "validation"
        assert r["operating_threshold"]["value"] == pytest.approx(M.choose_threshold(vY[:, j], vP[:, j], "youden"))
    assert m["auroc"] == pytest.approx(np.mean([roc_auc_score(Y[:, j], P[:, j]) for j in range(3)]))
    assert m["auroc"] == pytest.approx(roc_auc_score(Y, P, average="macro"))
    assert m["auroc_ci"][0] < m["auroc"] < m["auroc_ci"][1]
    preds = np.column_stack([P[:, j] >= per[j]["operating_threshold"]["value"] for j in range(3)]).astype(int)
    assert m["accuracy"] == pytest.approx(accuracy_score(Y, preds))
    assert m["macro_f1"] == pytest.approx(f1_score(Y, preds, average="macro"))
    tn, fp, fn, tp = multilabel_confusion_matrix(Y, preds).sum(axis=0).ravel()
    assert m["confusion_matrix"]["matrix"] == [[tn, fp], [fn, tp]]
    assert m["comparison"]["metric"] == "macro_auroc"
    assert m["comparison"]["difference"] == pytest.approx(m["auroc"] - roc_auc_score(Y, B, average="macro"))
    rows = {r["value"]: r for r in m["subgroups"]["g"]}
    assert rows["b"]["status"] == "too few to judge" and rows["a"]["status"] == "ok"
    assert rows["a"]["auroc"] == pytest.approx(roc_auc_score(Y[grp == "a"], P[grp == "a"], average="macro"))


# --------------------------------------------------------------------------------------------------------
# Shift, validation, JSON, no Dagster
# --------------------------------------------------------------------------------------------------------


def test_standardized_mean_differences_by_hand():
    dev = {
        "age": np.array([40.0, 50.0, 60.0, np.nan]),
        "flat": np.ones(5),
        "text": np.array(["a", "b"]),
        "only_dev": np.arange(3.0),
    }
    test = {"age": np.array([50.0, 60.0, 70.0]), "flat": np.full(4, 2.0), "text": np.array(["a"])}
    rows = standardized_mean_differences(dev, test)
    by = {r["feature"]: r for r in rows}
    assert set(by) == {"age", "flat"}
    # means 50 and 60, both sds 10: smd = 10 / sqrt((100 + 100) / 2) = 1
    assert by["age"]["dev_mean"] == 50 and by["age"]["test_mean"] == 60
    assert by["age"]["smd"] == pytest.approx(1.0) and by["age"]["flag"] is True
    assert by["flat"]["smd"] is None and by["flat"]["flag"] is True
    small = standardized_mean_differences({"x": np.array([0.0, 1.0, 2.0, 3.0])}, {"x": np.array([0.1, 1.1, 2.1, 3.1])})
    assert small[0]["smd"] == pytest.approx(0.1 / np.std([0, 1, 2, 3], ddof=1))
    assert small[0]["flag"] is False
    json.dumps(rows, allow_nan=False)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"proba": np.full(10, 1.5)}, "probabilities"),
        ({"classes": ["a", "b", "c"]}, "binary tasks need"),
        ({"y_true": np.full(10, 2)}, "0/1"),
        ({"baseline_proba": np.full(9, 0.5)}, "baseline_proba"),
        ({"val_y_true": np.zeros(5)}, "both val_y_true and val_proba"),
    ],
)
def test_bad_input_is_refused(change, message):
    rng = np.random.default_rng(0)
    args = dict(
        task="t",
        model_version="v",
        model_name="m",
        kind="binary",
        classes=["n", "p"],
        y_true=rng.integers(0, 2, 10),
        proba=rng.random(10),
        settings=FAST,
    )
    args.update(change)
    with pytest.raises(ValueError, match=message):
        evaluate(EvaluationInput(**args))


def test_passthrough_is_made_json_safe():
    m = evaluate(
        binary_input(
            n=300,
            flow={"landed_rows": np.int64(300), "test": 300},
            missing_data=[
                {"feature": "lactate", "n_missing": np.int64(3), "rate": np.float32(0.01), "handling": "median"}
            ],
            shift=[{"feature": "age", "dev_mean": 1.0, "test_mean": 1.0, "smd": float("nan"), "flag": np.bool_(False)}],
        )
    )
    text = json.dumps(m, allow_nan=False)
    back = json.loads(text)
    assert back["flow"] == {"landed_rows": 300, "test": 300}
    assert back["shift"][0]["smd"] is None and back["shift"][0]["flag"] is False
    assert back["missing_data"][0]["rate"] == pytest.approx(0.01)


def test_evaluation_package_does_not_import_dagster():
    code = (
        "import sys, meddiag_pipelines.evaluation as e; "
        "assert not any(m == 'dagster' or m.startswith('dagster.') for m in sys.modules), 'dagster imported'"
    )
    run_cli([sys.executable, "-c", code], timeout=60, expect_rc=0)


def test_absent_class_and_absent_label_do_not_break_evaluation():
    y, P = multiclass_data(n=400, k=3)
    y = np.where(y == 2, 0, y)  # class 2 never occurs in the test set
    m = evaluate(EvaluationInput("mc", "v", "m", "multiclass", ["a", "b", "c"], y, P, FAST))
    assert m["per_class"][2]["auroc"] is None and m["per_class"][2]["support"] == 0
    assert m["auroc"] == pytest.approx(np.mean([roc_auc_score(y == c, P[:, c]) for c in (0, 1)]))
    inp = multilabel_input(n=300)
    Y = inp.y_true.copy()
    Y[:, 1] = 0  # a finding with no positive case
    m = evaluate(multilabel_input(n=300, y_true=Y))
    assert m["per_label"][1]["auroc"] is None and m["per_label"][1]["auroc_ci"] is None
    assert m["auroc"] == pytest.approx(np.mean([roc_auc_score(Y[:, j], inp.proba[:, j]) for j in (0, 2)]))
    json.dumps(m, allow_nan=False)
