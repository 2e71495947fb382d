"""Each landed batch of a task is one partition of that task's batch-level assets (key = its ``BatchKey``).

:func:`scan_landing` is what the landing sensor and the ``update`` command share: which ready batch folders are
not partitions yet, which known ones need their partition run again (content re-landed or changed in place,
or a quarantine move to finish), and which names Dagster refuses as partition keys (quarantined at once).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from meddiag_pipelines.ingestion.batches import IngestSummary, batch_changes, private_names, refuse_batch
from meddiag_pipelines.ingestion.landing import (
    READY_MARKER,
    BatchKey,
    batch_key,
    batch_key_problem,
    check_landing_folder,
    describe_batch,
    ready_batch_dirs,
)
from meddiag_pipelines.ingestion.warehouse import Warehouse
from meddiag_pipelines.specs import TaskSpec
from meddiag_pipelines.storage import DataRoot

RUN_PARTITIONS = 20
"""New partitions per ingestion run. Before a run's first step Dagster OSS writes one "materialization planned"
event per partition and asset (60-100 ms each on SQLite; only Dagster+ storage takes a partition subset): 20 new
batches x 2 ingestion assets plan in 2.5-4 s, where ONE run over a backlog of 1,000 waited a minute or more
(bench/README.md, Partitions). Each run also costs its own start (a process under the daemon), hence not fewer. Dagster's opt-in subset event (``DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS``) would plan in
O(1), but OSS storage then loses each batch's in-progress and failed state, and the variable would be needed in
every process that creates runs (daemon, webserver, CLI)."""


def run_ranges(keys: Iterable[str], order: list[str] | None = None) -> list[list[str]]:
    """``keys`` cut into ingestion runs of at most :data:`RUN_PARTITIONS` partitions consecutive in ``order``
    (the order the partitions were added; default ``keys`` itself: new partitions, added in that order after every
    known one), so that each run's range covers its keys and nothing else."""
    keys = list(keys)
    wanted, ranges, last = set(keys), [], None
    for i, key in enumerate(keys if order is None else order):
        if key not in wanted:
            continue
        if ranges and last == i - 1 and len(ranges[-1]) < RUN_PARTITIONS:
            ranges[-1].append(key)
        else:
            ranges.append([key])
        last = i
    return ranges


def batch_partitions(spec: TaskSpec) -> dg.DynamicPartitionsDefinition:
    """The task's batches, registered by its landing sensor or the ``update`` command."""
    return dg.DynamicPartitionsDefinition(name=f"{spec.name}__batches")


def ingestion_keys(partitioned: Mapping[dg.AssetKey, Iterable[dg.AssetKey]]) -> set[dg.AssetKey]:
    """The batch-level (ingestion) assets among a task's partitioned ones (``partitioned``: each one's parent
    keys): those fed by partitioned assets only. ``predictions``, partitioned too, follows the task-wide champion."""
    return {key for key, parents in partitioned.items() if all(p in partitioned for p in parents)}


def partition_key_problem(folder: Path) -> str | None:
    """Why ``folder``'s name cannot be a batch key or Dagster would refuse it as a partition key, in plain words
    (``None``: it is the batch's key and partition key)."""
    if problem := batch_key_problem(folder):
        return problem
    try:
        # Dagster's rule for keys, public here only (the instance stores any)
        dg.StaticPartitionsDefinition([batch_key(folder)])
    except dg.DagsterInvalidDefinitionError:
        return (
            "has a folder name Dagster cannot use as a partition key (it holds '...' or a control "
            "character such as a tab or newline); rename it"
        )
    return None


@dataclass
class LandingScan:
    new: dict[BatchKey, str] = field(default_factory=dict)  # batch -> content hash: ready folders not yet partitions
    again: dict[BatchKey, str] = field(default_factory=dict)  # known partitions whose folder needs another run
    refused: list[BatchKey] = field(default_factory=list)  # names Dagster refuses: quarantined now


def scan_landing(
    spec: TaskSpec, root: DataRoot, warehouse: Warehouse, partitions: set[str], retry_unrecorded: bool = True
) -> LandingScan:
    """Compare the landing folder with the task's partitions and its ledger. A known batch is hashed only when
    an entry of its folder is newer than the ledger's last word on it (nothing is hashed in the steady state).
    ``retry_unrecorded``: a partition the ledger does not know yet (its run failed, or is still going: the
    sensor passes ``False``) runs again. A landing folder that is a link or not a folder is refused
    (:class:`~meddiag_pipelines.ingestion.landing.LandingFolderError`), never scanned as empty."""
    check_landing_folder(root.landing(spec.landing_folder))
    if (store := root.object_store()) is not None:  # batches landed in the store's landing prefix
        marker = READY_MARKER if spec.landing.ready == "marker" else None
        store.take_ready_folders(
            store.relative(root.landing(spec.landing_folder)),
            root.landing(spec.landing_folder),
            marker,
            spec.landing.quiet_seconds,
        )
    ledger = {r["batch_id"]: r for r in warehouse.ledger(spec.name).iter_rows(named=True)}
    scan, private = LandingScan(), private_names(spec)
    for batch_dir in ready_batch_dirs(root.landing(spec.landing_folder), spec.landing):
        name = batch_key(batch_dir)
        row = ledger.get(name)
        if spec.landing.shared and row is not None and row["status"] == "quarantined":
            continue  # refused by this task, kept for the others that share the folder
        if problem := partition_key_problem(batch_dir):
            refuse_batch(spec, root, warehouse, describe_batch(spec.name, batch_dir), problem, IngestSummary())
            scan.refused.append(name)
            continue
        if name not in partitions:
            scan.new[name] = describe_batch(spec.name, batch_dir).content_hash
        elif (row is None and retry_unrecorded) or (row is not None and _needs_run(batch_dir, row, private)):
            scan.again[name] = describe_batch(spec.name, batch_dir).content_hash
    return scan


def _needs_run(batch_dir, row: dict, private: bool) -> bool:
    """Re-landed under a quarantined name (the run quarantines it again), or changed since it was ingested (the
    run sets the change aside); ``private``: the ledger lists the files under stand-ins (``private_names``)."""
    return row["status"] == "quarantined" or (
        not batch_dir.is_symlink() and batch_changes(batch_dir, row, private) is not None
    )
