"""Integration: `dagster dev` (webserver + daemon) on a temporary DAGSTER_HOME, started as the README does. It
answers GraphQL on 127.0.0.1 with the code location loaded, listens on loopback only, reports telemetry off and
writes no telemetry log, reacts to a landed batch with no click (a run succeeds, a new model version with its
decision appears, the batch's cases are scored), and shuts down on SIGINT or SIGTERM with return code 0 and no
process of its session left behind."""

import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
import yaml

from meddiag_pipelines_tests.conftest import REPO, SYNTHETIC_SPEC, synthetic_records

pytestmark = pytest.mark.slow
DEADLINE_S = 300
SHUTDOWN_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DevServer:
    """One `dagster dev` in its own session, so every process it starts can be found (and none can hide)."""

    def __init__(self, root: Path):
        self.home, self.data, tasks = root / "dagster_home", root / "data", root / "tasks"
        for folder in (self.home, tasks):
            folder.mkdir()
        shutil.copy(REPO / "dagster_home" / "dagster.yaml", self.home / "dagster.yaml")
        spec = {
            **SYNTHETIC_SPEC,
            "training": {"trials": 2, "timeout_s": 10, "max_rounds": 100},
            "evaluation": {"n_bootstrap": 200},
        }
        (tasks / "synthetic_risk.yaml").write_text(yaml.safe_dump(spec))
        env = {
            **os.environ,
            "DAGSTER_HOME": str(self.home),
            "MEDDIAG_DATA_DIR": str(self.data),
            "MEDDIAG_TASKS_DIR": str(tasks),
        }
        self.port, self.log = free_port(), root / "dagster_dev.log"
        command = [
            "env",
            "--default-signal=INT,TERM",
            str(Path(sys.executable).parent / "dagster"),
            "dev",
            "-w",
            str(REPO / "workspace.yaml"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
        ]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def graphql(self, query: str) -> dict:
        request = urllib.request.Request(
            self.url("/graphql"), json.dumps({"query": query}).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)["data"]

    def wait_for(self, predicate, deadline: float, what: str) -> None:
        while time.time() < deadline:
            if predicate():
                return
            if self.proc.poll() is not None or "RUN_FAILURE" in self.log.read_text(errors="replace"):
                break
            time.sleep(2)
        pytest.fail(f"timed out waiting for {what}; dagster dev log tail:\n{self.log.read_text()[-3000:]}")

    def answers(self) -> bool:
        try:
            nodes = self.graphql("{ assetNodes { assetKey { path } } }")["assetNodes"]
        except OSError:  # not listening yet, or the code location is still loading
            return False
        return ["synthetic_risk", "raw_records"] in [n["assetKey"]["path"] for n in nodes]

    def run_statuses(self) -> list[str]:
        return [
            r["status"]
            for r in self.graphql("{ runsOrError { ... on Runs { results { status } } } }")["runsOrError"]["results"]
        ]

    def stop(self, sig: int, group: bool) -> int:
        """Send ``sig`` (to the whole process group, as a terminal's Ctrl-C does, or to dagster dev alone, as a
        service manager does); its return code, or fail after SIGKILL if it does not shut down."""
        if group:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=SHUTDOWN_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            pytest.fail(f"dagster dev did not shut down within {SHUTDOWN_S} s of {signal.Signals(sig).name}")


def session_pids(session: int) -> set[int]:
    """Live (non-zombie) processes of a session, from /proc."""
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, _group, sid = stat.read_text().rsplit(")", 1)[1].split()[:4]
        except (OSError, ValueError):
            continue  # gone while we looked
        if int(sid) == session and state != "Z":
            pids.add(int(stat.parent.name))
    return pids


def listening_addresses(pids: set[int]) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state held by ``pids``, from /proc/net/tcp{,6}."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                match = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(fd))
            except OSError:
                continue
            if match:
                inodes.add(match.group(1))
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                address, port = fields[1].split(":")
                raw = bytes.fromhex(address)  # each 32-bit word in host (little-endian) order
                found.add(
                    (
                        str(ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))),
                        int(port, 16),
                    )
                )
    return found


def assert_gone_without_orphans(server: DevServer, returncode: int) -> None:
    log = server.log.read_text(errors="replace")
    assert returncode == 0, f"dagster dev exited with {returncode}; log tail:\n{log[-3000:]}"
    deadline = time.time() + SHUTDOWN_S  # its webserver, daemon and code servers exit just after it
    while session_pids(server.proc.pid) and time.time() < deadline:
        time.sleep(0.5)
    assert not session_pids(server.proc.pid), "processes of dagster dev's session outlived it"
    assert "Dagster services shut down." in log and "did not terminate cleanly" not in log, log[-3000:]


def test_server_answers_on_loopback_only_with_telemetry_off_and_stops_on_sigterm(tmp_path):
    server = DevServer(tmp_path)
    try:
        server.wait_for(server.answers, time.time() + DEADLINE_S, "the GraphQL API with the code location loaded")
        assert server.graphql("{ version }")["version"] == dg.__version__
        listening = listening_addresses(session_pids(server.proc.pid))
        assert ("127.0.0.1", server.port) in listening
        assert all(ipaddress.ip_address(address).is_loopback for address, _ in listening), listening
        with urllib.request.urlopen(server.url("/"), timeout=10) as response:
            page = response.read().decode()
        init = re.search(r'<script type="application/json" id="initialization-data"[^>]*>(.*?)</script>', page, re.S)
        assert json.loads(init.group(1))["telemetryEnabled"] is False
    finally:
        returncode = server.stop(signal.SIGTERM, group=False)
    assert_gone_without_orphans(server, returncode)
    assert not (server.home / "logs" / "event.log").exists(), "telemetry wrote its event log"


def test_landed_batch_is_trained_decided_and_scored_without_a_click(tmp_path):
    server = DevServer(tmp_path)
    data = server.data
    try:
        batch = data / "landing" / "synthetic_risk" / "batch_0001"
        batch.mkdir(parents=True)
        frame = synthetic_records(1000, seed=7)
        frame = frame.with_columns(frame["outcome"].scatter([0, 1], None))
        frame.write_csv(batch / "records.csv")
        (batch / "_READY").touch()
        models = data / "models" / "synthetic_risk"
        predictions = data / "predictions" / "synthetic_risk" / "batch_0001"  # <version>.parquet inside
        server.wait_for(
            lambda: any(predictions.glob("*.parquet")) and set(server.run_statuses()) == {"SUCCESS"},
            time.time() + DEADLINE_S,
            "the batch's predictions and its run's success",
        )
        versions = [p for p in models.iterdir() if (p / "manifest.json").exists()]
        assert len(versions) == 1
        manifest = json.loads((versions[0] / "manifest.json").read_text())
        assert manifest["decision"]["promote"] is True and manifest["batches"][0]["batch_id"] == "batch_0001"
        assert json.loads((models / "champion.json").read_text())["version"] == versions[0].name
    finally:
        returncode = server.stop(signal.SIGINT, group=True)
    assert_gone_without_orphans(server, returncode)
