"""The project's command line: ``meddiag <command>`` (or ``python -m meddiag_pipelines <command>``).

    meddiag update [<task> ...] [--partition <batch>] [-v]   bring tasks up to date from landing; a line per task
    meddiag init <task> <file-or-folder> [--out FILE]        draft a task spec from landed data
    meddiag requeue <task> <batch>                           send a quarantined batch back to landing
    meddiag reset <task> --yes                               forget a task's warehouse state
    meddiag registry list|pin|unpin|export ...               model versions, rollback, ONNX export

This module declares every command's arguments and imports nothing heavy, so that ``--help`` answers at once; a
command's module (Dagster, polars, torch ...) is imported only when the command runs, and its ``run(args)`` returns
the exit status.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

from meddiag_pipelines.registry.__main__ import add_arguments as registry_arguments


@dataclass(frozen=True)
class Command:
    summary: str  # its line in ``meddiag --help``
    arguments: Callable[[argparse.ArgumentParser], None]
    module: str  # holds ``run(args) -> int``


def update_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Bring tasks fully up to date from their landing folders: register each new complete batch "
        "as a partition, ingest and validate it, then retrain, evaluate, decide the champion and "
        "score. Ends with one line per task: its figure with the 95% CI, the champion decision and "
        "its first reason, and the report's path."
    )
    parser.add_argument("tasks", nargs="*", metavar="task", help="task names (default: every task)")
    parser.add_argument(
        "--partition",
        metavar="BATCH",
        help="run this one batch (a folder of landing/<task>/) and what follows it; needs one task",
    )
    parser.add_argument(
        "--max-wait",
        type=float,
        metavar="SECONDS",
        help="how long a run may wait for another live run of its task (default: 4 hours, the "
        "longest image or text retrain)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log at DEBUG, with Dagster's event of every step (default: INFO)"
    )


def init_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Print a draft task spec (YAML) guessed from a landed file or batch folder."
    parser.add_argument("task", help="the task name (lower-case identifier)")
    parser.add_argument("source", type=Path, help="a CSV / Parquet / .npz file, or a batch folder")
    parser.add_argument("--out", type=Path, help="write the draft to this file (atomically) instead of printing it")


def _task_and_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", help="the task's name (its spec's 'name')")
    parser.add_argument("--data-dir", type=Path, help="the data root (default: MEDDIAG_DATA_DIR or data/)")


def requeue_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Send a quarantined batch back to landing with a fresh _READY and forget its ledger "
        "entry, so that the next run reads it again. Refused while a run of the task is in "
        "flight."
    )
    _task_and_data_dir(parser)
    parser.add_argument("batch", help="the batch's name, as in quarantine/<task>/<batch>/")


def reset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Forget the task's warehouse state: ledger, raw records, label domain, asset tables. "
        "Models, reports, landing and quarantine are left alone. Refused while a run of the task "
        "is in flight."
    )
    _task_and_data_dir(parser)
    parser.add_argument("--yes", action="store_true", help="confirm: the task's warehouse state is deleted")


COMMANDS = {
    "update": Command(
        "bring tasks up to date from landing; one summary line per task", update_arguments, "meddiag_pipelines.update"
    ),
    "init": Command("draft a task spec from landed data", init_arguments, "meddiag_pipelines.draft"),
    "requeue": Command("send a quarantined batch back to landing", requeue_arguments, "meddiag_pipelines.recover"),
    "reset": Command("forget a task's warehouse state", reset_arguments, "meddiag_pipelines.recover"),
    "registry": Command(
        "model versions: list, pin (rollback), unpin, export to ONNX",
        registry_arguments,
        "meddiag_pipelines.registry.commands",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meddiag",
        epilog="`meddiag <command> --help` describes a command and its arguments.",
        description="Medical assisted-diagnosis pipelines on Dagster: bring tasks up to date from their landing "
        "folders, draft task specs, recover batches, manage model versions.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="<command>", help="one of")
    for name, command in COMMANDS.items():
        command.arguments(sub.add_parser(name, help=command.summary))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return import_module(COMMANDS[args.command].module).run(args)


if __name__ == "__main__":
    sys.exit(main())
