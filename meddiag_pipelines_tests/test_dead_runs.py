"""A dead run never holds a task: a run whose process is gone is marked failed and its pool slot freed, by
`update` (before and while it runs), by `requeue` and `reset`, and by the landing sensor (under the daemon); a
live run is waited for at most `--max-wait` seconds, and SIGTERM stops the wait."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from meddiag_pipelines.defs import dead_runs
from meddiag_pipelines.defs.automation.landing import build_landing_sensor
from meddiag_pipelines.defs.dead_runs import HOST_TAG, PID_TAG, TASK_TAG, process_alive, release_dead_runs, task_pool
from meddiag_pipelines.defs.resources.storage import MeddiagStorage
from meddiag_pipelines.update import UpdateError, wait_for_task
from meddiag_pipelines_tests.conftest import MEDDIAG, REPO, command_env, instance_env, run_cli, synthetic_records
from meddiag_pipelines_tests.test_crash_safety import FAST_SPEC

TASK = "synthetic_risk"
POOL = task_pool(TASK)


@pytest.fixture
def instance():
    with dg.instance_for_test(overrides={"concurrency": {"pools": {"default_limit": 1}}}) as instance:
        yield instance


def gone_pid() -> int:
    """The pid of a process that has ended and been reaped."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def add_run(
    instance: dg.DagsterInstance,
    pid: int | None,
    host: str | None = None,
    status: dg.DagsterRunStatus = dg.DagsterRunStatus.STARTED,
    holds_slot: bool = False,
) -> str:
    tags = {TASK_TAG: TASK, HOST_TAG: host or socket.gethostname(), **({PID_TAG: str(pid)} if pid else {})}
    run_id = str(uuid.uuid4())
    instance.add_run(dg.DagsterRun(job_name="__ASSET_JOB", run_id=run_id, status=status, tags=tags))
    if holds_slot:
        instance.event_log_storage.initialize_concurrency_limit_to_default(POOL)
        assert instance.event_log_storage.claim_concurrency_slot(POOL, run_id, f"{TASK}__split").is_claimed
    return run_id


def slot_holders(instance: dg.DagsterInstance) -> set[str]:
    return {s.run_id for s in instance.event_log_storage.get_concurrency_info(POOL).claimed_slots}


def test_a_dead_run_is_failed_and_its_slot_freed_and_no_other_run_is_judged(instance):
    dead = add_run(instance, gone_pid(), holds_slot=True)
    alive = add_run(instance, os.getpid())
    elsewhere = add_run(instance, gone_pid(), host="another-host")  # its pid means nothing here
    unknown = add_run(instance, None, status=dg.DagsterRunStatus.STARTING)  # no process recorded yet
    assert slot_holders(instance) == {dead}

    found = release_dead_runs(instance, TASK)
    assert len(found.released) == 1 and dead in found.released[0] and "process is gone" in found.released[0]
    assert instance.get_run_by_id(dead).status == dg.DagsterRunStatus.FAILURE
    assert slot_holders(instance) == set()
    assert sorted(r.run_id for r in found.live) == sorted([alive, elsewhere, unknown])
    assert {instance.get_run_by_id(r).status for r in (alive, elsewhere)} == {dg.DagsterRunStatus.STARTED}
    assert release_dead_runs(instance, TASK).released == []  # nothing left to release


def test_a_finished_run_still_holding_the_pool_is_freed(instance):
    ended = add_run(instance, os.getpid(), holds_slot=True)
    instance.report_run_failed(instance.get_run_by_id(ended))  # marked failed, as the UI does, slot kept
    assert slot_holders(instance) == {ended}
    found = release_dead_runs(instance, TASK)
    assert found.live == [] and ended in found.released[0] and slot_holders(instance) == set()


