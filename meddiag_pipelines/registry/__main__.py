"""Registry command line: list versions, pin the champion to an earlier version (rollback), unpin, export to ONNX.

    meddiag registry list [heart_disease] [--json]
    meddiag registry pin heart_disease 20261129T000617.412Z-65bc273e
    meddiag registry unpin heart_disease
    meddiag registry export synthetic_chest_phantoms 20261129T000617.412Z-65bc273e

(also ``python -m meddiag_pipelines.registry ...``). This module declares the arguments and imports nothing heavy
(``meddiag --help`` builds them); what each command does is in ``registry/commands.py``.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0]
    sub = parser.add_subparsers(
        dest="registry_command", required=True, metavar="<command>", help="`<command> --help` describes it"
    )
    listing = sub.add_parser(
        "list",
        help="every version: created, data partitions, code, AUROC, decision, reasons",
        description="Every published version of a task (or of every task): created, data "
        "partitions, code version, headline figure with its 95% CI, the decision and its "
        "reasons; * marks the champion.",
    )
    listing.add_argument("task", nargs="?", help="one task (default: every task with a registry folder)")
    listing.add_argument("--json", action="store_true", help="one JSON list, for machines")
    pin = sub.add_parser(
        "pin",
        help="make an earlier version the champion and keep it (a rollback)",
        description="Point champion.json at a published version and pin it: no candidate replaces "
        "it automatically until `registry unpin`.",
    )
    pin.add_argument("task", help="the task's name")
    pin.add_argument("version", help="a published version, as `registry list` shows it")
    unpin = sub.add_parser(
        "unpin",
        help="let promotion replace the pinned champion again",
        description="Keep the current champion but unpin it, so that the next candidate that "
        "passes the promotion gate replaces it.",
    )
    unpin.add_argument("task", help="the task's name")
    export = sub.add_parser(
        "export",
        help="a version's model to ONNX, checked against onnxruntime",
        description="Export a version's model to ONNX with an onnxruntime parity check on its "
        "test split: exports/<task>/<version>/model.onnx and parity.json (the `large` "
        "extra).",
    )
    export.add_argument("task", help="the task's name")
    export.add_argument("version", help="a published version, as `registry list` shows it")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meddiag_pipelines.registry")
    add_arguments(parser)
    args = parser.parse_args(argv)
    from meddiag_pipelines.registry.commands import run  # after parsing: --help imports nothing heavy

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
