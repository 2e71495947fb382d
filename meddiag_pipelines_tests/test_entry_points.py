"""Entry points without side effects (issue 25): importing any module of the package builds no Definitions and
scans no spec folder; the code location is built when Dagster (or a caller) asks for it."""

import json
import sys

import pytest
import yaml

from meddiag_pipelines.defs.build import build_definitions
from meddiag_pipelines_tests.conftest import SYNTHETIC_SPEC, run_cli, synthetic_records

# In a fresh process: make building a Definitions and reading a spec raise, import every module of the package
# (each module's top level runs once, at its first import), then check that the guards do catch a build.
PROBE = """
import importlib, json, pkgutil, sys
import dagster as dg
import meddiag_pipelines, meddiag_pipelines.specs as specs

class SideEffect(Exception):
    pass

def refuse(what):
    def raiser(*args, **kwargs):
        raise SideEffect(what)
    return raiser

dg.Definitions.__init__ = refuse("Definitions built")
specs.scan_specs = refuse("spec folders scanned")
specs.load_spec = refuse("spec read")
names = sorted(m.name for m in pkgutil.walk_packages(meddiag_pipelines.__path__, "meddiag_pipelines."))
failed = {}
for name in names:
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = f"{type(exc).__name__}: {exc}"
try:
    importlib.import_module("meddiag_pipelines.definitions").defs()
    caught = None
except SideEffect as exc:
    caught = str(exc)
print(json.dumps({"modules": names, "failed": failed, "caught": caught}))
"""


def test_importing_any_module_builds_nothing_and_scans_no_spec():
    done = run_cli([sys.executable, "-c", PROBE], env={"MEDDIAG_EXECUTOR": ""}, expect_rc=0)
    result = json.loads(done.stdout.splitlines()[-1])
    assert {
        "meddiag_pipelines.definitions",
        "meddiag_pipelines.dg_definitions",
        "meddiag_pipelines.update",
        "meddiag_pipelines.defs.build",
        "meddiag_pipelines.defs.components.task_folder",
        "meddiag_pipelines.defs.dask_executor",
        "meddiag_pipelines.__main__",
    } <= set(result["modules"])
    assert result["failed"] == {}
    # the guards work: the entry point, once called, scans the spec folders
    assert result["caught"] == "spec folders scanned"


@pytest.mark.slow
def test_update_builds_the_definitions_once_per_command(tmp_path, monkeypatch, capsys):
    """`meddiag update` over every task plans them all, and executes its runs in its own process, on one build of
    the definitions (it was one per task and one per run): here the bundled tasks with nothing landed, and a
    SYNTHETIC task whose batch is quarantined (two runs, no training)."""
    from meddiag_pipelines import update
    from meddiag_pipelines.__main__ import main

    (tmp_path / "home").mkdir()
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "synthetic_risk.yaml").write_text(yaml.safe_dump(SYNTHETIC_SPEC))
    records = synthetic_records(20, seed=1)
    batch = tmp_path / "data" / "landing" / "synthetic_risk" / "b1"
    batch.mkdir(parents=True)
    records.with_columns(outcome=records["rid"]).write_csv(batch / "records.csv")  # labels outside the domain
    (batch / "_READY").touch()
    monkeypatch.setenv("MEDDIAG_TASKS_DIR", str(tmp_path / "tasks"))
    monkeypatch.setenv("MEDDIAG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    built, runs = [], []

    def counted():
        built.append(1)
        return build_definitions()

    monkeypatch.setattr(update, "build_definitions", counted)
    monkeypatch.setattr(update, "_execute", lambda *args, execute=update._execute: runs.append(1) or execute(*args))
    assert main(["update"]) == 0
    from meddiag_pipelines.specs import scan_specs

    assert len(capsys.readouterr().out.splitlines()) == len(scan_specs().specs)  # a line per task
    assert len(runs) == 2 and len(built) == 1
