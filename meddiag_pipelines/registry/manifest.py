"""A version's ``manifest.json``: what it was trained from, how it scored, and the promotion decision; and the
one-line summary of a manifest that ``python -m meddiag_pipelines.registry list`` shows."""

from __future__ import annotations

import time

import polars as pl

# The report files of a version, written in staging by the evaluation and published with the version.
REPORT_FILES = ("metrics.json", "report.html", "model_card.md", "test_predictions.parquet")
SUMMARY_METRICS = (
    "auroc",
    "auroc_ci",
    "auprc",
    "brier",
    "calibration_slope",
    "calibration_intercept",
    "macro_f1",
    "accuracy",
    "n_test",
)


def build_manifest(
    task: str,
    ledger: pl.DataFrame,
    candidate: dict,
    baseline: dict,
    metrics: dict,
    parent: dict | None,
    decision: dict,
    fingerprint: str | None,
    code_version: str,
) -> dict:
    """``ledger``: the task's ingestion ledger (its validated batches are the version's data partitions);
    ``parent``: the champion pointer in force when the version was decided."""
    validated = ledger.filter(pl.col("status") == "validated").sort("batch_id")
    return {
        "task": task,
        "created_at": time.time(),
        "code_version": code_version,
        "fingerprint": fingerprint,
        "batches": [
            {"batch_id": r["batch_id"], "content_hash": r["content_hash"], "n_rows": r["n_rows"]}
            for r in validated.iter_rows(named=True)
        ],
        "model": {
            k: candidate[k] for k in ("name", "framework", "params", "val_score", "classes", "version", "device")
        },
        "baseline": {k: baseline[k] for k in ("name", "framework", "params", "val_score")},
        "hyperparameters": candidate["params"],
        "metrics": {k: metrics.get(k) for k in SUMMARY_METRICS},
        "thresholds": metrics.get("thresholds"),
        "operating_threshold": metrics.get("operating_threshold"),
        "parent_champion": parent["version"] if parent else None,
        "decision": decision,
        "report_files": list(REPORT_FILES),
    }


def headline(metrics: dict) -> tuple[str, float | None, list | None]:
    """The figure a version is judged by: AUROC (macro for several classes) with its CI, else macro-F1 (which
    the evaluator gives without a CI)."""
    if metrics.get("auroc") is not None:
        return "AUROC", metrics["auroc"], metrics.get("auroc_ci")
    return "macro-F1", metrics.get("macro_f1"), None


def figure_text(name: str, value: float | None, ci: list | None) -> str:
    """A :func:`headline` as people read it: ``AUROC 0.910 (0.850-0.950)``, the 95% CI in parentheses."""
    if value is None:
        return f"{name} n/a"
    return f"{name} {value:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci and None not in ci else "")


def summarize(manifest: dict, champion: dict | None = None) -> dict:
    """One version as plain fields: created (UTC), data partitions, code version, headline figure with its CI,
    decision (promoted / refused; ``champion`` marks the version in force) and its reasons."""
    name, value, ci = headline(manifest.get("metrics") or {})
    decision = manifest.get("decision") or {}
    batches = [b["batch_id"] for b in manifest.get("batches") or []]
    is_champion = bool(champion and champion.get("version") == manifest.get("version"))
    return {
        "version": manifest.get("version"),
        "created_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(manifest["created_at"]))
        if manifest.get("created_at")
        else None,
        "partitions": batches,
        "code_version": manifest.get("code_version"),
        "metric": name,
        "value": value,
        "ci": list(ci) if ci else None,
        "decision": "promoted" if decision.get("promote") else "refused",
        "reasons": list(decision.get("reasons") or []),
        "champion": is_champion,
        "pinned": bool(is_champion and champion.get("pinned")),
    }
