"""``meddiag update [<task> ...] [--partition <batch>] [-v]``: bring tasks fully up to date from their landing
folders, as the landing sensor and the automation sensor would, without a daemon.

Per task: register every new complete batch as a partition (a name Dagster refuses is quarantined), run
raw_records + validated_records over the new partitions in runs of partition ranges (at most
``RUN_PARTITIONS`` each, as the sensor asks), and over the known ones to run again (re-landed, changed, or
left by a failed run) in ranges of consecutive ones, then, if anything upstream changed since, one run of every
other asset of the task. Each is a real run of the instance (visible in the UI) with the tags sensor runs carry
(``meddiag/task``, ``meddiag/trigger: cli``), executed through ``dagster.execute_job`` on the reconstructable
implicit asset job, so ``MEDDIAG_EXECUTOR`` applies.

Before each run, a run of the task whose process is gone is marked failed and its pool slots freed
(:mod:`~meddiag_pipelines.defs.dead_runs`, also while the run executes); a live one is waited for, at most
``--max-wait`` seconds, in a loop that SIGTERM and Ctrl-C stop at once (Dagster's own wait for a pool slot does not).

It logs at INFO (``-v``: DEBUG, with Dagster's event of every step on the console; the instance records every
event either way) and ends with one line per task (:mod:`~meddiag_pipelines.registry.summary`): its figure, what
was decided and why, the report. A first model the promotion gate refuses leaves the task without a champion: its
run ends failed on the champion check, and the error names the gate's reason.

The instance is ``DAGSTER_HOME``'s; without it, the repository's ``dagster_home/`` (the one ``dagster dev``
uses in the README): the partitions and run history must outlive the command, which a throwaway instance would
not, and a first user should not have to set a variable to get the main command to work.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from meddiag_pipelines.dagster_internals import reconstructable_job
from meddiag_pipelines.defs.automation.landing import range_tags, run_tags
from meddiag_pipelines.defs.build import build_definitions
from meddiag_pipelines.defs.dead_runs import TASK_TAG, describe, process_tags, release_dead_runs, releasing_dead_runs
from meddiag_pipelines.defs.partitions import LandingScan, batch_partitions, ingestion_keys, run_ranges, scan_landing
from meddiag_pipelines.defs.resources.storage import MeddiagStorage
from meddiag_pipelines.defs.selection_guard import IMPLICIT_ASSET_JOB
from meddiag_pipelines.ingestion.landing import LandingFolderError, ready_batch_dirs
from meddiag_pipelines.registry.store import ModelRegistry
from meddiag_pipelines.registry.summary import TaskSummary, task_summary
from meddiag_pipelines.specs import SPEC_ERRORS_GROUP, TaskSpec, scan_specs

log = logging.getLogger(__name__)
REPO_DAGSTER_HOME = Path(__file__).resolve().parent.parent / "dagster_home"
MAX_WAIT_S = 4 * 3600  # for another run of the task (an image or text retrain takes up to an hour or two)
POLL_S = 2.0
# The definitions the running `update` command built: its runs in this process (the in-process executor) reuse them
COMMAND_DEFINITIONS: ContextVar[dg.Definitions | None] = ContextVar("meddiag_update_definitions", default=None)


class UpdateError(RuntimeError):
    """A run failed or the command cannot start; the message says which and why. ``summary``: the task's line,
    when the failure still leaves one to show (a refused first model)."""

    def __init__(self, message: str, summary: TaskSummary | None = None):
        super().__init__(message)
        self.summary = summary


class RunFailed(UpdateError):
    """A run of the instance ended failed; ``run_id`` names it."""

    def __init__(self, message: str, run_id: str):
        super().__init__(message)
        self.run_id = run_id


@dataclass
class TaskUpdate:
    task: str
    batch_runs: list[str] = field(default_factory=list)  # run ids
    downstream_run: str | None = None
    new: list[str] = field(default_factory=list)
    again: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    summary: TaskSummary | None = None


def update_definitions() -> dg.Definitions:
    """The project's definitions from the environment (spec folders, data root): built once by an ``update``
    command for every task and run it executes in its own process, and again by each run or step process."""
    return COMMAND_DEFINITIONS.get() or build_definitions()


@contextmanager
def command_definitions() -> Iterator[None]:
    """One build of the definitions for the whole command (:func:`update_definitions`)."""
    token = COMMAND_DEFINITIONS.set(build_definitions())
    try:
        yield
    finally:
        COMMAND_DEFINITIONS.reset(token)


def reconstructable_asset_job(module: str, definitions_fn: str):
    """The implicit asset job (the one behind ``dagster asset materialize``) of the definitions that
    ``module.definitions_fn()`` builds, reconstructable so that step processes can rebuild it."""
    return reconstructable_job(module, definitions_fn, IMPLICIT_ASSET_JOB)


def update_job():
    return reconstructable_asset_job(__name__, update_definitions.__name__)


def group_keys(job: dg.JobDefinition, spec: TaskSpec) -> tuple[list[dg.AssetKey], list[dg.AssetKey]]:
    """The task's batch-level asset keys (partitioned, fed by partitioned assets only: ingestion) and the others
    (the unpartitioned steps, and partitioned ones that follow them, such as ``predictions``)."""
    layer = job.asset_layer
    keys = [k for k in layer.executable_asset_keys if layer.get(k).group_name == spec.name]
    batch = ingestion_keys({k: layer.get(k).parent_keys for k in keys if layer.get(k).partitions_def is not None})
    return sorted(batch), sorted(set(keys) - batch)


def all_partitions_tags(
    job: dg.JobDefinition, keys: list[dg.AssetKey], instance: dg.DagsterInstance, spec: TaskSpec
) -> dict:
    """A run of ``keys`` that holds a partitioned asset covers every partition (one run, a single-run backfill)."""
    if not any(job.asset_layer.get(k).partitions_def is not None for k in keys):
        return {}
    partitions = instance.get_dynamic_partitions(batch_partitions(spec).name)
    return range_tags(partitions) if partitions else {}


def plan_batches(
    spec: TaskSpec, storage: MeddiagStorage, instance: dg.DagsterInstance, partition: str | None = None
) -> LandingScan:
    """Register the new complete batches as partitions; with ``partition``, only that batch is considered."""
    name = batch_partitions(spec).name
    known = set(instance.get_dynamic_partitions(name))
    try:
        scan = scan_landing(spec, storage.root, storage.warehouse, known)
    except LandingFolderError as exc:
        raise UpdateError(f"{spec.name}: {exc}") from None
    if partition is not None:
        if partition not in known and partition not in scan.new:
            ready = {d.name for d in ready_batch_dirs(storage.root.landing(spec.landing_folder), spec.landing)}
            raise UpdateError(
                f"{spec.name}: batch {partition!r} is neither a partition nor a complete batch in "
                f"landing/{spec.landing_folder}/"
                + (" (its name cannot be a partition key)" if partition in ready else "")
            )
        # the named batch runs even if nothing changed: the user asked for it
        scan = LandingScan(
            new={k: v for k, v in scan.new.items() if k == partition},
            again={} if partition in scan.new else {partition: scan.again.get(partition, "")},
            refused=scan.refused,
        )
    if scan.new:
        _add_partitions(instance, name, sorted(scan.new))
    return scan


def _add_partitions(instance: dg.DagsterInstance, name: str, keys: list[str]) -> None:
    """Dagster checks, then inserts: another ``update`` (or the sensor) adding the same keys in between makes the
    insert fail on the storage's unique key. Keys that are partitions afterwards are what was asked for (the
    ledger still ingests each batch once); anything else is a real failure."""
    try:
        instance.add_dynamic_partitions(name, keys)
    except Exception:
        if not set(keys) <= set(instance.get_dynamic_partitions(name)):
            raise


def wait_for_task(instance: dg.DagsterInstance, task: str, max_wait_s: float) -> None:
    """Return once no other run holds ``task``: dead runs are released at once, live ones (not queued: those wait
    for this one) are waited for, ``POLL_S`` at a time, at most ``max_wait_s`` seconds."""
    deadline, announced = time.monotonic() + max_wait_s, set()
    while True:
        runs = release_dead_runs(instance, task)
        for message in runs.released:
            log.info(message)
        live = [r for r in runs.live if r.status != dg.DagsterRunStatus.QUEUED]
        if not live:
            return
        for run in live:
            if run.run_id not in announced:
                log.info("%s: waiting for %s to end", task, describe(run))
                announced.add(run.run_id)
        if time.monotonic() >= deadline:
            raise UpdateError(
                f"{task}: still held after {max_wait_s:g} s by {', '.join(describe(r) for r in live)}; "
                "let it end (a longer --max-wait) or terminate it in the Dagster UI, then run update "
                "again (a run whose process is gone is released by itself)"
            )
        time.sleep(POLL_S)


def console_config(verbose: bool) -> dict:
    """The run config that sets the level of a run's console log. Dagster logs every step's events (start,
    inputs, outputs, success: hundreds of lines a run) at DEBUG, and its default console shows DEBUG; the instance
    stores every event whatever this level."""
    return {"loggers": {"console": {"config": {"log_level": "DEBUG" if verbose else "INFO"}}}}


def _execute(
    instance: dg.DagsterInstance,
    keys: list[dg.AssetKey],
    tags: dict,
    what: str,
    defs: dg.Definitions | None,
    max_wait_s: float,
    verbose: bool,
) -> str:
    task = tags[TASK_TAG]
    wait_for_task(instance, task, max_wait_s)
    run = {
        "instance": instance,
        "tags": {**tags, **process_tags()},
        "asset_selection": keys,
        "run_config": console_config(verbose),
        "raise_on_error": False,
    }
    with releasing_dead_runs(instance, task, log.info):
        if defs is None:
            result = dg.execute_job(update_job(), **run)
        else:
            result = defs.resolve_implicit_global_asset_job_def().execute_in_process(**run)
    if not result.success:
        failed = [e.step_key for e in result.all_events if e.is_step_failure]
        checks = [
            f"; check {e.check_name} failed: {e.description}"
            for e in result.get_asset_check_evaluations()
            if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR and e.description
        ]
        raise RunFailed(
            f"{what}: run {result.run_id} failed (steps: {', '.join(failed) or 'none started'}){''.join(checks)}; "
            "its log in the UI, or `dagster run list`, says why",
            result.run_id,
        )
    return result.run_id


def _downstream_stale(instance: dg.DagsterInstance, batch: list[dg.AssetKey], downstream: list[dg.AssetKey]) -> bool:
    """Whether a downstream asset was never materialized or is older than the latest batch-level one."""
    upstream = [e.timestamp for k in batch if (e := instance.get_latest_materialization_event(k)) is not None]
    if not upstream:
        return False
    events = [instance.get_latest_materialization_event(k) for k in downstream]
    return any(e is None or e.timestamp < max(upstream) for e in events)


def update_task(
    spec: TaskSpec,
    instance: dg.DagsterInstance,
    partition: str | None = None,
    defs: dg.Definitions | None = None,
    max_wait_s: float = MAX_WAIT_S,
    verbose: bool = False,
) -> TaskUpdate:
    """Bring one task up to date; its :class:`TaskSummary` says what it reached. ``defs``: run in this process on
    these definitions (tests, benches) instead of the project's reconstructable job; ``max_wait_s``: how long each
    run may wait for another run of the task; ``verbose``: show every step's events on the console."""
    loaded = defs or update_definitions()
    job = loaded.resolve_implicit_global_asset_job_def()
    batch_keys, downstream = group_keys(job, spec)
    if not batch_keys:  # its spec loaded but Dagster refused to build it: a spec_errors asset says why
        raise UpdateError(
            f"{spec.name}: the task could not be built (its error is logged at load and shown as an "
            f"asset of the group {SPEC_ERRORS_GROUP}); nothing was run"
        )
    storage = loaded.resources["storage"]
    scan = plan_batches(spec, storage, instance, partition)
    outcome = TaskUpdate(spec.name, new=sorted(scan.new), again=sorted(scan.again), refused=scan.refused)
    tags = run_tags(spec, "cli")
    if outcome.new:
        log.info(
            "%s: %d new batches registered as partitions: %s", spec.name, len(outcome.new), ", ".join(outcome.new[:20])
        )
    for chunk in run_ranges(outcome.new):
        outcome.batch_runs.append(
            _execute(
                instance,
                batch_keys,
                {**tags, **range_tags(chunk)},
                f"{spec.name}: ingestion of {len(chunk)} new batches ({chunk[0]} to {chunk[-1]})",
                defs,
                max_wait_s,
                verbose,
            )
        )
    # known partitions to run again (after a failed run, every batch it held), by ranges of consecutive ones
    for keys in run_ranges(scan.again, instance.get_dynamic_partitions(batch_partitions(spec).name)):
        log.info(
            "%s: batches %s to %s run again (re-landed, changed or not ingested yet)", spec.name, keys[0], keys[-1]
        )
        outcome.batch_runs.append(
            _execute(
                instance,
                batch_keys,
                {**tags, **range_tags(keys)},
                f"{spec.name}: ingestion of batches {keys[0]} to {keys[-1]}",
                defs,
                max_wait_s,
                verbose,
            )
        )
    since = None
    if downstream and (outcome.batch_runs or _downstream_stale(instance, batch_keys, downstream)):
        scope, since = all_partitions_tags(job, downstream, instance, spec), time.time()
        try:
            outcome.downstream_run = _execute(
                instance, downstream, {**tags, **scope}, f"{spec.name}: split to predictions", defs, max_wait_s, verbose
            )
        except RunFailed as exc:
            raise _refused_first_model(storage.registry, spec.name, since, exc) from None
    outcome.summary = task_summary(storage.registry, spec.name, since)
    return outcome


