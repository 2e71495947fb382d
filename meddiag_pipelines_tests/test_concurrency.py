"""Two runs of the same task at once on one data folder and DAGSTER_HOME, with NO concurrency limits (no run
queue, no task pool): each step of one run may interleave with any step of the other. What keeps them apart:

* every asset value is a file of its run (``warehouse/{tables,values}/<task>/<asset>/<run>.*``): a run reads
  its own upstream values, never the other run's;
* a batch's ledger entry is created once (``DataRoot.write_once``), by whichever run gets there first, and
  names its records file: each batch is recorded once;
* a model version is built in ``.staging/<version>`` and published by one rename (a version per run, never
  overwritten); ``champion.json`` and ``reports/<task>/latest`` are replaced atomically.
"""

import json
import sys

import dagster as dg
import pytest

from meddiag_pipelines.ingestion.warehouse import Warehouse
from meddiag_pipelines.storage import DataRoot, run_name
from meddiag_pipelines_tests.conftest import run_cli, synthetic_records
from meddiag_pipelines_tests.test_crash_safety import (
    CHILD,
    TASK,
    assert_consistent,
    assert_no_rows_lost,
    land_batch,
    make_env,
    start_child,
)

pytestmark = pytest.mark.slow

# Prepended to the crash-safety child: the run started with MEDDIAG_TEST_WAIT_FOR pauses as its second model
# asset (baseline_model) returns, until that file exists, so the other run trains, evaluates and publishes
# after this run's candidate_model and before this run's evaluation reads it (the interleaving that let
# one run evaluate and publish the other's candidate when values were stored per asset key).
PAUSE = r"""
import os, time
from pathlib import Path
import meddiag_pipelines.defs.assets.common as _common
_real_handle, _calls = _common.model_handle, []
def _paused(*args, **kwargs):
    _calls.append(1)
    wait_for = os.environ.get("MEDDIAG_TEST_WAIT_FOR")
    deadline = time.time() + 240
    while len(_calls) == 2 and wait_for and not Path(wait_for).exists() and time.time() < deadline:
        time.sleep(0.2)
    return _real_handle(*args, **kwargs)
_common.model_handle = _paused
"""


def _metadata(instance: dg.DagsterInstance, asset: str) -> dict:
    """Run id -> the metadata of that run's materialization of ``asset``."""
    records = instance.fetch_materializations(dg.AssetKey([TASK, asset]), limit=10).records
    return {r.run_id: r.asset_materialization.metadata for r in records}


def _values(data, asset: str) -> dict:
    """Run-sortable name -> the value that run stored for ``asset``."""
    folder = data / "warehouse" / "values" / TASK / asset
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}


def test_two_overlapping_runs_each_use_their_own_inputs(tmp_path):
    env = make_env(tmp_path)
    (tmp_path / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")  # no limits at all
    # Create the SQLite instance first, as `dagster dev` does at start: two processes bootstrapping a fresh
    # DAGSTER_HOME at the same instant race on Dagster's own schema creation, which is not what this tests.
    run_cli([sys.executable, "-c", "import dagster; dagster.DagsterInstance.get()"], env=env, expect_rc=0)
    land_batch(tmp_path, "batch_0001", synthetic_records(300, seed=1))
    land_batch(tmp_path, "batch_0002", synthetic_records(150, seed=2, start=300))
    (tmp_path / "child.py").write_text(PAUSE + CHILD)
    done = tmp_path / "second_run_done"
    first = start_child(tmp_path, env, MEDDIAG_TEST_TAG="sensor", MEDDIAG_TEST_WAIT_FOR=str(done))
    second = start_child(tmp_path, env, MEDDIAG_TEST_TAG="schedule")
    codes = [second.wait(timeout=300)]
    done.touch()
    codes.insert(0, first.wait(timeout=300))
    logs = [p.log_path.read_text() for p in (first, second)]
    assert codes == [0, 0], "\n".join(log[-3000:] for log in logs)
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster_home")) as instance:
        runs = {r.dagster_run.run_id: r for r in instance.get_run_records()}
        early, late = sorted(runs.values(), key=lambda r: r.start_time)
        assert late.start_time < early.end_time  # the runs did overlap
        names = {run_id: run_name(r.create_timestamp.timestamp(), run_id) for run_id, r in runs.items()}
        decided = _metadata(instance, "champion")
        assert len(decided) == 2
        for run_id, meta in decided.items():  # each run decided about the candidate it trained itself
            assert (
                meta["candidate"].value
                == names[run_id]
                == _metadata(instance, "candidate_model")[run_id]["version"].value
            )

    data = tmp_path / "data"
    ledger = Warehouse(DataRoot(data)).ledger(TASK)
    assert sorted(ledger["batch_id"].to_list()) == ["batch_0001", "batch_0002"]  # each batch once
    assert_no_rows_lost(data, 450)
    state = assert_consistent(data)
    candidates, evaluations, champions = (_values(data, a) for a in ("candidate_model", "evaluation", "champion"))
    assert len(candidates) == 2  # a value per run, none overwritten
    for run, candidate in candidates.items():
        # each run's evaluation and champion decision are about the model that run trained
        assert candidate["version"] == run
        assert evaluations[run]["model_version"] == run
        assert champions[run]["candidate"] == run
    published = [run for run, c in champions.items() if c["published"]]
    assert published and set(published) <= set(state["versions"])
    for version in state["versions"]:
        assert (
            json.loads((data / "models" / TASK / version / "manifest.json").read_text())["model"]["version"] == version
        )
