"""Registry command line: list versions, pin the champion to an earlier version (rollback), unpin, export to ONNX.

    python -m meddiag_pipelines.registry list [heart_disease] [--json]
    python -m meddiag_pipelines.registry pin heart_disease 20261129T000617.412Z-65bc273e
    python -m meddiag_pipelines.registry unpin heart_disease
    python -m meddiag_pipelines.registry export synthetic_chest_phantoms 20261129T000617.412Z-65bc273e
"""

from __future__ import annotations

import argparse
import json
import sys

from meddiag_pipelines.layout import default_data_root
from meddiag_pipelines.registry.manifest import summarize
from meddiag_pipelines.registry.store import ModelRegistry, RegistryError
from meddiag_pipelines.storage import DataRoot

COLUMNS = ("version", "created (UTC)", "data partitions", "code", "metric (95% CI)", "decision")


def version_rows(registry: ModelRegistry, tasks: list[str]) -> list[dict]:
    """Every published version of ``tasks`` as :func:`summarize` fields, with its task; the version that the
    latest run found unchanged (``reports/<task>/latest.json``) names that run's discarded candidate."""
    rows = []
    for task in tasks:
        champion = registry.champion(task)
        pointer = f"reports/{task}/latest.json"
        latest = registry.root.read_json(pointer) if registry.root.exists(pointer) else {}
        for version in registry.versions(task):
            row = {"task": task, **summarize(registry.manifest(task, version), champion)}
            row["unchanged_candidate"] = latest.get("unchanged_candidate") if latest.get("version") == version else None
            rows.append(row)
    return rows


def _partitions(names: list[str]) -> str:
    if len(names) <= 3:
        return ", ".join(names) or "none"
    return f"{len(names)}: {names[0]} .. {names[-1]}"


def _figure(row: dict) -> str:
    if row["value"] is None:
        return f"{row['metric']} n/a"
    ci = f" ({row['ci'][0]:.3f}-{row['ci'][1]:.3f})" if row["ci"] else ""
    return f"{row['metric']} {row['value']:.3f}{ci}"


def _decision(row: dict) -> str:
    notes = [row["decision"]] + (["pinned champion"] if row["pinned"] else [])
    return ", ".join(notes + (["latest run unchanged"] if row["unchanged_candidate"] else []))


def format_table(rows: list[dict]) -> str:
    """A readable table per task; ``*`` marks the champion; each version's reasons follow its line."""
    lines: list[str] = []
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        cells = [(r["version"], r["created_utc"] or "?", _partitions(r["partitions"]), r["code_version"] or "?",
                  _figure(r), _decision(r)) for r in mine]  # fmt: skip
        widths = [max(len(c[i]) for c in [COLUMNS, *cells]) for i in range(len(COLUMNS))]
        lines += [f"{task}:", "  " + "  ".join(h.ljust(w) for h, w in zip(COLUMNS, widths)).rstrip()]
        for row, fields in zip(mine, cells):
            mark = "*" if row["champion"] else " "
            lines.append(f"{mark} " + "  ".join(f.ljust(w) for f, w in zip(fields, widths)).rstrip())
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
    print(f"  parity on {record['n_test']} test rows: max |onnxruntime - {reference}| of the {record['compared']} = "
          f"{record['max_abs_diff']:.3g} (tolerance {record['tolerance']:g})")
    inputs = ", ".join(f"{name} (dynamic {', '.join(axes.values())})" for name, axes in record["inputs"].items())
    print(f"  inputs: {inputs}; output: {record['output']} {record['output_shape']}, then {record['then']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meddiag_pipelines.registry", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="every version: created, data partitions, code, AUROC, decision, reasons")
    listing.add_argument("task", nargs="?", help="one task (default: every task with a registry folder)")
    listing.add_argument("--json", action="store_true", help="one JSON list, for machines")
    for name in ("pin", "unpin"):
        cmd = sub.add_parser(name)
        cmd.add_argument("task")
        if name == "pin":
            cmd.add_argument("version")
    export = sub.add_parser("export", help="a version's model to ONNX, with an onnxruntime parity check on its "
                            "test split: exports/<task>/<version>/model.onnx and parity.json")  # fmt: skip
    export.add_argument("task")
    export.add_argument("version")
    args = parser.parse_args(argv)
    if args.command == "export":
        return export_command(args.task, args.version)
    registry = ModelRegistry(DataRoot(default_data_root()))
    if args.command == "list":
        tasks = [args.task] if args.task else registry.tasks()
        rows = version_rows(registry, tasks)
        print(json.dumps(rows, indent=2) if args.json else format_table(rows))
        return 0
    champion = registry.champion(args.task)
    try:
        if args.command == "pin":
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


if __name__ == "__main__":
    sys.exit(main())