def _refused_first_model(registry: ModelRegistry, task: str, since: float, failure: RunFailed) -> UpdateError:
    """A run that failed because the gate refused the task's first model (the champion check then fails, and
    nothing is scored) says so with the gate's reason; any other failure is passed on as it is."""
    summary = task_summary(registry, task, since)
    if summary.refusal is None or registry.champion(task) is not None:
        return failure
    return UpdateError(
        f"{task}: not promoted: {summary.refusal}; the task has no champion, so nothing was scored "
        f"(run {failure.run_id} ends failed on its champion check)",
        summary,
    )


def whole_task_run(
    defs: dg.Definitions, spec: TaskSpec, instance: dg.DagsterInstance, selection: list[str] | None = None
) -> tuple[list[dg.AssetKey], dict]:
    """For tests and benches: register the task's new batches, and give the asset keys (``selection``: asset
    names of the task; default all) and tags of ONE run over every partition, as the task job ran before batches
    were partitions."""
    plan_batches(spec, defs.resources["storage"], instance)
    job = defs.resolve_implicit_global_asset_job_def()
    layer = job.asset_layer
    chosen = [
        k
        for k in layer.executable_asset_keys
        if layer.get(k).group_name == spec.name and (selection is None or k.path[-1] in selection)
    ]
    scope = all_partitions_tags(job, chosen, instance, spec)
    if not scope:  # nothing landed (or nothing partitioned chosen): only the unpartitioned assets can run
        chosen = [k for k in chosen if layer.get(k).partitions_def is None]
    return sorted(chosen), {**run_tags(spec, "test"), **scope}


