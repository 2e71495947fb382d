"""Shared evaluation for every modality: metrics (pure), plots, the HTML report and the model card.

No Dagster import here; the Dagster layer calls ``evaluate``, ``render_plots``, ``render_report_html``,
``render_model_card`` and ``summary_markdown``. The keys of ``metrics.json`` are documented in
``meddiag_pipelines/evaluation/metrics/__init__.py``.

The names below load their module on first use (PEP 562): scikit-learn, SciPy and matplotlib take ~1.2 s to
import, which a process loading the Dagster code location should pay only when it evaluates.
"""

import importlib

_HOMES = {
    "EvaluationInput": "metrics",
    "evaluate": "metrics",
    "standardized_mean_differences": "metrics",
    "ModelCardInfo": "model_card",
    "render_model_card": "model_card",
    "render_plots": "plots",
    "render_report_html": "report",
    "summary_markdown": "report",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
