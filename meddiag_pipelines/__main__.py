"""The project's command line (the registry has its own: ``python -m meddiag_pipelines.registry``).

    python -m meddiag_pipelines init <task> <file-or-folder> [--out FILE]   draft a task spec from landed data
    python -m meddiag_pipelines requeue <task> <batch>                      send a quarantined batch back to landing
    python -m meddiag_pipelines reset <task>                                forget a task's warehouse state
    python -m meddiag_pipelines update [<task> ...] [--partition <batch>]   bring tasks up to date from landing

Each sub-command lives beside the code it drives; this module only dispatches.
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

# sub-command -> module with ``add_arguments(parser)`` and ``run(args) -> int``
COMMANDS = {
    "init": "meddiag_pipelines.draft",
    "requeue": "meddiag_pipelines.ingestion.recovery",
    "reset": "meddiag_pipelines.ingestion.recovery",
    "update": "meddiag_pipelines.update",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meddiag_pipelines", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        import_module(module).add_arguments(name, sub.add_parser(name))
    args = parser.parse_args(argv)
    return import_module(COMMANDS[args.command]).run(args)


if __name__ == "__main__":
    sys.exit(main())
