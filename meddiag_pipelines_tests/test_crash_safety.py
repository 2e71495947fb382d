"""Crash safety: a run SIGKILLed in training, in the middle of a report or registry write, is followed by a
run that completes; no partial model version, report or champion.json is ever visible in between.

The kill is injected by the test harness only (a child script that wraps ``xgboost.train``, ``os.replace``
and ``os.rename`` and SIGKILLs itself at the chosen point); production code has no test hook. After each
kill the harness releases the dead run as the next ``update`` or landing sensor tick would
(``defs/dead_runs.py``: marked failed, its pool slots freed), since the child runs the task without either.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from meddiag_pipelines_tests.conftest import REPO, SYNTHETIC_SPEC, synthetic_records

pytestmark = pytest.mark.slow
TASK = SYNTHETIC_SPEC["name"]
FAST_SPEC = {
    **SYNTHETIC_SPEC,
    "training": {"trials": 1, "timeout_s": 10, "max_rounds": 40},
    "evaluation": {"n_bootstrap": 100},
}

CHILD = r"""
import json, os, signal, sys
from pathlib import Path

kill_at = os.environ.get("MEDDIAG_TEST_KILL_AT", "")
marker = os.environ.get("MEDDIAG_TEST_MARKER")


def die():
    if marker:
        Path(marker).write_text(kill_at)
    os.kill(os.getpid(), signal.SIGKILL)


if kill_at == "train":  # inside the optuna search of candidate_model
    import xgboost as xgb
    real_train = xgb.train
    def train(*a, **k):
        booster = real_train(*a, **k)
        die()
    xgb.train = train

real_replace, real_rename = os.replace, os.rename


def replace(src, dst, *a, **k):
    s, d = Path(src), Path(dst)
    if kill_at == "report_file" and d.name == "report.html" and d.parent.name.startswith(".latest."):
        s.write_bytes(b"<html>half a rep"); die()          # a report file half written in the staging folder
    if kill_at == "report_publish" and d.name.startswith("latest.") and s.name.startswith(".latest."):
        die()                                            # staging complete, not yet renamed
    if kill_at == "report_swap" and d.name == "latest":
        real_replace(src, dst); die()                    # link swapped, previous folder not yet removed
    if kill_at == "manifest" and d.name == "manifest.json":
        s.write_text('{"task": "tru'); die()             # the version's manifest half written in staging
    if kill_at == "champion" and d.name == "champion.json":
        s.write_text('{"version": "tru'); die()          # champion.json's temporary file half written
    return real_replace(src, dst, *a, **k)


def rename(src, dst, *a, **k):
    if kill_at == "version_publish" and Path(src).parent.name == ".staging":
        die()                                            # version complete in staging, not yet published
    return real_rename(src, dst, *a, **k)


os.replace, os.rename = replace, rename

import dagster as dg
from meddiag_pipelines.defs.build import build_definitions
from meddiag_pipelines.specs import TaskSpec
from meddiag_pipelines.update import run_task_in_process

spec = TaskSpec.model_validate(json.loads(os.environ["MEDDIAG_TEST_SPEC"]))
defs = build_definitions([spec], Path(os.environ["MEDDIAG_DATA_DIR"]))
with dg.DagsterInstance.get() as instance:
    result = run_task_in_process(defs, spec, instance, raise_on_error=False,
                                 tags={"meddiag/test": os.environ.get("MEDDIAG_TEST_TAG", "")})