def test_a_killed_but_unreaped_process_is_not_alive():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while Path(f"/proc/{proc.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    try:
        os.kill(proc.pid, 0)  # a zombie still answers
        assert not process_alive(proc.pid) and process_alive(os.getpid())
    finally:
        proc.wait()


def test_update_waits_for_a_live_run_a_bounded_time_and_names_it(instance):
    live = add_run(instance, os.getpid(), holds_slot=True)
    dead = add_run(instance, gone_pid())
    start = time.monotonic()
    with pytest.raises(UpdateError, match=rf"{TASK}: still held after 0.5 s by run {live} \(started on host .*pid"):
        wait_for_task(instance, TASK, max_wait_s=0.5)
    assert time.monotonic() - start < 10
    assert instance.get_run_by_id(dead).status == dg.DagsterRunStatus.FAILURE  # released while waiting


def test_the_watch_releases_a_run_that_dies_holding_the_pool_while_a_run_executes(instance, monkeypatch):
    """Inside a run, Dagster's executor waits for the slot by itself: the watch frees it meanwhile."""
    monkeypatch.setattr(dead_runs, "WATCH_INTERVAL_S", 0.1)
    dead = add_run(instance, gone_pid(), holds_slot=True)
    messages = []
    with dead_runs.releasing_dead_runs(instance, TASK, messages.append):
        deadline = time.monotonic() + 20
        while slot_holders(instance) and time.monotonic() < deadline:
            time.sleep(0.1)
    assert slot_holders(instance) == set() and dead in messages[0]


def test_the_landing_sensor_releases_the_task_s_dead_runs(synthetic_spec, layout, instance):
    """Under the daemon: each sensor tick (in the code server, the host that runs the default launcher's workers)."""
    dead = add_run(instance, gone_pid(), holds_slot=True)
    job = dg.define_asset_job("synthetic_risk_batches_job", selection=dg.AssetSelection.groups(TASK))
    sensor = build_landing_sensor(synthetic_spec, job)
    context = dg.build_sensor_context(
        instance=instance, resources={"storage": MeddiagStorage(data_dir=str(layout.local))}
    )
    assert isinstance(sensor(context), dg.SkipReason)
    assert instance.get_run_by_id(dead).status == dg.DagsterRunStatus.FAILURE and slot_holders(instance) == set()


# -- through the CLI, as the check does ----------------------------------------------------------------
KILLED_UPDATE = """
import os, signal, sys
import xgboost
def train(*args, **kwargs):  # SIGKILL in the middle of the candidate_model step, which holds the task's pool slot
    os.kill(os.getpid(), signal.SIGKILL)
xgboost.train = train
from meddiag_pipelines.__main__ import main
sys.exit(main(["update", sys.argv[1]]))
"""


def land_csv(tmp_path: Path, name: str, frame: pl.DataFrame) -> None:
    folder = tmp_path / "data" / "landing" / TASK / name
    folder.mkdir(parents=True)
    frame.write_csv(folder / "records.csv")
    (folder / "_READY").touch()


@pytest.mark.slow
def test_after_an_update_is_killed_requeue_update_and_reset_all_work(tmp_path):
    env = instance_env(tmp_path / "dagster_home", tmp_path / "data", tmp_path / "tasks", [FAST_SPEC])
    land_csv(tmp_path, "b1", synthetic_records(400, seed=1))
    land_csv(
        tmp_path, "b2_bad", synthetic_records(20, seed=2, start=900).with_columns(pl.lit("maybe").alias("outcome"))
    )
    (tmp_path / "killed.py").write_text(KILLED_UPDATE)
    run_cli([sys.executable, str(tmp_path / "killed.py"), TASK], env=env, timeout=240, expect_rc=-signal.SIGKILL)
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        [dead] = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        assert dead.run_id in slot_holders(instance)
    models = tmp_path / "data" / "models" / TASK
    assert not (models / "champion.json").exists()

    # requeue releases the dead run instead of refusing
    requeued = run_cli([*MEDDIAG, "requeue", TASK, "b2_bad"], env=env, timeout=60, expect_rc=0)
    assert dead.run_id in requeued.stdout, requeued.stdout
    start = time.monotonic()
    run_cli([*MEDDIAG, "update", TASK], env=env, timeout=240, expect_rc=0)
    assert time.monotonic() - start < 180 and (models / "champion.json").is_file()  # trained and published
    run_cli([*MEDDIAG, "reset", TASK, "--yes"], env=env, timeout=60, expect_rc=0)
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
        assert slot_holders(instance) == set()


@pytest.mark.slow
def test_update_waiting_for_a_live_run_stops_on_sigterm_and_after_max_wait(tmp_path):
    env = instance_env(tmp_path / "dagster_home", tmp_path / "data", tmp_path / "tasks", [FAST_SPEC])
    land_csv(tmp_path, "b1", synthetic_records(50, seed=1))
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    waiting = None
    try:
        with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
            live = add_run(instance, holder.pid, holds_slot=True)
        bounded = run_cli([*MEDDIAG, "update", TASK, "--max-wait", "1"], env=env, timeout=120, expect_rc=1)
        assert f"still held after 1 s by run {live}" in bounded.stderr, bounded.stderr[-3000:]

        log = tmp_path / "update.log"
        with open(log, "wb") as out:
            waiting = subprocess.Popen(
                [*MEDDIAG, "update", TASK], cwd=REPO, env=command_env(env), stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 120
        while f"waiting for run {live}" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert f"waiting for run {live}" in log.read_text(), log.read_text()[-3000:]
        waiting.send_signal(signal.SIGTERM)
        assert waiting.wait(timeout=15) == -signal.SIGTERM
    finally:
        for proc in (holder, waiting):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
