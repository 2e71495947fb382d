"""Shared evaluation for every modality: metrics (pure), plots, the HTML report and the model card.

No Dagster import here; the Dagster layer calls ``evaluate``, ``render_plots``, ``render_report_html``,
``render_model_card`` and ``summary_markdown``. The keys of ``metrics.json`` are documented in
``meddiag_pipelines/evaluation/metrics.py``.
"""

from meddiag_pipelines.evaluation.metrics import EvaluationInput, evaluate, standardized_mean_differences
from meddiag_pipelines.evaluation.model_card import ModelCardInfo, render_model_card
from meddiag_pipelines.evaluation.plots import render_plots
from meddiag_pipelines.evaluation.report import render_report_html, summary_markdown

__all__ = [
    "EvaluationInput",
    "ModelCardInfo",
    "evaluate",
    "render_model_card",
    "render_plots",
    "render_report_html",
    "standardized_mean_differences",
    "summary_markdown",
]
