"""Labels that arrive after scoring: a landed batch whose files hold only the id and label columns (CSV or
Parquet; the task's ``id`` and ``label`` names) gives the outcomes of cases a version already scored.

They are joined by id to that version's predictions (``predictions/<task>/<batch>/<version>.parquet``), and the
realised performance is computed by the project's own evaluator (``evaluation.metrics.evaluate``: the same AUROC,
bootstrap CIs, calibration slope and subgroup table as at evaluation), at the version's own operating threshold.
The promotion gate's settings then judge it (:func:`breach_checks`), on evidence at that n as the gate judges: a
realised AUROC whose 95% CI lies below ``auroc_floor``, or more than ``margin`` below the version's test AUROC; a
calibration slope whose CI lies outside ``slope_band``; a subgroup whose CI falls more than ``max_subgroup_drop``
below its test figure. Under the evaluation's ``min_subgroup_n`` labelled cases nothing is judged (too few labels).

The labels batch's layout and reading live with ingestion (``ingestion.labels_batch``, re-exported here). Errors
name the file and the problem, never an id or a label value.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from meddiag_pipelines.evaluation.metrics import EvaluationInput, evaluate
from meddiag_pipelines.evaluation.metrics.multiclass import macro_f1_ci
from meddiag_pipelines.ingestion.labels_batch import (  # noqa: F401  (the layout lives with ingestion; re-exported)
    LabelsError,
    is_labels_batch,
    read_labels_batch,
)
from meddiag_pipelines.labels import encode_labels
from meddiag_pipelines.registry.promotion import slope_check, subgroup_aurocs, subgroup_rows
from meddiag_pipelines.specs import EvaluationSpec, PromotionSpec


def probability_matrix(predictions: pl.DataFrame, classes: list[str]) -> np.ndarray:
    """Binary: ``probability`` (n,); otherwise the ``p_<class>`` columns in class order (n, k)."""
    if "probability" in predictions.columns:
        return predictions["probability"].to_numpy().astype(np.float64)
    return predictions.select([f"p_{c}" for c in classes]).to_numpy().astype(np.float64)


def join_labels(predictions: pl.DataFrame, labels: pl.DataFrame) -> tuple[pl.DataFrame, dict]:
    """The predictions of scored cases that have a label, with it (``label``); counts of labels matched and
    of labels whose id this prediction file does not hold (scored in another batch, or never)."""
    scored = predictions.drop("label", strict=False)  # a test-predictions file carries the labels it was scored with
    joined = scored.with_columns(pl.col("id").cast(pl.String)).join(labels, on="id", how="inner")
    return joined, {"labels_matched": joined.height, "labels_not_in_batch": labels.height - joined.height}


def realised_performance(
    predictions: pl.DataFrame,
    labels: pl.DataFrame,
    kind: str,
    classes: list[str],
    evaluation: EvaluationSpec,
    operating_threshold: float | None = None,
    subgroups: pl.DataFrame | None = None,
) -> dict | None:
    """Realised performance of one prediction file once labels landed (``None``: none of its cases has a label).
    ``subgroups``: ``id`` and the task's subgroup columns of the scored rows (the prediction file has none);
    ``operating_threshold``: the version's (``manifest["operating_threshold"]["value"]``)."""
    joined, counts = join_labels(predictions, labels)
    if joined.is_empty():
        return None
    unknown = joined.filter(~pl.col("label").is_in(classes)).height if kind != "multilabel" else 0
    if unknown:
        raise LabelsError(f"labels batch: {unknown} label(s) are not among the task's classes")
    y = encode_labels(joined["label"], classes, kind)
    proba = probability_matrix(joined, classes)
    settings = (
        evaluation.model_copy(update={"operating_threshold": operating_threshold})
        if operating_threshold is not None and kind != "multiclass"
        else evaluation
    )
    groups = {}
    if subgroups is not None:
        found = joined.select("id").join(subgroups.with_columns(pl.col("id").cast(pl.String)), on="id", how="left")
        groups = {
            c: np.asarray(found[c].cast(pl.String).to_list(), dtype=object) for c in subgroups.columns if c != "id"
        }
    metrics = evaluate(
        EvaluationInput(
            task="",
            model_version="",
            model_name="",
            kind=kind,
            classes=classes,
            y_true=y,
            proba=proba,
            settings=settings,
            n_test=joined.height,
            subgroups=groups,
        )
    )
    out = {
        "n": joined.height,
        **counts,
        "auroc": metrics["auroc"],
        "auroc_ci": metrics["auroc_ci"],
        "calibration_slope": metrics.get("calibration_slope"),
        "calibration_slope_ci": metrics.get("calibration_slope_ci"),
        "calibration_intercept": metrics.get("calibration_intercept"),
        "subgroups": metrics["subgroups"],
    }
    if kind == "multiclass":
        f1_ci = macro_f1_ci(y, proba.argmax(axis=1), len(classes), evaluation.n_bootstrap, evaluation.seed)
        out.update(metric="macro_f1", macro_f1=metrics["macro_f1"], macro_f1_ci=f1_ci, ci=f1_ci)
    else:
        out.update(metric="auroc", ci=metrics["auroc_ci"], n_positive=metrics.get("n_positive"))
    return out


