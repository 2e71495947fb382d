"""Evaluation plots as PNG bytes: matplotlib's Agg canvas used directly (no pyplot, no global backend
switch, no display needed; safe in threads).

Every plot has a title and labelled axes. Plots show aggregate curves only, never individual records.
PNG metadata (software name and URL) is stripped so the report carries no external reference.
"""

from __future__ import annotations

import io
import re

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from meddiag_pipelines.evaluation.metrics import EvaluationInput

_SIZE = (5.2, 4.2)
_DPI = 100
_MODEL = "#1f5fa8"
_BASE = "#c2571a"
_GREY = "#777777"


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    return buf.getvalue()


def _fig(title: str, xlabel: str, ylabel: str) -> tuple[Figure, object]:
    fig = Figure(figsize=_SIZE, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _roc(
    y: np.ndarray,
    p: np.ndarray,
    title: str,
    auroc: float | None,
    base: np.ndarray | None = None,
    base_name: str | None = None,
    base_auroc: float | None = None,
    op: dict | None = None,
) -> bytes:
    fig, ax = _fig(title, "1 - specificity (false positive rate)", "Sensitivity (true positive rate)")
    ax.plot([0, 1], [0, 1], ls="--", color=_GREY, lw=1, label="chance")
    if 0 < y.sum() < y.size:
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, color=_MODEL, lw=2, label=f"model (AUROC {_fmt(auroc)})")
        if base is not None:
            bf, bt, _ = roc_curve(y, base)
            ax.plot(bf, bt, color=_BASE, lw=1.5, label=f"{base_name or 'baseline'} (AUROC {_fmt(base_auroc)})")
    if op is not None and op.get("sensitivity") is not None and op.get("specificity") is not None:
        ax.plot(
            1 - op["specificity"],
            op["sensitivity"],
            "o",
            color="black",
            label=f"operating point (t = {op['threshold']:.3f})",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def _pr(y: np.ndarray, p: np.ndarray, auprc: float | None, base: np.ndarray | None, base_name: str | None) -> bytes:
    fig, ax = _fig("Precision-recall curve", "Recall (sensitivity)", "Precision (PPV)")
    prev = float(y.mean())
    ax.axhline(prev, ls="--", color=_GREY, lw=1, label=f"prevalence ({prev:.3f})")
    if y.sum() > 0:
        prec, rec, _ = precision_recall_curve(y, p)
        ax.step(rec, prec, where="post", color=_MODEL, lw=2, label=f"model (AUPRC {_fmt(auprc)})")
        if base is not None:
            bp, br, _ = precision_recall_curve(y, base)
            ax.step(br, bp, where="post", color=_BASE, lw=1.5, label=base_name or "baseline")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="upper right", fontsize=8)
    return _png(fig)


def _calibration(m: dict) -> bytes:
    fig, ax = _fig("Calibration", "Predicted probability", "Observed proportion")
    ax.plot([0, 1], [0, 1], ls="--", color=_GREY, lw=1, label="perfect calibration")
    curve = m.get("calibration_curve") or {}
    bins = curve.get("bins") or []
    if bins:
        x = [b["mean_predicted"] for b in bins]
        yy = [b["observed"] for b in bins]
        size = np.sqrt(np.array([b["count"] for b in bins], dtype=float))
        size = 15 + 120 * size / size.max()
        ax.scatter(x, yy, s=size, color=_MODEL, alpha=0.8, zorder=3, label="binned (area ~ count)")
    smooth = curve.get("smooth")
    if smooth:
        ax.plot(smooth["predicted"], smooth["observed"], color=_MODEL, lw=1.5, label="smoothed (spline)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.text(
        0.02,
        0.97,
        f"slope {_fmt(m.get('calibration_slope'))}\nintercept {_fmt(m.get('calibration_intercept'))}",
        transform=ax.transAxes,
        va="top",
        fontsize=8,
    )
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def _decision(m: dict, base_name: str | None) -> bytes:
    fig, ax = _fig("Decision curve", "Threshold probability", "Net benefit")
    dc = m["decision_curve"]
    t = np.asarray(dc["thresholds"], dtype=float)

    def arr(v: list) -> np.ndarray:
        return np.array([np.nan if x is None else x for x in v], dtype=float)

    model = arr(dc["model"])
    all_ = arr(dc["treat_all"])
    ax.plot(t, model, color=_MODEL, lw=2, label="model")
    if dc.get("baseline") is not None:
        ax.plot(t, arr(dc["baseline"]), color=_BASE, lw=1.5, label=base_name or "baseline")
    ax.plot(t, all_, color=_GREY, lw=1, label="treat all")
    ax.plot(t, arr(dc["treat_none"]), color="black", lw=1, ls="--", label="treat none")
    prev = m.get("prevalence") or 0.0
    top = max(float(np.nanmax(model)) if model.size else 0.0, prev, 0.01)
    ax.set_ylim(-0.1 * top - 0.01, top * 1.15)
    ax.set_xlim(0, 1)
    ax.legend(loc="upper right", fontsize=8)
    return _png(fig)


