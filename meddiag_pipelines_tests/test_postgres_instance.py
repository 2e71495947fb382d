"""The Dagster instance in PostgreSQL (deploy/postgres/dagster.yaml) against a real server the module starts: a full
task run through ``python -m meddiag_pipelines update``, a landing-sensor tick of the daemon, and the run queue's
one-run-per-task limit, each with nothing of the instance outside PostgreSQL."""

from __future__ import annotations

import logging
import shutil
import textwrap
import time
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
import pytest
import yaml
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._core.remote_origin import InProcessCodeLocationOrigin, RemoteRepositoryOrigin
from dagster._core.storage.dagster_run import DagsterRunStatus
from dagster._core.test_utils import create_test_daemon_workspace_context, freeze_time
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.load_target import PythonFileTarget
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon
from dagster._daemon.sensor import execute_sensor_iteration

from meddiag_pipelines.defs.automation.landing import RANGE_END, RANGE_START, run_tags
from meddiag_pipelines.specs import TaskSpec
from meddiag_pipelines.storage import DataRoot
from meddiag_pipelines_tests.conftest import MEDDIAG, REPO, SYNTHETIC_SPEC, fast, land, run_cli, synthetic_records
from meddiag_pipelines_tests.postgres import postgres_server, postgres_url  # noqa: F401 (fixtures)

TASK = SYNTHETIC_SPEC["name"]
PARTITIONS = f"{TASK}__batches"
DEPLOY_YAML = REPO / "deploy" / "postgres" / "dagster.yaml"


@pytest.fixture
def home(tmp_path, postgres_url, monkeypatch):  # noqa: F811
    """A DAGSTER_HOME holding the deploy dagster.yaml, its database named by MEDDIAG_POSTGRES_URL."""
    folder = tmp_path / "dagster_home"
    folder.mkdir()
    shutil.copy(DEPLOY_YAML, folder / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(folder))
    monkeypatch.setenv("MEDDIAG_POSTGRES_URL", postgres_url)
    return folder


@pytest.fixture
def instance(home):
    with dg.DagsterInstance.get() as loaded:
        assert type(loaded.run_storage).__module__.startswith("dagster_postgres")
        assert type(loaded.event_log_storage).__module__.startswith("dagster_postgres")
        assert type(loaded.schedule_storage).__module__.startswith("dagster_postgres")
        yield loaded


def database(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def sqlite_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.suffix == ".db" or p.name.endswith(".sqlite")]


def write_spec(folder: Path) -> None:
    """The synthetic task, with a small search, as a spec file of a MEDDIAG_TASKS_DIR."""
    folder.mkdir(exist_ok=True)
    (folder / f"{TASK}.yaml").write_text(
        fast(TaskSpec.model_validate(SYNTHETIC_SPEC)).model_dump_json()
    )  # JSON is YAML


def test_the_deploy_instance_is_the_embedded_one_with_postgres_storage():
    """Only the storage differs from dagster_home/dagster.yaml: telemetry, the run queue, pools, monitoring agree."""
    deploy = yaml.safe_load(DEPLOY_YAML.read_text())
    embedded = yaml.safe_load((REPO / "dagster_home" / "dagster.yaml").read_text())
    assert deploy.pop("storage") == {
        "custom": {
            "module": "meddiag_pipelines.postgres_storage",
            "class": "PostgresStorage",
            "config": {"postgres_url": {"env": "MEDDIAG_POSTGRES_URL"}},
        }
    }
    assert deploy == embedded


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_a_plain_postgresql_url_as_dagsters_docs_write_it_is_taken(
    home,
    postgres_server,  # noqa: F811 (the fixture)
    postgres_url,  # noqa: F811
    monkeypatch,
    scheme,
):
    """SQLAlchemy 2.1 reads a URL without a driver as psycopg 3, which dagster-postgres does not ship: the
    deploy instance names psycopg2 for it, in every process that loads the instance."""
    plain = postgres_url.replace("postgresql+psycopg2://", f"{scheme}://", 1)
    monkeypatch.setenv("MEDDIAG_POSTGRES_URL", plain)
    with dg.DagsterInstance.get() as loaded:
        loaded.add_dynamic_partitions(PARTITIONS, ["b1"])
        assert loaded.get_dynamic_partitions(PARTITIONS) == ["b1"]
        assert type(loaded.run_storage).__module__.startswith("dagster_postgres")
    assert postgres_server.psql(database(postgres_url), "SELECT partition FROM dynamic_partitions") == ["b1"]


@pytest.mark.slow
def test_a_full_task_run_through_update_lives_in_postgres(tmp_path, home, postgres_server, postgres_url):  # noqa: F811
    """`python -m meddiag_pipelines update <task>`: the batch run and the downstream run, their events and the
    batch partitions are rows of PostgreSQL; DAGSTER_HOME holds no SQLite database."""
    data = tmp_path / "data"
    write_spec(tmp_path / "tasks")
    land(DataRoot(data), TASK, "b1", synthetic_records(120, seed=1))
    land(DataRoot(data), TASK, "b2", synthetic_records(120, seed=2, start=200))
    env = {"MEDDIAG_DATA_DIR": str(data), "MEDDIAG_TASKS_DIR": str(tmp_path / "tasks")}  # DAGSTER_HOME: home's
    run_cli([*MEDDIAG, "update", TASK], env=env, expect_rc=0)

    db = database(postgres_url)
    runs = dict(row.split("|") for row in postgres_server.psql(db, "SELECT run_id, status FROM runs"))
    assert len(runs) == 2 and set(runs.values()) == {"SUCCESS"}
    for run_id in runs:  # each run's own events, its end included
        events = postgres_server.psql(db, f"SELECT dagster_event_type FROM event_logs WHERE run_id = '{run_id}'")
        assert events.count(DagsterEventType.RUN_SUCCESS.value) == 1
        assert DagsterEventType.ASSET_MATERIALIZATION.value in events
    partitions = postgres_server.psql(
        db, f"SELECT partition FROM dynamic_partitions WHERE partitions_def_name = '{PARTITIONS}' ORDER BY partition"
    )
    assert partitions == ["b1", "b2"]
    with dg.DagsterInstance.get() as instance:  # the same rows through the instance API
        assert instance.get_dynamic_partitions(PARTITIONS) == ["b1", "b2"]
        assert {r.tags["meddiag/task"] for r in instance.get_runs()} == {TASK}
        assert instance.get_latest_materialization_event(dg.AssetKey([TASK, "champion"])) is not None
    assert not sqlite_files(home)
    assert (data / "models" / TASK / "champion.json").is_file()


