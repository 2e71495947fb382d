"""The omop task's report sections: cohort attrition, outcome incidence and time at risk, both models' test
AUROC, and the covariates with the largest effect (aggregates and covariate names only, never a person's data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from markupsafe import escape

from meddiag_pipelines.flat.models import load_booster

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