print("RUN_SUCCESS" if result.success else "RUN_FAILED", flush=True)
sys.exit(0 if result.success else 1)
"""


def make_env(root: Path, spec: dict | None = None) -> dict:
    home, data = root / "dagster_home", root / "data"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    (root / "child.py").write_text(CHILD)
    return {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "MEDDIAG_DATA_DIR": str(data),
        "MEDDIAG_TEST_SPEC": json.dumps(spec or FAST_SPEC),
        "PYTHONUNBUFFERED": "1",
    }


def land_batch(root: Path, name: str, frame: pl.DataFrame) -> None:
    folder = root / "data" / "landing" / TASK / name
    folder.mkdir(parents=True)
    frame.write_csv(folder / "records.csv")
    (folder / "_READY").touch()


def start_child(root: Path, env: dict, **extra) -> subprocess.Popen:
    path = root / f"child-{time.monotonic_ns()}.log"
    with open(path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(root / "child.py")],
            env={**env, **extra},
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    proc.log_path = path
    return proc


def run_child(root: Path, env: dict, timeout: float = 240, **extra) -> int:
    proc = start_child(root, env, **extra)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"child run timed out; log:\n{proc.log_path.read_text()[-3000:]}")


def release_dead_runs(env: dict) -> int:
    """What the next `update`, `requeue`, `reset` or landing sensor tick does for a run whose process was killed:
    mark it failed and free its pool slots. Returns how many runs it released."""
    import dagster as dg

    from meddiag_pipelines.defs import dead_runs

    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        return len(dead_runs.release_dead_runs(instance, TASK).released)


def assert_consistent(data: Path) -> dict:
    """What any reader may see at any time: only complete versions, a valid champion, a whole report."""
    models = data / "models" / TASK
    complete = []
    if models.exists():
        for entry in models.iterdir():
            if entry.name.startswith(".") or entry.name == "champion.json":
                continue
            assert entry.is_dir(), entry
            manifest = json.loads((entry / "manifest.json").read_text())  # a visible version is complete
            assert manifest["version"] == entry.name and manifest["decision"]["reasons"]
            assert (entry / "plan.json").is_file() and (entry / "model" / "chosen.json").is_file()
            assert (entry / "model" / "xgboost" / "model.ubj").is_file() and (
                entry / "model" / "logistic" / "model.json"
            ).is_file()
            complete.append(entry.name)
        champion = models / "champion.json"
        if champion.exists():
            assert json.loads(champion.read_text())["version"] in complete
    from meddiag_pipelines.registry.store import ModelRegistry
    from meddiag_pipelines.storage import DataRoot

    assert sorted(ModelRegistry(DataRoot(data)).versions(TASK)) == sorted(complete)  # .staging never listed
    latest = data / "reports" / TASK / "latest"
    if os.path.lexists(latest):
        assert latest.is_symlink() and latest.resolve().is_dir()
        metrics = json.loads((latest / "metrics.json").read_text())
        assert "auroc" in metrics  # the report may describe a candidate whose publication was then killed
        html = (latest / "report.html").read_text()
        assert html.rstrip().endswith("</html>")
        assert (latest / "model_card.md").stat().st_size > 0
        pl.read_parquet(latest / "test_predictions.parquet")
    return {"versions": complete}


def assert_no_rows_lost(data: Path, expected_rows: int) -> None:
    from meddiag_pipelines.ingestion.warehouse import Warehouse
    from meddiag_pipelines.storage import DataRoot

    warehouse = Warehouse(DataRoot(data))
    ledger = warehouse.ledger(TASK)
    assert ledger["batch_id"].n_unique() == ledger.height
    raw = warehouse.read(TASK, "raw_records")
    assert raw.height == expected_rows and raw["rid"].n_unique() == expected_rows


# In pipeline order; "version_publish" is the first kill after a report exists, so "report_swap" has a previous
# report to replace. (The child also knows "report_publish" and "manifest"; they are left out for time.)
KILL_POINTS = ["train", "report_file", "version_publish", "report_swap", "champion"]


def test_runs_killed_at_each_point_then_rerun_complete(tmp_path):
    env = make_env(tmp_path)
    land_batch(tmp_path, "batch_0001", synthetic_records(400, seed=1))
    survived = []
    for i, point in enumerate(KILL_POINTS):
        marker = tmp_path / f"killed-{i}"
        rc = run_child(tmp_path, env, MEDDIAG_TEST_KILL_AT=point, MEDDIAG_TEST_MARKER=str(marker))
        assert rc == -signal.SIGKILL and marker.read_text() == point, f"{point}: rc={rc}"
        assert release_dead_runs(env) == 1
        assert_consistent(tmp_path / "data")
        survived.append(point)
    # Age the leftovers of the killed writes past the sweep threshold; the next run removes them.
    reports = tmp_path / "data" / "reports" / TASK
    models = tmp_path / "data" / "models" / TASK
    leftovers = [p for p in reports.iterdir() if p.name != "latest"] + list(models.glob(".champion.json.*.tmp"))
    assert len(leftovers) >= 4, "the kills left no temporary files to clean"
    for p in leftovers:
        os.utime(p, (time.time() - 7200, time.time() - 7200), follow_symlinks=False)
    land_batch(tmp_path, "batch_0002", synthetic_records(200, seed=2, start=400))
    assert run_child(tmp_path, env) == 0
    state = assert_consistent(tmp_path / "data")
    assert json.loads((models / "champion.json").read_text())["version"] in state["versions"]
    assert not [p for p in reports.iterdir() if p.name.startswith(".")], "stale report staging left behind"
    assert not list(models.glob(".champion.json.*.tmp")), "stale champion temporary file left behind"
    copies = [p.name for p in reports.iterdir() if p.name.startswith("latest.") and p.name != "latest.json"]
    assert copies == [os.readlink(reports / "latest")]
    assert_no_rows_lost(tmp_path / "data", 600)
    assert survived == KILL_POINTS