@pytest.mark.slow
def test_a_landing_sensor_tick_of_the_daemon_adds_the_partition_and_queues_its_run(
    tmp_path,
    instance,
    home,
    postgres_server,  # noqa: F811 (the fixture)
    postgres_url,  # noqa: F811
):
    """The daemon's sensor iteration, in process, over a code server: the tick, the new partition and the
    requested run (QUEUED by the run coordinator) are in PostgreSQL; a second tick requests nothing more."""
    data = tmp_path / "data"
    spec_file = tmp_path / "tasks" / f"{TASK}.yaml"
    write_spec(spec_file.parent)
    code = tmp_path / "code.py"
    code.write_text(
        textwrap.dedent(f"""
        from pathlib import Path
        from meddiag_pipelines.defs.build import build_definitions
        from meddiag_pipelines.specs import load_spec
        defs = build_definitions([load_spec(Path({str(spec_file)!r}))], Path({str(data)!r}))
    """)
    )
    land(DataRoot(data), TASK, "b1", synthetic_records(20, seed=1))
    target = PythonFileTarget(str(code), attribute="defs", working_directory=str(tmp_path), location_name="pg_test")
    logger = logging.getLogger("test_postgres_instance")
    with create_test_daemon_workspace_context(target, instance) as context:
        list(execute_sensor_iteration(context, logger, None, None))
        [run] = instance.get_runs()
        with freeze_time(time.time() + 30):  # the sensor's next tick is due (it ticks every 10 s)
            list(execute_sensor_iteration(context, logger, None, None))
        assert len(instance.get_runs()) == 1  # the cursor, kept in PostgreSQL, knows b1
    assert instance.get_dynamic_partitions(PARTITIONS) == ["b1"]
    assert run.status == DagsterRunStatus.QUEUED
    assert run.tags["meddiag/task"] == TASK and run.tags[RANGE_START] == run.tags[RANGE_END] == "b1"
    assert run.tags["dagster/sensor_name"] == f"{TASK}_landing_sensor"
    ticks = postgres_server.psql(database(postgres_url), "SELECT status FROM job_ticks ORDER BY id")
    # the landing sensor's request, then nothing more (the retrain-on-breach sensor's ticks skip: no breach)
    assert ticks.count("SUCCESS") == 1 and set(ticks) == {"SUCCESS", "SKIPPED"}
    assert not sqlite_files(home)


@dg.op
def noop() -> None:
    pass


@dg.job
def task_job():
    noop()


def test_the_run_queue_holds_a_second_run_of_a_task_while_the_first_is_in_progress(instance):
    """Two runs of one task and one of another submitted to the queued run coordinator: the daemon's dequeue
    decision takes one run per task; the second of the task waits until the first has finished."""
    spec = TaskSpec.model_validate(SYNTHETIC_SPEC)
    other = TaskSpec.model_validate({**SYNTHETIC_SPEC, "name": "other_risk"})
    # a submitted run names where its job's code lives (the daemon would launch it from there; here none is launched)
    location = InProcessCodeLocationOrigin(LoadableTargetOrigin(python_file=__file__, attribute=task_job.name))
    origin = RemoteRepositoryOrigin(location, "__repository__").get_job_origin(task_job.name)
    code = dg.reconstructable(task_job).get_python_origin()
    first, second, elsewhere = (
        instance.create_run_for_job(
            task_job, tags=run_tags(s, "sensor"), remote_job_origin=origin, job_code_origin=code
        )
        for s in (spec, spec, other)
    )
    for run in (first, second, elsewhere):
        instance.submit_run(run.run_id, workspace=None)
        assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.QUEUED

    daemon = QueuedRunCoordinatorDaemon(interval_seconds=1)
    config = instance.get_concurrency_config()

    def dequeued() -> set[str]:
        return {r.run_id for r in daemon._get_runs_to_dequeue(instance, config, fixed_iteration_time=None)}

    def report(run, event_type):
        instance.report_dagster_event(
            DagsterEvent(event_type_value=event_type.value, job_name=task_job.name), run_id=run.run_id
        )

    assert dequeued() == {first.run_id, elsewhere.run_id}  # two tasks, two runs; not the task's second one
    report(first, DagsterEventType.RUN_START)
    report(elsewhere, DagsterEventType.RUN_START)
    assert dequeued() == set()  # the task's first run is in progress: its second waits
    report(elsewhere, DagsterEventType.RUN_SUCCESS)
    assert dequeued() == set()  # a free slot is not enough: the task is still busy
    report(first, DagsterEventType.RUN_SUCCESS)
    assert dequeued() == {second.run_id}
