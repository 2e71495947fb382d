"""`dagster asset materialize --select <typo>`: Dagster hands an empty selection on as "the whole job", which
would retrain and promote every task. The project's executor refuses that run before its first step."""

import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from meddiag_pipelines_tests.conftest import REPO, instance_env, run_cli

DAGSTER = Path(sys.executable).with_name("dagster")


def _materialize(tmp_path: Path, selection: str, *extra: str) -> tuple[subprocess.CompletedProcess, dg.DagsterInstance]:
    home, data = tmp_path / "home", tmp_path / "data"
    data.mkdir(exist_ok=True)
    command = [str(DAGSTER), "asset", "materialize", "-m", "meddiag_pipelines.definitions", "--select", selection]
    done = run_cli([*command, *extra], env=instance_env(home, data))
    return done, dg.DagsterInstance.from_config(str(home))


def _materialized(instance: dg.DagsterInstance) -> set[str]:
    return {k.to_user_string() for k in instance.get_asset_keys() if instance.get_latest_materialization_event(k)}


@pytest.mark.slow
def test_a_selection_that_matches_nothing_runs_nothing(tmp_path):
    done, instance = _materialize(tmp_path, "group:heart_diseas")
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "the selection 'group:heart_diseas' matches no asset" in output and "nothing was run" in output
    assert _materialized(instance) == set()
    assert not any((tmp_path / "data").iterdir())  # no warehouse, model, report or quarantine written


@pytest.mark.slow
def test_a_selection_that_names_assets_still_runs(tmp_path):
    """A batch-level asset named with its partition (a landed batch registered in the instance)."""
    shutil.copytree(
        REPO / "data" / "landing" / "heart_disease" / "batch_0001",
        tmp_path / "data" / "landing" / "heart_disease" / "batch_0001",
    )
    instance_env(tmp_path / "home", tmp_path / "data")  # the instance `_materialize` runs in, to register the batch
    with dg.DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        instance.add_dynamic_partitions("heart_disease__batches", ["batch_0001"])
    done, instance = _materialize(tmp_path, "heart_disease/raw_records", "--partition", "batch_0001")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert _materialized(instance) == {"heart_disease/raw_records"}


@pytest.mark.parametrize(
    "argv", [["dagster", "asset", "materialize", "--select", "group:typo"], ["dg", "launch", "--assets=group:typo"]]
)
def test_the_refusal_names_the_selection_of_either_cli(monkeypatch, argv):
    from meddiag_pipelines.defs.selection_guard import _cli_selection

    monkeypatch.setattr(sys, "argv", argv)
    assert _cli_selection() == "the selection 'group:typo'"
