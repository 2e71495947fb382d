"""What ``meddiag registry`` does (its arguments: ``registry/__main__.py``): list versions, pin the champion to an
earlier version (rollback), unpin, export to ONNX."""

from __future__ import annotations

import argparse
import json
import sys

from meddiag_pipelines.registry.manifest import figure_text, summarize
from meddiag_pipelines.registry.store import ModelRegistry, RegistryError
from meddiag_pipelines.registry.summary import latest_pointer
from meddiag_pipelines.storage import DataRoot, default_data_root

COLUMNS = ("version", "created (UTC)", "data partitions", "code", "metric (95% CI)", "decision")


def version_rows(registry: ModelRegistry, tasks: list[str]) -> list[dict]:
    """Every published version of ``tasks`` as :func:`summarize` fields, with its task; the version that the
    latest run found unchanged (``reports/<task>/latest.json``) names that run's discarded candidate."""
    rows = []
    for task in tasks:
        champion = registry.champion(task)
        latest = latest_pointer(registry.root, task)
        for version in registry.versions(task):
            row = {"task": task, **summarize(registry.manifest(task, version), champion)}
            row["unchanged_candidate"] = latest.get("unchanged_candidate") if latest.get("version") == version else None
            rows.append(row)
    return rows


def _partitions(names: list[str]) -> str:
    if len(names) <= 3:
        return ", ".join(names) or "none"
    return f"{len(names)}: {names[0]} .. {names[-1]}"


def _decision(row: dict) -> str:
    notes = [row["decision"]] + (["pinned champion"] if row["pinned"] else [])
    return ", ".join(notes + (["latest run unchanged"] if row["unchanged_candidate"] else []))


def format_table(rows: list[dict]) -> str:
    """A readable table per task; ``*`` marks the champion; each version's reasons follow its line."""
    lines: list[str] = []
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        cells = [
            (
                r["version"],
                r["created_utc"] or "?",
                _partitions(r["partitions"]),
                r["code_version"] or "?",
                figure_text(r["metric"], r["value"], r["ci"]),
                _decision(r),
            )
            for r in mine
        ]
        widths = [max(len(c[i]) for c in [COLUMNS, *cells]) for i in range(len(COLUMNS))]
        lines += [f"{task}:", "  " + "  ".join(h.ljust(w) for h, w in zip(COLUMNS, widths, strict=False)).rstrip()]
        for row, fields in zip(mine, cells, strict=False):
            mark = "*" if row["champion"] else " "
            lines.append(f"{mark} " + "  ".join(f.ljust(w) for f, w in zip(fields, widths, strict=False)).rstrip())
            lines += [f"      - {reason}" for reason in row["reasons"]]
    return "\n".join(lines) if lines else "no published versions"


def export_command(task: str, version: str) -> int:
    """Export a version's model to ONNX, checked against onnxruntime on its test split (``registry.export``)."""
    from meddiag_pipelines.registry.export import ExportRefused, export_dir, export_version

    try:
        record = export_version(default_data_root(), task, version)
    except (RegistryError, ExportRefused) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    where = export_dir(default_data_root(), task, version)
    state = "already exported (unchanged)" if record["already_exported"] else "exported"
    print(f"{task} {version}: {state} to {where}")
    reference = record.get("reference", "torch")  # exports before tabular models were: torch's
    print(
        f"  parity on {record['n_test']} test rows: max |onnxruntime - {reference}| of the {record['compared']} = "
        f"{record['max_abs_diff']:.3g} (tolerance {record['tolerance']:g})"
    )
    inputs = ", ".join(f"{name} (dynamic {', '.join(axes.values())})" for name, axes in record["inputs"].items())
    print(f"  inputs: {inputs}; output: {record['output']} {record['output_shape']}, then {record['then']}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.registry_command == "export":
        return export_command(args.task, args.version)
    registry = ModelRegistry(DataRoot(default_data_root()))
    if args.registry_command == "list":
        tasks = [args.task] if args.task else registry.tasks()
        rows = version_rows(registry, tasks)
        print(json.dumps(rows, indent=2) if args.json else format_table(rows))
        return 0
    champion = registry.champion(args.task)
    try:
        if args.registry_command == "pin":
            registry.set_champion(args.task, args.version, "pinned by hand (rollback)", pinned=True)
            print(f"{args.task}: champion pinned to {args.version}")
        else:
            if champion is None:
                raise RegistryError(f"task {args.task!r} has no champion to unpin")
            registry.set_champion(args.task, champion["version"], "unpinned by hand", pinned=False)
            print(f"{args.task}: champion {champion['version']} unpinned; promotion resumes")
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
