"""The recovery commands, after a spec or an export was fixed (``meddiag requeue | reset``; their arguments are
declared in meddiag_pipelines/__main__.py; what they do to the data root is
:mod:`meddiag_pipelines.ingestion.recovery`):

    requeue <task> <batch>   send a quarantined batch back to landing with a fresh _READY
    reset <task> --yes       forget the task's warehouse state

Both run outside Dagster, so the task's pool cannot serialise them, and they take no lock (a lock file is one
host's): each refuses while the Dagster instance (``DAGSTER_HOME``'s, as for ``update``; with PostgreSQL, every
host's) holds a queued or running run of the task. A run whose process is gone is first marked failed and its
pool slots freed, as ``update`` does, so a killed run never blocks them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import dagster as dg

from meddiag_pipelines.defs.dead_runs import TaskRuns, describe, release_dead_runs
from meddiag_pipelines.ingestion.recovery import RecoveryError, check_plain_name, requeue, reset
from meddiag_pipelines.ingestion.warehouse import Warehouse
from meddiag_pipelines.storage import DataRoot, default_data_dir
from meddiag_pipelines.update import UpdateError, instance_home


def runs_in_flight(task: str) -> TaskRuns:
    """The task's runs queued or running in the Dagster instance (a run carries the tag ``meddiag/task``), after
    releasing those whose process is gone (:mod:`~meddiag_pipelines.defs.dead_runs`)."""
    try:
        home = instance_home()
    except UpdateError as exc:
        raise RecoveryError(f"cannot tell whether a run of {task} is in flight: {exc}") from exc
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return release_dead_runs(instance, task)


def refuse_while_running(task: str) -> None:
    runs = runs_in_flight(task)
    for message in runs.released:
        print(message)
    if runs.live:
        raise RecoveryError(
            f"{task} has {len(runs.live)} run(s) queued or running in the Dagster instance "
            f"({'; '.join(describe(r) for r in runs.live)}); wait until they end (or terminate them "
            "in the Dagster UI) and run this again"
        )


def run(args: argparse.Namespace) -> int:
    root = DataRoot(Path(args.data_dir or default_data_dir()))
    warehouse = Warehouse(root)
    try:
        check_plain_name("task", args.task)
        refuse_while_running(args.task)
        if args.command == "requeue":
            target = requeue(root, warehouse, args.task, args.batch)
            print(f"{args.task}: batch {args.batch} is back in {target}; the next run reads it again")
        else:
            if not args.yes:
                raise RecoveryError(
                    f"reset forgets every batch of {args.task} the warehouse holds; run it again with --yes to confirm"
                )
            reset(root, warehouse, args.task)
            print(
                f"{args.task}: warehouse state forgotten; the batches still in landing/{args.task}/ are read again "
                "by the next run"
            )
    except RecoveryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