def _upper(figure: dict) -> float | None:
    """The upper bound of a figure's AUROC 95% CI (``auroc_ci``), or the figure itself when it has none."""
    ci = figure.get("auroc_ci")
    return figure.get("auroc") if not ci or ci[1] is None else ci[1]


def too_few_labels(realised: dict, min_n: int) -> str | None:
    """Why the realised figure cannot be judged (fewer than ``min_n`` labelled cases, or one outcome only), or
    ``None``. ``min_n``: the evaluation's ``min_subgroup_n``, the least n it judges a subgroup on."""
    n, positives = realised["n"], realised.get("n_positive")
    if n < min_n:
        return f"too few labels to judge: n {n} < {min_n}"
    if positives is not None and positives in (0, n):
        return f"too few labels to judge: only one outcome among the {n} labelled cases"
    return None


def breach_checks(realised: dict, version_metrics: dict, promotion: PromotionSpec, min_n: int) -> dict:
    """The promotion gate's rules applied to realised performance: ``{breach, judged, reasons}``, failed rules
    first. ``version_metrics``: the version's own test metrics (its ``metrics.json``).

    As at the gate, a rule fails only on evidence at this n: the realised AUROC breaches when the upper bound of
    its 95% CI lies below ``auroc_floor``, or more than ``margin`` below the version's test AUROC (the gate's
    non-inferiority rule, the burden reversed: the drop must be shown, not its absence); a subgroup when its CI's
    upper bound falls more than ``max_subgroup_drop`` below its test AUROC; the calibration slope when its CI
    lies outside ``slope_band`` (the gate's own rule). Under ``min_n`` labelled cases (or with one outcome only)
    nothing is judged: ``judged`` is false and the reason says "too few labels"."""
    few = too_few_labels(realised, min_n)
    if few is not None:
        return {"breach": False, "judged": False, "reasons": [few]}
    checks = []
    auroc, test_auroc, upper = realised.get("auroc"), version_metrics.get("auroc"), _upper(realised)
    ci = realised.get("auroc_ci") or [None, None]
    ci_text = f" (95% CI {ci[0]:.3f} to {ci[1]:.3f})" if None not in ci else ""
    if auroc is not None:
        ok = upper >= promotion.auroc_floor
        where = "reaches" if ok else "lies below"
        checks.append((ok, f"realised AUROC {auroc:.3f}{ci_text}: its CI {where} the floor {promotion.auroc_floor}"))
        if test_auroc is not None:
            ok = test_auroc - upper <= promotion.margin
            text = (
                f"realised AUROC {auroc:.3f} vs the version's test AUROC {test_auroc:.3f}: its CI's upper bound "
                f"{upper:.3f} is {'not ' if ok else ''}more than the margin {promotion.margin} below it"
            )
            checks.append((ok, text))
    checks += slope_check(realised, promotion)
    before = subgroup_aurocs(version_metrics)
    for row_key, row in subgroup_rows(realised).items():
        if row_key in before and before[row_key] - _upper(row) > promotion.max_subgroup_drop:
            text = (
                f"subgroup {row_key[0]}={row_key[1]}: realised AUROC {row['auroc']:.3f} (CI upper bound "
                f"{_upper(row):.3f}) falls more than {promotion.max_subgroup_drop} below its test AUROC "
                f"{before[row_key]:.3f}"
            )
            checks.append((False, text))
    return {
        "breach": not all(ok for ok, _ in checks),
        "judged": True,
        "reasons": [t for ok, t in checks if not ok] + [t for ok, t in checks if ok],
    }
