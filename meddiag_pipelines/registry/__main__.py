"""Registry command line: list versions, pin the champion to an earlier version (rollback), unpin.

    python -m meddiag_pipelines.registry list heart_disease
    python -m meddiag_pipelines.registry pin heart_disease 20261129T000617Z-65bc273e
    python -m meddiag_pipelines.registry unpin heart_disease
"""

from __future__ import annotations

import argparse
import sys

from meddiag_pipelines.layout import default_data_dir
from meddiag_pipelines.registry.store import ModelRegistry, RegistryError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meddiag_pipelines.registry", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("list", "pin", "unpin"):
        cmd = sub.add_parser(name)
        cmd.add_argument("task")
        if name == "pin":
            cmd.add_argument("version")
    args = parser.parse_args(argv)
    registry = ModelRegistry(default_data_dir() / "models")
    champion = registry.champion(args.task)
    try:
        if args.command == "list":
            for version in registry.versions(args.task):
                decision = registry.manifest(args.task, version).get("decision", {})
                mark = "*" if champion and champion["version"] == version else " "
                print(f"{mark} {version}  promoted={decision.get('promote')}")
        elif args.command == "pin":
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
