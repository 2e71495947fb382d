"""Recovery commands, after a spec or an export was fixed (run through ``python -m meddiag_pipelines``):

    requeue <task> <batch>   move a quarantined batch back to landing under its name, with a fresh _READY, and
                             forget its ledger entry and records, so the next run reads it again
    reset <task> --yes       forget the task's warehouse state (ledger, raw records, label domain, asset tables
                             and views); models, reports, landing and quarantine are left alone

Both run outside Dagster, so the task's pool cannot serialise them, and they take no lock (a lock file is one
host's): each refuses while the Dagster instance (``DAGSTER_HOME``'s, as for ``update``; with PostgreSQL, every
host's) holds a queued or running run of the task. A run whose process is gone is first marked failed and its
pool slots freed, as ``update`` does, so a killed run never blocks them. A run that starts during a requeue
cannot corrupt the ledger either: the requeue adds an entry, and every entry is created once
(:class:`~meddiag_pipelines.ingestion.warehouse.Warehouse`), so the run's entries and the command's are all kept,
in order, and the newest wins. Reset deletes the task's ledger, state and asset values, which no run can share:
pause the task's sensor and schedule before it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from meddiag_pipelines.defs.dead_runs import TaskRuns, describe, release_dead_runs
from meddiag_pipelines.ingestion.landing import READY_MARKER
from meddiag_pipelines.ingestion.warehouse import Warehouse
from meddiag_pipelines.layout import DataLayout, default_data_dir

REASON_FILE = "reason.json"


class RecoveryError(Exception):
    """A request that cannot be carried out; the message says why and what to do."""


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", help="the task's name (its spec's 'name')")
    parser.add_argument("--data-dir", type=Path, default=None, help="the data root (default: MEDDIAG_DATA_DIR or data/)")
    if name == "requeue":
        parser.description = "Send a quarantined batch back to landing so that the next run reads it again."
        parser.add_argument("batch", help="the batch's name, as in quarantine/<task>/<batch>/")
    else:
        parser.description = ("Forget the task's warehouse state: ledger, raw records, label domain, asset tables. "
                              "Models, reports, landing and quarantine are left alone.")  # fmt: skip
        parser.add_argument("--yes", action="store_true", help="confirm: the task's warehouse state is deleted")


def runs_in_flight(task: str) -> TaskRuns:
    """The task's runs queued or running in the Dagster instance (a run carries the tag ``meddiag/task``), after
    releasing those whose process is gone (:mod:`~meddiag_pipelines.defs.dead_runs`)."""
    import dagster as dg

    from meddiag_pipelines.update import UpdateError, instance_home

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
        raise RecoveryError(f"{task} has {len(runs.live)} run(s) queued or running in the Dagster instance "
                            f"({'; '.join(describe(r) for r in runs.live)}); wait until they end (or terminate them "
                            "in the Dagster UI) and run this again")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    layout = DataLayout(Path(args.data_dir or default_data_dir()))
    warehouse = Warehouse(layout.warehouse_db())
    try:
        _single_name("task", args.task)
        refuse_while_running(args.task)
        if args.command == "requeue":
            target = requeue(layout, warehouse, args.task, args.batch)
            print(f"{args.task}: batch {args.batch} is back in {target}; the next run reads it again")
        else:
            if not args.yes:
                raise RecoveryError(f"reset forgets every batch of {args.task} the warehouse holds; run it again "
                                    "with --yes to confirm")  # fmt: skip
            reset(layout, warehouse, args.task)
            print(f"{args.task}: warehouse state forgotten; the batches still in landing/{args.task}/ are read again "
                  "by the next run")  # fmt: skip
    except RecoveryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _single_name(kind: str, name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name or name.startswith((".", "_")):
        raise RecoveryError(f"{kind} name must be a plain folder name")


def requeue(layout: DataLayout, warehouse: Warehouse, task: str, batch: str) -> Path:
    """Move ``quarantine/<task>/<batch>/`` back to ``landing/<task>/<batch>/`` with a fresh ``_READY`` and forget
    its ledger entry and records. Refused (nothing changed) unless the ledger holds the batch as quarantined
    and its folder is in quarantine, or when landing already holds a folder of that name."""
    _single_name("task", task)
    _single_name("batch", batch)
    source = layout.quarantine(task) / batch
    target = layout.landing(task) / batch
    rows = warehouse.ledger(task).filter(batch_id=batch)
    status = rows["status"][0] if rows.height else None
    if status != "quarantined" or source.is_symlink() or not source.is_dir():
        found = f"its ledger state is {status!r}" if status else "the ledger does not know it"
        raise RecoveryError(f"batch {batch} of {task} is not quarantined ({found}; quarantine/{task}/{batch}/ "
                            f"{'exists' if source.is_dir() else 'does not exist'}); only a quarantined batch can be requeued")  # fmt: skip
    if target.exists() or target.is_symlink():
        raise RecoveryError(f"landing/{task}/{batch} already exists; move it away or land the batch under a new name")
    layout.confine(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(source), str(target))
    _drop_bookkeeping(target)
    warehouse.forget_batch(task, batch)  # before the marker: a sensor tick finds the batch only once it is forgotten
    (target / READY_MARKER).touch()
    return target


def _drop_bookkeeping(batch_dir: Path) -> None:
    """Quarantine reasons are not part of the export, and a ``reason.json`` left beside
    the batch's data would be read as data: each is kept as ``_REQUEUED_reason.json`` (a name starting with
    '_' is never data)."""
    for reason in sorted(batch_dir.rglob(REASON_FILE)):
        if reason.is_file() and not reason.is_symlink():
            reason.rename(reason.with_name(f"_REQUEUED_{REASON_FILE}"))


def reset(layout: DataLayout, warehouse: Warehouse, task: str) -> None:
    """Forget everything the warehouse holds for ``task``; models, reports, landing and quarantine stay."""
    _single_name("task", task)
    warehouse.forget_task(task)
    for folder in layout.asset_values(task):
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder)
