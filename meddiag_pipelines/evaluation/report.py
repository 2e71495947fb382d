"""The evaluation report (one self-contained HTML file) and a short markdown summary for the Dagster UI.

The report is rendered from ``templates/report.html.j2`` with autoescaping on. It is self-contained: plots are
embedded as base64 PNG ``data:`` URIs, the CSS is inline, there are no scripts, fonts or links to anything
outside the file, and it prints cleanly (``@media print``). It shows aggregate numbers only, taken from the
metrics dict: it never includes record ids, per-row values or free text. Extra sections supplied by a modality
(saliency maps, top terms) are trusted HTML fragments and must follow the same rules; a fragment that loads
anything from outside the file (``src``/``href``/``url()`` to ``http:``, ``https:`` or ``//``) is refused.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

TEMPLATES = Path(__file__).parent / "templates"

_PLOT_TITLES = {
    "roc": "ROC curve",
    "pr": "Precision-recall curve",
    "calibration": "Calibration",
    "decision_curve": "Decision curve",
    "confusion": "Confusion matrix",
}
_PLOT_ORDER = ["roc", "pr", "calibration", "decision_curve", "confusion"]
_EXTERNAL = re.compile(
    r"""(?:\b(?:src|href|srcset|action|poster|data)\s*=\s*["']?\s*|url\(\s*["']?\s*|@import\s+["']?)"""
    r"""(?:[a-z][a-z0-9+.-]*:(?!image/)|//)""",
    re.IGNORECASE,
)
NET_BENEFIT_AT = (0.05, 0.1, 0.2, 0.3, 0.5)


def fmt_num(x: Any, digits: int = 3) -> str:
    """A number rounded to ``digits`` decimals; None/NaN as an em dash; integers as they are."""
    if x is None:
        return "\u2014"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(v):
        return "\u2014"
    return f"{v:.{digits}f}"


def fmt_ci(ci: Any, digits: int = 3) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return "\u2014"
    return f"[{fmt_num(ci[0], digits)}, {fmt_num(ci[1], digits)}]"


def fmt_pct(x: Any, digits: int = 1) -> str:
    if x is None:
        return "\u2014"
    return f"{100 * float(x):.{digits}f}%"


def template_env(*, autoescape: bool, wrap: Callable[[Callable], Callable] = lambda f: f, **options) -> Environment:
    """The jinja2 environment of the evaluation templates (report and model card): a missing variable fails,
    and the ``num`` / ``ci`` / ``pct`` filters format figures (passed through ``wrap``)."""
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=autoescape,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        **options,
    )  # noqa: S701
    env.filters.update(num=wrap(fmt_num), ci=wrap(fmt_ci), pct=wrap(fmt_pct))
    return env


def _plot_title(key: str, metrics: dict) -> str:
    if key in _PLOT_TITLES:
        return _PLOT_TITLES[key]
    if key.startswith("roc_") and metrics.get("kind") == "multilabel":
        from meddiag_pipelines.evaluation.plots import plot_key

        for row in metrics.get("per_label", []):
            if plot_key(row["label"]).rstrip("_") == key.rstrip("_"):
                return f"ROC curve: {row['label']}"
    return key.replace("_", " ")


def _net_benefit_rows(metrics: dict) -> list[dict]:
    dc = metrics.get("decision_curve")
    if not dc:
        return []
    rows = []
    for t in NET_BENEFIT_AT:
        try:
            i = [round(x, 4) for x in dc["thresholds"]].index(round(t, 4))
        except ValueError:
            continue
        rows.append(
            {
                "threshold": t,
                "model": dc["model"][i],
                "treat_all": dc["treat_all"][i],
                "baseline": None if dc.get("baseline") is None else dc["baseline"][i],
            }
        )
    return rows


def check_fragment(fragment: str) -> None:
    """Refuse an HTML fragment that would load anything from outside the report."""
    m = _EXTERNAL.search(fragment)
    if m:
        raise ValueError(f"report section loads an external resource near {fragment[m.start() : m.start() + 60]!r}")


