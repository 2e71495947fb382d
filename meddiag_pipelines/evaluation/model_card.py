"""Model card in markdown, following the sections of Mitchell et al. 2019, "Model Cards for Model Reporting":
model details, intended use, factors, metrics, evaluation data, training data, quantitative analyses (with
subgroup results), ethical considerations, caveats and recommendations.

Filled from ``metrics.json`` (aggregates only) and a ``ModelCardInfo`` written by the pipeline; contains no
record ids and no free text from records. Every value the template prints is escaped as literal Markdown text
(a description, class label or subgroup value cannot inject HTML, links or table cells), except the figures
the formatting filters produce.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from meddiag_pipelines.evaluation.report import fmt_ci, fmt_num, template_env
from meddiag_pipelines.markup import escape_markdown

SLOPE_BAND = (0.8, 1.25)


@dataclass
class ModelCardInfo:
    task: str
    description: str
    intended_use: str
    modality: str
    training_data: str
    model_name: str
    model_version: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    # The hyperparameter search, {"best": {...}, "n_trials", "n_pruned", "objective", "best_value"}; taken from
    # ``hyperparameters["tuning"]`` when not given (a model's params carry it so).
    tuning: dict[str, Any] | None = None
    limitations: list[str] = field(default_factory=list)
    ethical_notes: list[str] = field(default_factory=list)


class _Figure(str):
    """Text the card's own formatters made from numbers: printed as is."""


def _figure(fmt):
    return lambda *args, **kwargs: _Figure(fmt(*args, **kwargs))


def _literal(value: Any) -> str:
    """Every ``{{ ... }}`` of the template goes through here (Jinja's ``finalize``)."""
    return value if isinstance(value, _Figure) else escape_markdown(value)


def _caveats(m: dict) -> list[str]:
    """Caveats derived from the metrics themselves."""
    out = []
    subgroups = m.get("subgroups") or {}
    flagged = [f"{c} = {r['value']}" for c, rows in subgroups.items() for r in rows if r.get("flag_below")]
    few = [
        f"{c} = {r['value']}" for c, rows in subgroups.items() for r in rows if r.get("status") == "too few to judge"
    ]
    if flagged:
        out.append(
            "Performance is lower than overall (95% interval wholly below the overall AUROC) for: "
            + "; ".join(flagged)
            + "."
        )
    if few:
        out.append("Too few test cases to judge performance for: " + "; ".join(few) + ".")
    slope = m.get("calibration_slope")
    if slope is not None and not SLOPE_BAND[0] <= slope <= SLOPE_BAND[1]:
        direction = "too extreme (over-confident)" if slope < 1 else "too modest"
        out.append(
            f"Calibration slope {slope:.3f}: predicted risks are {direction}; recalibrate before using them as probabilities."
        )
    if m.get("kind") != "multiclass" and m.get("settings", {}).get("thresholds_chosen_on") == "test":
        out.append(
            "Data-driven thresholds were chosen on the test set (no validation scores given): "
            "threshold metrics are optimistic."
        )
    shifted = [r.get("feature") for r in m.get("shift") or [] if r.get("flag")]
    if shifted:
        out.append("Test data differ from development data (|SMD| > 0.1) in: " + ", ".join(map(str, shifted)) + ".")
    comp = m.get("comparison")
    if comp and comp.get("ci") and comp["ci"][0] is not None and comp["ci"][0] <= 0:
        out.append(
            f"The model is not clearly better than the baseline ({comp['metric']} difference "
            f"{fmt_num(comp.get('difference'))}, 95% CI {fmt_ci(comp['ci'])})."
        )
    return out


def render_model_card(metrics: dict, card: ModelCardInfo) -> str:
    """Markdown model card (Mitchell et al. 2019 sections)."""
    env = template_env(autoescape=False, wrap=_figure, finalize=_literal)  # Markdown, not HTML
    hyperparameters = dict(card.hyperparameters)
    tuning = hyperparameters.pop("tuning", None)
    card = replace(card, hyperparameters=hyperparameters, tuning=card.tuning or tuning)
    return env.get_template("model_card.md.j2").render(m=metrics, card=card, caveats=_caveats(metrics))
