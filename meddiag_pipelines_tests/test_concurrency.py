"""Two runs of the same task at once (a landing-sensor run and the nightly schedule), as two processes on the
same data folder and DAGSTER_HOME. Mechanisms that keep the warehouse and registry whole:

* ingestion and validation of a task take an exclusive per-task file lock (``Warehouse.task_lock``), and a
  batch's rows are appended in the same DuckDB transaction as its ledger entry, which is skipped when the
  ledger (primary key task, batch_id) already holds the batch: each batch is read once;
* DuckDB admits one writing process at a time; ``Warehouse.connect`` retries while the other holds it;
* training, evaluation and promotion assets share the pool ``meddiag_<task>`` (limit 1 in dagster.yaml);
* a model version is built in ``.staging`` and published by one rename (unique name per run, never
  overwritten); ``champion.json`` and ``reports/<task>/latest`` are replaced atomically.
"""

import json
import subprocess
import sys

import pytest

from meddiag_pipelines.ingestion.batches import reconcile
from meddiag_pipelines.ingestion.warehouse import Warehouse
from meddiag_pipelines.specs import TaskSpec
from meddiag_pipelines_tests.conftest import synthetic_records
from meddiag_pipelines_tests.test_crash_safety import (
    FAST_SPEC,
    TASK,
    assert_consistent,
    assert_no_rows_lost,
    land_batch,
    make_env,
    start_child,
)

pytestmark = pytest.mark.slow


def test_two_runs_at_once_do_not_corrupt_warehouse_or_registry(tmp_path):
    env = make_env(tmp_path)
    # Create the SQLite instance first, as `dagster dev` does at start: two processes bootstrapping a fresh
    # DAGSTER_HOME at the same instant race on Dagster's own schema creation, which is not what this tests.
    subprocess.run([sys.executable, "-c", "import dagster; dagster.DagsterInstance.get()"], env=env, check=True)
    land_batch(tmp_path, "batch_0001", synthetic_records(300, seed=1))
    land_batch(tmp_path, "batch_0002", synthetic_records(150, seed=2, start=300))
    procs = [start_child(tmp_path, env, MEDDIAG_TEST_TAG=name) for name in ("sensor", "schedule")]
    codes = [p.wait(timeout=300) for p in procs]
    logs = [p.log_path.read_text() for p in procs]
    # Outputs passed between assets are stored per asset key, so overlapping runs of one task can swap each
    # other's candidate; the champion step then refuses to publish (loud failure, no corruption). Whole-run
    # serialisation per task is the run queue's job under the daemon (see the report).
    assert 0 in codes, "\n".join(log[-3000:] for log in logs)
    for code, log in zip(codes, logs):
        assert code == 0 or "nothing published" in log, log[-3000:]
    data = tmp_path / "data"
    warehouse = Warehouse(data / "warehouse" / "meddiag.duckdb")
    ledger = warehouse.ledger(TASK)
    assert sorted(ledger["batch_id"].to_list()) == ["batch_0001", "batch_0002"]  # each batch once
    assert set(ledger["status"]) == {"validated"}
    assert_no_rows_lost(data, 450)  # raw rows not duplicated
    counts = reconcile(TaskSpec.model_validate(FAST_SPEC), warehouse)
    assert counts["landed_batches"] == counts["validated_batches"] == 2
    state = assert_consistent(data)
    assert 1 <= len(state["versions"]) <= 2  # each published version is complete (checked above)
    for version in state["versions"]:
        manifest = json.loads((data / "models" / TASK / version / "manifest.json").read_text())
        assert manifest["model"]["version"] == version
    champion = json.loads((data / "models" / TASK / "champion.json").read_text())
    assert champion["version"] in state["versions"]