def render_report_html(metrics: dict, plots: dict[str, bytes], extra_sections: Iterable[tuple[str, str]] = ()) -> str:
    """One self-contained HTML report for clinicians and engineers (see the module docstring)."""
    keys = [k for k in _PLOT_ORDER if k in plots] + [k for k in plots if k not in _PLOT_ORDER]
    figures = [
        {
            "key": k,
            "title": _plot_title(k, metrics),
            "uri": "data:image/png;base64," + base64.b64encode(plots[k]).decode("ascii"),
        }
        for k in keys
    ]
    extras = []
    for title, fragment in extra_sections:
        check_fragment(fragment)
        extras.append({"title": title, "html": Markup(fragment)})
    op_name = (metrics.get("operating_threshold") or {}).get("name")
    flagged = [
        (col, row["value"])
        for col, rows in (metrics.get("subgroups") or {}).items()
        for row in rows
        if row.get("flag_below")
    ]
    return (
        template_env(autoescape=True)
        .get_template("report.html.j2")
        .render(
            m=metrics,
            figures=figures,
            extras=extras,
            op_name=op_name,
            flagged=flagged,
            net_benefit=_net_benefit_rows(metrics),
            shift_flagged=[r for r in metrics.get("shift") or [] if r.get("flag")],
        )
    )


def summary_markdown(metrics: dict) -> str:
    """A short markdown table of the key metrics (for Dagster asset metadata)."""
    kind = metrics["kind"]
    rows: list[tuple[str, str, str]] = [
        (
            "AUROC" if kind == "binary" else "macro AUROC",
            fmt_num(metrics.get("auroc")),
            fmt_ci(metrics.get("auroc_ci")),
        ),
        (
            "AUPRC" if kind == "binary" else "macro AUPRC",
            fmt_num(metrics.get("auprc")),
            fmt_ci(metrics.get("auprc_ci")),
        ),
        ("Brier score", fmt_num(metrics.get("brier")), ""),
    ]
    if kind == "binary":
        op = metrics["operating_threshold"]
        rows += [
            ("calibration slope", fmt_num(metrics.get("calibration_slope")), ""),
            ("calibration intercept", fmt_num(metrics.get("calibration_intercept")), ""),
            (f"sensitivity @ {op['name']} ({fmt_num(op['value'])})", fmt_num(metrics.get("sensitivity")), ""),
            (f"specificity @ {op['name']} ({fmt_num(op['value'])})", fmt_num(metrics.get("specificity")), ""),
        ]
    rows += [("accuracy", fmt_num(metrics.get("accuracy")), ""), ("macro F1", fmt_num(metrics.get("macro_f1")), "")]
    base, comp = metrics.get("baseline"), metrics.get("comparison")
    if base:
        rows.append(
            (
                f"baseline ({base.get('name') or 'baseline'}) AUROC",
                fmt_num(base.get("auroc")),
                fmt_ci(base.get("auroc_ci")),
            )
        )
    if comp:
        rows.append(
            (f"{comp['metric']} difference vs baseline", fmt_num(comp.get("difference")), fmt_ci(comp.get("ci")))
        )
    n_flag = sum(1 for rs in (metrics.get("subgroups") or {}).values() for r in rs if r.get("flag_below"))
    n_few = sum(
        1 for rs in (metrics.get("subgroups") or {}).values() for r in rs if r.get("status") == "too few to judge"
    )
    rows.append(("subgroups flagged below overall / too few to judge", f"{n_flag} / {n_few}", ""))
    rows.append(("test rows", fmt_num(metrics.get("n_test")), ""))
    lines = [
        f"**{metrics['task']}**: {metrics['model_name']} `{metrics['model_version']}` ({kind})",
        "",
        "| metric | value | 95% CI |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {a.replace('|', '/')} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + "\n"
