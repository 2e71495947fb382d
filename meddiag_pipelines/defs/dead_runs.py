"""A run whose process is gone never holds a task: it is found, marked failed and its pool slots freed by
``update`` (before each of its runs, and while one runs), by ``requeue`` and ``reset``, and at every tick of the
task's landing sensor, so under the daemon too (Dagster's run monitoring cannot tell that a worker of the default
run launcher died: it times out runs that never start).

How a run names its processes: the tag ``meddiag/host`` that every run of the project carries (``run_tags``: the
host that creates the run; for a sensor's run that is the code server's, where the default run launcher starts the
worker), the pids Dagster writes into the run's engine events (the run worker's, each executor's), and for a run
of ``update`` its own pid (tag ``meddiag/pid``, there before Dagster's first event). A run in flight is dead when
it names this host and at least one process, and none of them is alive here (a pid reused since only delays
that: ``update`` waits a bounded time). A run of another host, or one without a recorded process (launched from
the UI, or whose worker has not started yet), is never judged.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

TASK_TAG, HOST_TAG, PID_TAG = "meddiag/task", "meddiag/host", "meddiag/pid"
# The statuses in which a run may still hold a task (a queued run holds no slot, but will start).
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
WATCH_INTERVAL_S = 5.0


def task_pool(task: str) -> str:
    """The concurrency pool of every asset of ``task`` (one step of the task at a time)."""
    return f"meddiag_{task}"


def host_tag() -> dict[str, str]:
    return {HOST_TAG: socket.gethostname()}


def process_tags() -> dict[str, str]:
    """The tags of a run executed in this process (``update``)."""
    return {**host_tag(), PID_TAG: str(os.getpid())}


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host and is not a zombie (killed, not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):  # no procfs: existing is alive
        return True
    return state != "Z"


def run_pids(instance: dg.DagsterInstance, run: dg.DagsterRun) -> set[int]:
    """The processes the run is known to have had: its ``meddiag/pid`` tag and the pids of its engine events."""
    pids = {run.tags.get(PID_TAG, "")}
    records = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT).records
    for record in records:
        pid = record.event_log_entry.dagster_event.engine_event_data.metadata.get("pid")
        pids.add(str(pid.value) if pid is not None else "")
    return {int(p) for p in pids if p.isdigit()}


def is_dead(instance: dg.DagsterInstance, run: dg.DagsterRun) -> bool:
    if run.is_finished or run.status == dg.DagsterRunStatus.QUEUED or run.tags.get(HOST_TAG) != socket.gethostname():
        return False
    pids = run_pids(instance, run)
    return bool(pids) and not any(process_alive(p) for p in pids)


def describe(run: dg.DagsterRun) -> str:
    """Where a run in flight runs, for messages: its status, host and pid as far as they are known."""
    where = f" on host {run.tags[HOST_TAG]}" if HOST_TAG in run.tags else " (no host recorded)"
    pid = f", pid {run.tags[PID_TAG]}" if PID_TAG in run.tags else ""
    return f"run {run.run_id} ({run.status.value.lower()}{where}{pid})"


@dataclass
class TaskRuns:
    released: list[str] = field(default_factory=list)  # one message per run released (no record content)
    live: list[dg.DagsterRun] = field(default_factory=list)  # in flight and alive, or not judged


def release_dead_runs(instance: dg.DagsterInstance, task: str) -> TaskRuns:
    """Mark the task's dead runs failed and free their pool slots, and free the slots that finished runs still
    hold in the task's pool. Returns what was released and the task's runs still in flight (tagged with the task,
    or holding or awaiting its pool)."""
    found = TaskRuns()
    holders = _pool_holders(instance, task)
    tagged = instance.get_run_ids(dg.RunsFilter(statuses=IN_FLIGHT, tags={TASK_TAG: task}))
    for run_id in sorted(holders | set(tagged)):
        run = instance.get_run_by_id(run_id)
        if run is not None and not run.is_finished:
            if not is_dead(instance, run):
                found.live.append(run)
                continue
            run = instance.get_run_by_id(run_id)  # its process is gone, so its last word is stored: read it again
            if not run.is_finished:
                instance.report_run_failed(
                    run,
                    "its process is gone (killed, or its host restarted): marked failed "
                    "and its pool slots freed, so that it no longer holds the task",
                )
                found.released.append(f"{task}: {describe(run)}: its process is gone; marked failed, pool slots freed")
        elif run_id in holders:
            status = run.status.value.lower() if run is not None else "deleted"
            found.released.append(f"{task}: run {run_id} ({status}) still held pool {task_pool(task)}; slots freed")
        else:
            continue
        if instance.event_log_storage.supports_global_concurrency_limits:
            instance.event_log_storage.free_concurrency_slots_for_run(run_id)
    return found


def _pool_holders(instance: dg.DagsterInstance, task: str) -> set[str]:
    """The runs holding, or waiting for, a slot of the task's pool."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return set()
    info = storage.get_concurrency_info(task_pool(task))
    return {s.run_id for s in info.claimed_slots} | {p.run_id for p in info.pending_steps}


@contextmanager
def releasing_dead_runs(instance: dg.DagsterInstance, task: str, report: Callable[[str], None]) -> Iterator[None]:
    """While a run of ``task`` executes in this process: Dagster's executor waits for a pool slot by itself, so a
    run that dies holding one meanwhile is released from a thread, every :data:`WATCH_INTERVAL_S`."""
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(WATCH_INTERVAL_S):
            try:
                for message in release_dead_runs(instance, task).released:
                    report(message)
            except Exception as exc:  # a busy database: the next tick tries again
                report(f"{task}: could not check for dead runs ({type(exc).__name__})")

    thread = threading.Thread(target=watch, name=f"dead-runs-{task}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
