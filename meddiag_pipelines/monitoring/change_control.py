"""The model card's "Change-control plan" section (a predetermined change control plan in the sense of the FDA's
guidance of December 2024): the acceptance criteria the promotion gate enforces, what data a retrain may use,
what triggers one, the sequestered test data, how the model in use is watched, and a change log across versions
with each decision and its reasons, read from the registry (each version's ``manifest.json`` and
``champion.json``), never restated by hand.

:func:`change_control_plan` gathers it as plain data; :func:`change_control_markdown` (for ``model_card.md``) and
:func:`change_control_html` render it. Every value taken from data (versions, partitions, reasons) is escaped.
"""

from __future__ import annotations

from html import escape

from meddiag_pipelines.markup import escape_markdown
from meddiag_pipelines.monitoring.drift import DRIFT_SHARE
from meddiag_pipelines.registry.manifest import summarize
from meddiag_pipelines.registry.store import ModelRegistry
from meddiag_pipelines.specs import TaskSpec

HEADING = "Change-control plan"


def acceptance_criteria(spec: TaskSpec) -> list[tuple[str, str]]:
    """(criterion, setting) rows: the gate's rules, as ``registry.promotion.decide`` applies them."""
    p, e = spec.promotion, spec.evaluation
    subgroups = ", ".join(spec.subgroups) or "none declared"
    return [
        ("first model: test AUROC at least", f"{p.auroc_floor}"),
        (
            "a later model: lower bound of the paired-bootstrap 95% CI of (candidate - champion) test AUROC above",
            f"-{p.margin} (non-inferiority margin {p.margin})",
        ),
        (
            "calibration slope (binary): its bootstrap 95% CI overlaps the band",
            f"[{p.slope_band[0]}, {p.slope_band[1]}]",
        ),
        (
            f"no subgroup's AUROC falls below the champion's by more than (subgroup columns: {subgroups})",
            f"{p.max_subgroup_drop}",
        ),
        (
            "bootstrap",
            (
                f"{e.n_bootstrap} stratified resamples, seed {e.seed}; subgroups under {e.min_subgroup_n} "
                "cases are too few to judge"
            ),
        ),
        ("a pinned champion (a rollback)", "never replaced automatically"),
    ]


def _retrain_data(spec: TaskSpec) -> list[str]:
    s = spec.split
    return [
        (
            "Only batches landed in the task's landing folder that passed validation (quarantined batches and files "
            "never), with a label; every validated labelled batch so far, never a selection."
        ),
        (
            f"Rows are split by a stable hash of the patient (salt {s.salt!r}): {s.train:.0%} train, {s.val:.0%} "
            f"validation, {s.test:.0%} test; all of one patient's records, and copies of one content, share a split."
        ),
        (
            "Labels that arrive later for cases already scored (labels-only batches) are used to monitor the version "
            "that scored them, not to train: those cases enter training only when landed as labelled records."
        ),
    ]


def _triggers(spec: TaskSpec) -> list[str]:
    cron = (
        f"the nightly schedule ({spec.schedule.cron}, {spec.schedule.timezone})"
        if spec.schedule.enabled
        else "no schedule (disabled in the spec)"
    )
    return [
        "A new validated labelled batch (the landing sensor, then declarative automation).",
        f"{cron[0].upper()}{cron[1:]}, when data, spec or code changed since the last version.",
        (
            f"A drift alert (a WARN: Evidently's defaults, a batch drifts when {DRIFT_SHARE:.0%} of its columns do; "
            "drift of the predictions or embeddings): a review, and a retrain once the drifted cases are labelled."
        ),
        (
            "A breach of the acceptance criteria by realised performance once labels land (an ERROR): scoring with the "
            "champion stops and a retrain is requested."
        ),
        (
            "Whatever triggers it, a retrain with no new data, spec or code publishes nothing, and a candidate becomes "
            "champion only through the acceptance criteria above."
        ),
    ]


def _sequestered(spec: TaskSpec) -> list[str]:
    return [
        (
            f"The test split ({spec.split.test:.0%} of patients by the stable hash) is never used to fit a model, to "
            "choose between models or hyper-parameters, or to choose thresholds (chosen on validation)."
        ),
        (
            "Candidate and champion are judged on the same current test rows; a patient's split never changes unless "
            "new records link it to another patient's."
        ),
        "Each version keeps its own test predictions and metrics (test_predictions.parquet, metrics.json).",
    ]