def run_task_in_process(
    defs: dg.Definitions, spec: TaskSpec, instance: dg.DagsterInstance, selection: list[str] | None = None, **kwargs
) -> dg.ExecuteInProcessResult:
    """:func:`whole_task_run`, executed in this process."""
    chosen, tags = whole_task_run(defs, spec, instance, selection)
    return defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, tags={**tags, **kwargs.pop("tags", {})}, asset_selection=chosen, **kwargs
    )


def instance_home() -> Path:
    home = os.environ.get("DAGSTER_HOME")
    if home:
        return Path(home)
    if not (REPO_DAGSTER_HOME / "dagster.yaml").is_file():
        raise UpdateError(
            "DAGSTER_HOME is not set and there is no dagster_home/ beside the package: set DAGSTER_HOME "
            "to the Dagster instance folder"
        )
    return REPO_DAGSTER_HOME


def configure_logging(verbose: bool) -> None:
    """The project's loggers at INFO (``verbose``: DEBUG); other libraries' (alembic, great_expectations ...) at
    WARNING, since their INFO lines say nothing about the tasks."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("meddiag_pipelines").setLevel(logging.DEBUG if verbose else logging.INFO)


def run(args: argparse.Namespace) -> int:
    """Every named task (default: all; the name of a spec of several outcomes names its tasks) in turn, then one
    line per task; one that fails, or a spec that does not load, does not stop the others, and the exit status
    is 1."""
    configure_logging(args.verbose)
    scan = scan_specs()
    specs = {s.name: s for s in scan.specs}
    families = {s.family.name: s.family.tasks for s in scan.specs if s.family}
    named = [t for name in args.tasks for t in families.get(name, [name])]
    unknown = [t for t in named if t not in specs]
    if unknown or (args.partition and len(named) != 1):
        why = f"unknown tasks: {', '.join(unknown)}" if unknown else "--partition needs exactly one task"
        log.error("update: %s", why)
        for error in scan.errors:  # a named task is unknown most often because its spec does not load
            log.error("update: task spec not loaded: %s", error)
        return 2
    failed = [] if named else [str(e) for e in scan.errors]
    for error in failed:
        log.error("update: task spec not loaded (the other tasks run): %s", error)
    try:
        home = instance_home()
    except UpdateError as exc:
        log.error("update: %s", exc)
        return 1
    os.environ["DAGSTER_HOME"] = str(home)  # the runs' own processes (multiprocess executor) use it too
    log.info("update: Dagster instance %s", home)
    max_wait_s = MAX_WAIT_S if args.max_wait is None else args.max_wait
    lines = []
    with command_definitions(), dg.DagsterInstance.get() as instance:
        for task in named or sorted(specs):
            try:
                lines.append(
                    update_task(
                        specs[task], instance, args.partition, max_wait_s=max_wait_s, verbose=args.verbose
                    ).summary.line()
                )
            except UpdateError as exc:
                log.error("update: %s", exc)
                failed.append(task)
                lines.append(exc.summary.line() if exc.summary else f"{task}: failed (the error above says why)")
            except KeyboardInterrupt:
                log.error("update: interrupted while updating %s", task)
                return 130
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    return 1 if failed else 0
