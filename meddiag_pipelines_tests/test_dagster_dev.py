"""Integration: `dagster dev` (webserver + daemon) on a temporary DAGSTER_HOME reacts to a landed batch with no
click: a run succeeds, a new model version with its decision appears, and the batch's cases are scored."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from meddiag_pipelines_tests.conftest import REPO, SYNTHETIC_SPEC, synthetic_records

pytestmark = pytest.mark.slow
DEADLINE_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, deadline: float, what: str, proc: subprocess.Popen, log: Path):
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None or "RUN_FAILURE" in log.read_text(errors="replace"):
            break
        time.sleep(2)
    pytest.fail(f"timed out waiting for {what}; dagster dev log tail:\n{log.read_text()[-3000:]}")


def test_landed_batch_is_trained_decided_and_scored_without_a_click(tmp_path):
    home, data, tasks = tmp_path / "dagster_home", tmp_path / "data", tmp_path / "tasks"
    home.mkdir()
    tasks.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    spec = {**SYNTHETIC_SPEC, "training": {"trials": 2, "timeout_s": 10, "max_rounds": 100},
            "evaluation": {"n_bootstrap": 200}}  # fmt: skip
    (tasks / "synthetic_risk.yaml").write_text(yaml.safe_dump(spec))
    env = {**os.environ, "DAGSTER_HOME": str(home), "MEDDIAG_DATA_DIR": str(data), "MEDDIAG_TASKS_DIR": str(tasks)}
    log = tmp_path / "dagster_dev.log"
    command = ["env", "--default-signal=INT,TERM", str(Path(sys.executable).parent / "dagster"), "dev",
               "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(free_port())]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        batch = data / "landing" / "synthetic_risk" / "batch_0001"
        batch.mkdir(parents=True)
        frame = synthetic_records(1000, seed=7)
        frame = frame.with_columns(frame["outcome"].scatter([0, 1], None))
        frame.write_csv(batch / "records.csv")
        (batch / "_READY").touch()
        deadline = time.time() + DEADLINE_S
        models = data / "models" / "synthetic_risk"
        predictions = data / "predictions" / "synthetic_risk" / "batch_0001"  # <version>.parquet inside
        wait_for(lambda: any(predictions.glob("*.parquet")), deadline, "the batch's predictions", proc, log)
        versions = [p for p in models.iterdir() if (p / "manifest.json").exists()]
        assert len(versions) == 1
        manifest = json.loads((versions[0] / "manifest.json").read_text())
        assert manifest["decision"]["promote"] is True and manifest["batches"][0]["batch_id"] == "batch_0001"
        assert json.loads((models / "champion.json").read_text())["version"] == versions[0].name
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
            forced = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            forced = True
    assert not forced, "dagster dev did not shut down within 60 s of SIGINT (it needed SIGKILL)"
