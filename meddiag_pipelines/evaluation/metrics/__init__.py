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

Modules
-------
``inputs`` (:class:`EvaluationInput`), ``evaluator`` (``evaluate``: checks the input, assembles the blocks),
``binary``, ``multiclass``, ``multilabel`` (one block per kind), ``subgroups``, ``shift`` (standardized mean
differences), ``bootstrap`` (fast AUROC/AP, resampling, percentile CIs), ``calibration``, ``thresholds``
(threshold rules, operating points, decision curves) and ``jsonable``. Names with a leading underscore are
private to this package. The names below are those the rest of the code imports from here.
"""

from meddiag_pipelines.evaluation.metrics.bootstrap import bootstrap_auroc_ci
from meddiag_pipelines.evaluation.metrics.calibration import (
    calibration_curve_bins,
    calibration_intercept_slope,
    smooth_calibration,
)
from meddiag_pipelines.evaluation.metrics.evaluator import evaluate
from meddiag_pipelines.evaluation.metrics.inputs import EvaluationInput
from meddiag_pipelines.evaluation.metrics.shift import standardized_mean_differences
from meddiag_pipelines.evaluation.metrics.thresholds import choose_threshold, decision_curve, net_benefit, threshold_row

__all__ = [
    "EvaluationInput",
    "bootstrap_auroc_ci",
    "calibration_curve_bins",
    "calibration_intercept_slope",
    "choose_threshold",
    "decision_curve",
    "evaluate",
    "net_benefit",
    "smooth_calibration",
    "standardized_mean_differences",
    "threshold_row",
]