def _confusion(cm: dict, title: str) -> bytes:
    mat = np.asarray(cm["matrix"], dtype=float)
    labels = [str(x) for x in cm["labels"]]
    k = len(labels)
    fig = Figure(figsize=(max(4.2, 0.6 * k + 2.5), max(3.6, 0.6 * k + 2)), layout="constrained")
    ax = fig.add_subplot()
    rows = mat.sum(axis=1, keepdims=True)
    frac = np.divide(mat, rows, out=np.zeros_like(mat), where=rows > 0)
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, label="fraction of true class")
    ax.set_xticks(range(k), labels, rotation=45 if k > 3 else 0, ha="right" if k > 3 else "center", fontsize=8)
    ax.set_yticks(range(k), labels, fontsize=8)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title(title, fontsize=11)
    if k <= 12:
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    f"{int(mat[i, j])}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if frac[i, j] > 0.5 else "black",
                )
    return _png(fig)


def _multiclass_roc(y: np.ndarray, P: np.ndarray, m: dict) -> bytes:
    fig, ax = _fig(
        f"ROC curves, one vs rest (macro AUROC {_fmt(m.get('auroc'))})",
        "1 - specificity (false positive rate)",
        "Sensitivity (true positive rate)",
    )
    ax.plot([0, 1], [0, 1], ls="--", color=_GREY, lw=1)
    for c, row in enumerate(m.get("per_class", [])):
        yc = (y == c).astype(int)
        if 0 < yc.sum() < yc.size:
            fpr, tpr, _ = roc_curve(yc, P[:, c])
            ax.plot(fpr, tpr, lw=1.3, label=f"{row['class']} ({_fmt(row['auroc'])})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right", fontsize=7)
    return _png(fig)


def plot_key(label: str) -> str:
    """A safe dictionary key for a label's plot (letters, digits, underscores)."""
    return "roc_" + (re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_").lower() or "label")


def render_plots(inp: EvaluationInput, metrics: dict) -> dict[str, bytes]:
    """PNG bytes by name: binary roc, pr, calibration, decision_curve, confusion; multiclass roc, confusion;
    multilabel one ROC per label under ``plot_key(label)`` ("roc_<label>") plus the summed confusion."""
    kind = metrics["kind"]
    P = np.asarray(inp.proba, dtype=float)
    B = None if inp.baseline_proba is None else np.asarray(inp.baseline_proba, dtype=float)
    base = metrics.get("baseline") or {}
    if kind == "binary":
        y = np.asarray(inp.y_true).astype(int)
        op = next((r for r in metrics["thresholds"] if r["name"] == metrics["operating_threshold"]["name"]), None)
        return {
            "roc": _roc(y, P, "ROC curve", metrics.get("auroc"), B, inp.baseline_name, base.get("auroc"), op),
            "pr": _pr(y, P, metrics.get("auprc"), B, inp.baseline_name),
            "calibration": _calibration(metrics),
            "decision_curve": _decision(metrics, inp.baseline_name),
            "confusion": _confusion(
                metrics["confusion_matrix"],
                f"Confusion matrix (threshold {metrics['operating_threshold']['value']:.3f})",
            ),
        }
    if kind == "multiclass":
        y = np.asarray(inp.y_true).astype(int)
        return {
            "roc": _multiclass_roc(y, P, metrics),
            "confusion": _confusion(metrics["confusion_matrix"], "Confusion matrix (arg-max class)"),
        }
    Y = np.asarray(inp.y_true).astype(int)
    out: dict[str, bytes] = {}
    for j, row in enumerate(metrics["per_label"]):
        key = plot_key(row["label"])
        while key in out:
            key += "_"
        op = next((r for r in row["thresholds"] if r["name"] == row["operating_threshold"]["name"]), None)
        out[key] = _roc(
            Y[:, j],
            P[:, j],
            f"ROC curve: {row['label']}",
            row.get("auroc"),
            None if B is None else B[:, j],
            inp.baseline_name,
            row.get("baseline_auroc"),
            op,
        )
    out["confusion"] = _confusion(metrics["confusion_matrix"], "Confusion matrix, all labels summed")
    return out
