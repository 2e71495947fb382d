"""The Dagster instance the CLI uses has telemetry off, with or without DAGSTER_HOME."""

import sys
from pathlib import Path

import pytest
import yaml

from meddiag_pipelines_tests.conftest import REPO, run_cli

DAGSTER = Path(sys.executable).with_name("dagster")
TINY_DEFS = (
    "import dagster as dg\n\n@dg.asset\ndef one() -> int:\n    return 1\n\ndefs = dg.Definitions(assets=[one])\n"
)


def test_repo_root_instance_config_is_the_dagster_home_one():
    """Without DAGSTER_HOME the CLI's throwaway instance reads dagster.yaml from the working directory."""
    root, home = REPO / "dagster.yaml", REPO / "dagster_home" / "dagster.yaml"
    assert root.resolve() == home.resolve()
    assert yaml.safe_load(home.read_text())["telemetry"]["enabled"] is False


@pytest.mark.slow
def test_cli_without_dagster_home_sends_no_telemetry(tmp_path):
    """The real CLI, DAGSTER_HOME unset, run from the repo root as the README does: no telemetry log is written
    (with telemetry on, Dagster writes ~/.dagster/logs/event.log for later upload)."""
    (tmp_path / "defs.py").write_text(TINY_DEFS)
    done = run_cli(
        [str(DAGSTER), "asset", "materialize", "-f", str(tmp_path / "defs.py"), "--select", "one"],
        env={"DAGSTER_HOME": None, "HOME": str(tmp_path / "home")},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "RUN_SUCCESS" in done.stderr
    assert not (tmp_path / "home" / ".dagster" / "logs").exists()


def test_run_monitoring_frees_the_slots_of_finished_runs():
    """Dagster's daemon frees the pool slots a finished run still holds only when this is above 0 (0 turns it off)."""
    monitoring = yaml.safe_load((REPO / "dagster_home" / "dagster.yaml").read_text())["run_monitoring"]
    assert monitoring["enabled"] is True and monitoring["free_slots_after_run_end_seconds"] > 0
