"""The omop task's report sections: cohort attrition, outcome incidence and time at risk, both models' test
AUROC, and the covariates with the largest effect; and, for a spec of several outcomes, the report comparing
them (aggregates and covariate names only, never a person's data)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from markupsafe import escape

from meddiag_pipelines.flat.models import load_booster
from meddiag_pipelines.modalities.base import Storage
from meddiag_pipelines.registry.summary import no_model
from meddiag_pipelines.specs import FAMILY_SEPARATOR, TaskFamily
from meddiag_pipelines.storage import DataRoot

TOP_COVARIATES = 15


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def attrition_html(attrition: list[dict]) -> str:
    return _table(["criterion", "persons"], [[a["criterion"], f"{a['persons']:,}"] for a in attrition])


def _ci(model: dict) -> str:
    ci = model.get("auroc_ci") or [None, None]
    return f"{model['auroc']:.3f} (95% CI {ci[0]:.3f} to {ci[1]:.3f})" if ci[0] is not None else f"{model['auroc']:.3f}"


def study_html(omop: dict) -> str:
    if not omop:
        return "<p>No study summary.</p>"
    tar = omop["time_at_risk_days"]
    incidence = f"{omop['incidence']:.1%}" if omop.get("incidence") is not None else "n/a"
    rows = [
        ["outcome", omop["outcome"]],
        ["persons in the study population", f"{omop['persons']:,}"],
        ["persons with the outcome", f"{omop['outcome_count']:,} ({incidence})"],
        ["persons still at risk (scored, not trained on)", f"{omop['persons_to_score']:,}"],
        ["covariates used", f"{omop['n_covariates']:,}"],
    ]
    if tar.get("n"):
        spread = f"{tar['median']:g} ({tar['p25']:g} to {tar['p75']:g}), {tar['min']} to {tar['max']}"
        rows.append(["days at risk: mean, median (quartiles), range", f"{tar['mean']}, {spread}"])
    rows += [[f"test AUROC, {name}", _ci(model)] for name, model in omop.get("test_auroc", {}).items()]
    return _table(["", ""], rows)


def top_covariates(model_dir: Path, plan: dict, k: int = TOP_COVARIATES) -> dict[str, list[dict]]:
    """The L1 model's largest coefficients (per standard deviation of the covariate, as odds ratios) and
    XGBoost's covariates of most total gain."""
    names = plan["names"]
    meta = json.loads((Path(model_dir) / "logistic" / "model.json").read_text(encoding="utf-8"))
    coef = np.asarray(meta["coef"])[0]
    order = [i for i in np.argsort(-np.abs(coef)) if coef[i] != 0][:k]
    lasso = [
        {
            "covariate": names.get(meta["feature_names"][i], meta["feature_names"][i]),
            "coefficient": float(coef[i]),
            "odds_ratio_per_sd": float(np.exp(coef[i])),
        }
        for i in order
    ]
    gain = load_booster(Path(model_dir) / "xgboost").get_score(importance_type="total_gain")
    best = sorted(gain.items(), key=lambda kv: -kv[1])[:k]
    return {"lasso": lasso, "xgboost": [{"covariate": names.get(n, n), "total_gain": float(g)} for n, g in best]}


def top_covariates_html(top: dict[str, list[dict]]) -> str:
    lasso = _table(
        ["covariate", "coefficient (per SD)", "odds ratio per SD"],
        [[r["covariate"], f"{r['coefficient']:+.3f}", f"{r['odds_ratio_per_sd']:.2f}"] for r in top["lasso"]],
    )
    boost = _table(["covariate", "total gain"], [[r["covariate"], f"{r['total_gain']:.1f}"] for r in top["xgboost"]])
    return (
        f"<p>L1 logistic regression: the non-zero coefficients of largest size.</p>{lasso}"
        f"<p>XGBoost: the covariates of most total gain.</p>{boost}"
    )


# -- a spec of several outcomes: one model each, compared ---------------------------------------------------------
def outcome_comparison(storage: Storage, family: TaskFamily) -> dict:
    """Per outcome (one task each) of the spec ``family``, from its latest evaluated model: the study population,
    the cases and incidence, the test AUROC with its 95% CI (the chosen model and both models), the gate's
    decision and the champion in force."""
    return {
        "spec": family.name,
        "at": time.time(),
        "outcomes": [_outcome_entry(storage, t, family) for t in family.tasks],
    }


