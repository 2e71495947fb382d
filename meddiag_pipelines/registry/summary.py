"""A task's state in one line, as ``meddiag update`` ends: its figure with the 95% CI, what the latest run decided
and its first reason, the champion in force, and the report's path. Read from what the runs wrote
(``reports/<task>/latest.json``, the version's manifest or the latest report's ``metrics.json``, ``champion.json``),
never recomputed."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from meddiag_pipelines.registry.manifest import figure_text, headline, summarize
from meddiag_pipelines.registry.store import ModelRegistry
from meddiag_pipelines.storage import DataRoot

SEPARATOR = " · "
NO_MODEL = "no_model.json"  # under reports/<task>/: why the task's data could not be modelled (record_no_model)


@dataclass(frozen=True)
class TaskSummary:
    task: str
    parts: tuple[str, ...]
    refusal: str | None = None  # the gate's first reason, when the latest run's candidate was refused

    def line(self) -> str:
        return f"{self.task}: {SEPARATOR.join(self.parts)}"


def latest_pointer(root: DataRoot, task: str) -> dict:
    """``reports/<task>/latest.json``: the latest evaluated version (empty before the first evaluation)."""
    rel = f"reports/{task}/latest.json"
    return root.read_json(rel) if root.exists(rel) else {}


def record_no_model(root: DataRoot, task: str, step: str, reason: str, classes: dict[str, int]) -> str:
    """``reports/<task>/no_model.json``, replaced whole: why the task's latest run could not model its data (the
    ``step``'s error, as the run logged it: plain words, no record content) and its labelled rows per class."""
    note = {"task": task, "step": step, "reason": reason, "classes": classes, "at": time.time()}
    return root.write_json(f"reports/{task}/{NO_MODEL}", note)


def no_model(root: DataRoot, task: str) -> dict | None:
    """What :func:`record_no_model` recorded, while no later run of the task got past that step (None)."""
    rel = f"reports/{task}/{NO_MODEL}"
    return root.read_json(rel) if root.exists(rel) else None


def clear_no_model(root: DataRoot, task: str) -> None:
    """A run got past the step that had failed: its reason no longer holds."""
    root.remove(f"reports/{task}/{NO_MODEL}")


def task_summary(registry: ModelRegistry, task: str, since: float | None) -> TaskSummary:
    """``since``: when the run of the task's later steps (split to predictions) began; ``None`` when none ran
    (the task was up to date). A run that succeeded without evaluating a model found no validated rows to split."""
    root, champion = registry.root, registry.champion(task)
    latest = latest_pointer(root, task)
    version = latest.get("version")
    if since is None or latest.get("at", 0) < since:
        state = "up to date" if since is None else "no model evaluated: no validated rows yet (the log says why)"
        parts, refusal = [state, _in_force(registry, task, champion, version)], None
    elif latest.get("unchanged_candidate"):
        parts, refusal = (
            [
                f"no new data, spec or code since {version}: nothing published",
                _in_force(registry, task, champion, version),
            ],
            None,
        )
    elif not registry.published(task, version):
        metrics = root.read_json(f"reports/{task}/latest/metrics.json")
        parts, refusal = (
            [
                metrics_figure(metrics),
                f"{version} evaluated but not published (see the run's champion step)",
                _in_force(registry, task, champion, version),
            ],
            None,
        )
    else:
        row = summarize(registry.manifest(task, version), champion)
        figure = _figure(registry, task, version)
        if row["decision"] == "promoted":
            parts, refusal = [figure, f"promoted {version} ({_first(row['reasons'])})"], None
        else:
            refusal = _first(row["reasons"])
            stays = f"champion {champion['version']} stays" if champion else "no champion"
            parts = [figure, f"not promoted: {refusal}", stays]
    report = f"reports/{task}/latest/report.html"
    if root.exists(report):
        parts.append(f"report {shown_path(root, report)}")
    return TaskSummary(task, tuple(parts), refusal)


def _in_force(registry: ModelRegistry, task: str, champion: dict | None, latest: str | None) -> str:
    """The champion and its figure; without one, why the latest published candidate was refused."""
    if champion is not None:
        pinned = " (pinned)" if champion.get("pinned") else ""
        return f"champion {champion['version']}{pinned}: {_figure(registry, task, champion['version'])}"
    if latest and registry.published(task, latest):
        row = summarize(registry.manifest(task, latest), None)
        return f"no champion ({latest} not promoted: {_first(row['reasons'])})"
    return "no champion"


def _figure(registry: ModelRegistry, task: str, version: str) -> str:
    report = registry.read_file(task, version, "metrics.json")
    return metrics_figure(json.loads(report) if report else registry.manifest(task, version)["metrics"])


def metrics_figure(metrics: dict) -> str:
    """The headline figure with its CI; a multi-class task's macro-F1 beside it (the evaluator gives no CI for it)."""
    text = figure_text(*headline(metrics))
    if metrics.get("kind") == "multiclass" and metrics.get("macro_f1") is not None:
        text += f", macro-F1 {metrics['macro_f1']:.3f}"
    return text


def _first(reasons: list[str]) -> str:
    return reasons[0] if reasons else "no reason recorded"


def shown_path(root: DataRoot, rel: str) -> str:
    """Where a person finds ``rel``: relative to the working directory when below it, else absolute (or the
    object store URL)."""
    if root.remote:
        return f"{root.url}/{rel}"
    path = root.path(rel)
    return os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)