def _monitoring(spec: TaskSpec) -> list[str]:
    p = spec.promotion
    return [
        (
            "Per scored batch: feature and prediction drift against the reference frozen with the version "
            "(embeddings too for images and text), and an estimate of performance without labels that assumes no "
            "concept drift (reports/<task>/monitoring.json and monitoring.html)."
        ),
        (
            f"When labels land: realised AUROC (macro-F1 for several classes) with its 95% CI, calibration slope and "
            f"the subgroup table; judged on the evidence at that n (the CI, not the point), a breach is a realised "
            f"AUROC whose CI lies below {p.auroc_floor} or more than {p.margin} below the version's test AUROC, a "
            f"slope CI outside [{p.slope_band[0]}, {p.slope_band[1]}], or a subgroup whose CI lies more than "
            f"{p.max_subgroup_drop} below its test AUROC; under {spec.evaluation.min_subgroup_n} labelled cases, "
            "too few labels to judge."
        ),
    ]


def change_log(registry: ModelRegistry, task: str) -> list[dict]:
    """Every published version, oldest first (``registry.manifest.summarize``: decision and reasons)."""
    champion = registry.champion(task)
    rows = [summarize(registry.manifest(task, v), champion) for v in registry.versions(task)]
    return sorted(rows, key=lambda r: (r["created_utc"] or "", r["version"] or ""))


def change_control_plan(spec: TaskSpec, registry: ModelRegistry) -> dict:
    return {
        "task": spec.name,
        "acceptance_criteria": acceptance_criteria(spec),
        "retrain_data": _retrain_data(spec),
        "triggers": _triggers(spec),
        "sequestered_test_data": _sequestered(spec),
        "monitoring": _monitoring(spec),
        "change_log": change_log(registry, spec.name),
    }


def _figure(row: dict) -> str:
    if row["value"] is None:
        return f"{row['metric']} n/a"
    ci = row["ci"]
    return f"{row['metric']} {row['value']:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci and None not in ci else "")


def _decision(row: dict) -> str:
    return row["decision"] + (" (champion, pinned)" if row["pinned"] else " (champion)" if row["champion"] else "")


def _log_cells(row: dict) -> list[str]:
    return [
        row["version"],
        row["created_utc"] or "",
        ", ".join(row["partitions"]),
        _figure(row),
        _decision(row),
        "; ".join(row["reasons"]),
    ]


_SECTIONS = (
    ("What data a retrain may use", "retrain_data"),
    ("What triggers a retrain", "triggers"),
    ("Sequestered test data", "sequestered_test_data"),
    ("Monitoring in use", "monitoring"),
)


def change_control_markdown(plan: dict, level: int = 2) -> str:
    """The section for ``model_card.md``, headed "Change-control plan" at heading ``level``."""
    h, sub = "#" * level, "#" * (level + 1)
    lines = [
        f"{h} {HEADING}",
        "",
        f"{sub} Acceptance criteria (enforced by the promotion gate)",
        "",
        "| criterion | setting |",
        "| --- | --- |",
    ]
    lines += [f"| {escape_markdown(c)} | {escape_markdown(s)} |" for c, s in plan["acceptance_criteria"]]
    for title, key in _SECTIONS:
        lines += ["", f"{sub} {title}", "", *[f"- {escape_markdown(item)}" for item in plan[key]]]
    lines += ["", f"{sub} Change log", ""]
    if not plan["change_log"]:
        return "\n".join([*lines, "No version published yet.", ""])
    lines += [
        "| version | created (UTC) | data partitions | test figure (95% CI) | decision | reasons |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in plan["change_log"]:
        lines.append("| " + " | ".join(escape_markdown(c) for c in _log_cells(r)) + " |")
    return "\n".join(lines) + "\n"


def change_control_html(plan: dict) -> str:
    """The same section as an HTML fragment (for the evaluation or monitoring report)."""
    parts = [
        (
            f"<h2>{HEADING}</h2><h3>Acceptance criteria (enforced by the promotion gate)</h3><table>"
            "<tr><th>criterion</th><th>setting</th></tr>"
        )
    ]
    parts += [f"<tr><td>{escape(c)}</td><td>{escape(s)}</td></tr>" for c, s in plan["acceptance_criteria"]]
    parts.append("</table>")
    for title, key in _SECTIONS:
        parts.append(f"<h3>{title}</h3><ul>" + "".join(f"<li>{escape(i)}</li>" for i in plan[key]) + "</ul>")
    parts.append(
        "<h3>Change log</h3><table><tr><th>version</th><th>created (UTC)</th><th>data partitions</th>"
        "<th>test figure (95% CI)</th><th>decision</th><th>reasons</th></tr>"
    )
    for r in plan["change_log"]:
        parts.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in _log_cells(r)) + "</tr>")
    return "".join(parts) + "</table>"