def _outcome_entry(storage: Storage, task: str, family: TaskFamily) -> dict:
    root, registry = storage.root, storage.registry
    entry = {"outcome": task.removeprefix(family.name + FAMILY_SEPARATOR), "task": task}
    reports = root.relative(root.reports(task))
    try:
        version = root.read_json(f"{reports}/latest.json")["version"]
        metrics = root.read_json(f"{reports}/latest/metrics.json")
    except FileNotFoundError:
        return {**entry, "version": None, **_no_model_entry(root, task)}
    omop = metrics.get("omop") or {}
    decision = registry.manifest(task, version).get("decision") if registry.published(task, version) else None
    champion = registry.champion(task)
    return {
        **entry,
        "version": version,
        **{k: omop.get(k) for k in ("persons", "outcome_count", "incidence", "persons_to_score")},
        "model": metrics.get("model_name"),
        "test_auroc": metrics.get("auroc"),
        "test_auroc_ci": metrics.get("auroc_ci"),
        "models": omop.get("test_auroc") or {},
        "promoted": decision.get("promote") if decision else None,
        "decision": "; ".join(decision.get("reasons") or []) if decision else "not published",
        "champion": champion["version"] if champion else None,
    }


def _no_model_entry(root: DataRoot, task: str) -> dict:
    """A task without an evaluated model: the reason its run could not model the data, when one recorded it
    (the step's error, as logged), with its study population and outcome count."""
    note = no_model(root, task)
    if note is None:
        return {"decision": "no model evaluated yet"}
    persons, cases = sum(note["classes"].values()), note["classes"].get("1", 0)
    return {
        "persons": persons,
        "outcome_count": cases,
        "incidence": cases / persons if persons else None,
        "decision": f"no model: {note['reason']}",
        "no_model": {k: note[k] for k in ("step", "reason", "at")},
    }


def _auroc_text(auroc: float | None, ci: list | None) -> str:
    if auroc is None:
        return "n/a"
    return _ci({"auroc": auroc, "auroc_ci": ci})


def comparison_html(comparison: dict) -> str:
    """One self-contained page: the outcomes of the spec side by side."""
    rows = []
    for e in comparison["outcomes"]:
        incidence = f" ({e['incidence']:.1%})" if e.get("incidence") is not None else ""
        if e["version"] is None:
            persons = f"{e['persons']:,}" if e.get("persons") is not None else ""
            cases = f"{e['outcome_count']:,}{incidence}" if e.get("outcome_count") is not None else ""
            rows.append([e["outcome"], persons, cases, "", "", e["decision"], ""])
            continue
        models = ", ".join(
            f"{name} {_auroc_text(m.get('auroc'), m.get('auroc_ci'))}" for name, m in e["models"].items()
        )
        verdict = {True: "promoted", False: "not promoted", None: ""}[e["promoted"]]
        rows.append(
            [
                e["outcome"],
                f"{e['persons']:,}" if e.get("persons") is not None else "n/a",
                f"{e['outcome_count']:,}{incidence}" if e.get("outcome_count") is not None else "n/a",
                f"{e['model']}: {_auroc_text(e['test_auroc'], e['test_auroc_ci'])}",
                models,
                f"{verdict}: {e['decision']}" if verdict else e["decision"],
                e["champion"] or "none",
            ]
        )
    header = [
        "outcome",
        "study population",
        "cases (incidence)",
        "test AUROC (95% CI)",
        "both models",
        "decision",
        "champion",
    ]
    name = escape(comparison["spec"])
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Outcomes: {name}</title></head><body>"
        f"<h1>Outcomes of {name}</h1><p>Which outcomes the target cohort may develop: one model per outcome, each "
        "trained, gated and promoted on its own study population (the same target cohort, less the persons with that "
        "outcome before the time at risk), from each task's latest evaluated version.</p>"
        f"{_table(header, rows)}</body></html>\n"
    )


def write_comparison(root: DataRoot, spec_name: str, comparison: dict) -> None:
    """``reports/<spec>/outcomes.json`` and ``outcomes.html``, each replaced whole (atomically)."""
    folder = root.relative(root.reports(spec_name))
    root.write_json(f"{folder}/outcomes.json", comparison)
    root.write_bytes(f"{folder}/outcomes.html", comparison_html(comparison).encode())
