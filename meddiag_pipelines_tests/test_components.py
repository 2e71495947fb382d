"""A task spec as a Dagster Component: `dg` sees the same tasks as `-m meddiag_pipelines.definitions`, a
defs.yaml naming a spec builds that task, and a defs.yaml naming a bad spec fails naming the file."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster.components.testing import create_defs_folder_sandbox

from meddiag_pipelines.defs.components.task import TaskComponent
from meddiag_pipelines.defs.resources.storage import build_resources
from meddiag_pipelines.specs import SpecError
from meddiag_pipelines_tests.conftest import REPO, SYNTHETIC_SPEC
from meddiag_pipelines_tests.test_defs import BAD_DAGSTER_VALUES, TASK_ASSETS, spec_error_descriptions

DG = Path(sys.executable).with_name("dg")


def dg_command(args: list[str], cwd: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """`dg` as a user runs it (the project's DAGSTER_HOME config, telemetry off), on a throwaway instance."""
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text((REPO / "dagster_home" / "dagster.yaml").read_text())
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": os.pathsep.join([str(REPO), str(cwd / "src")])}
    env.pop("MEDDIAG_TASKS_DIR", None)
    return subprocess.run([str(DG), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def write_spec(path: Path, **updates) -> Path:
    path.write_text(yaml.safe_dump({**SYNTHETIC_SPEC, **updates}))
    return path


def write_defs_yaml(folder: Path, spec: Path) -> Path:
    folder.mkdir(parents=True)
    component = {"type": "meddiag_pipelines.defs.components.task.TaskComponent", "attributes": {"spec": str(spec)}}
    (folder / "defs.yaml").write_text(yaml.safe_dump(component))
    return folder


def summary(defs) -> dict:
    graph = defs.resolve_asset_graph()
    return {"assets": {k.to_user_string() for k in graph.get_all_asset_keys()},
            "checks": {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys},
            "jobs": {j.name for j in defs.jobs or ()}, "sensors": {s.name for s in defs.sensors or ()},
            "schedules": {s.name for s in defs.schedules or ()}}  # fmt: skip


def test_dg_code_location_holds_the_same_tasks_as_definitions(monkeypatch):
    """The defs.yaml components give what the spec folder gives, once each (nothing from the Python modules
    under defs/), with the project's resources."""
    monkeypatch.delenv("MEDDIAG_TASKS_DIR", raising=False)
    from meddiag_pipelines.definitions import build_definitions
    from meddiag_pipelines.dg_definitions import defs

    dg_defs = defs()
    assert summary(dg_defs) == summary(build_definitions())
    assert {"storage", "warehouse_io_manager"} <= set(dg_defs.resources)
    assert dg_defs.executor.name == "in_process"


def test_a_defs_yaml_naming_a_spec_builds_that_task(tmp_path):
    spec = write_spec(tmp_path / "sepsis.yaml", name="sepsis_risk")
    with create_defs_folder_sandbox() as sandbox:
        path = sandbox.scaffold_component(TaskComponent, defs_path="tasks/sepsis_risk", scaffold_params={"spec": str(spec)})
        written = yaml.safe_load((path / "defs.yaml").read_text())["attributes"]["spec"]
        assert not Path(written).is_absolute() and (path / written).resolve() == spec.resolve()
        with sandbox.load_component_and_build_defs(defs_path=path) as (component, defs):
            assert isinstance(component, TaskComponent)
            built = summary(dg.Definitions.merge(defs, dg.Definitions(resources=build_resources(tmp_path / "data"))))
    assert built["assets"] == {f"sepsis_risk/{a}" for a in TASK_ASSETS}
    assert built["jobs"] == {"sepsis_risk_batches_job"}
    assert built["sensors"] == {"sepsis_risk_landing_sensor", "sepsis_risk_automation"}


# spec keys written over SYNTHETIC_SPEC (None: no spec file at all) -> what its error names
BAD_COMPONENT_SPECS = {
    "missing": (None, "not a regular file"),
    "invalid": ({"positive": "maybe"}, "positive class 'maybe' is not among classes"),
    **{file: (yaml.safe_load(extra), f"key '{key}'") for file, (extra, key) in BAD_DAGSTER_VALUES.items()},
}


@pytest.mark.parametrize("problem", list(BAD_COMPONENT_SPECS))
def test_a_defs_yaml_naming_a_bad_spec_gives_its_spec_error_asset(tmp_path, problem):
    """A spec that does not load (missing, a bad `positive`, a cron, owner or time zone Dagster refuses) is an
    asset of `spec_errors` naming the spec file, the problem and its defs.yaml, never a failed code location."""
    updates, expected = BAD_COMPONENT_SPECS[problem]
    spec = tmp_path / "sepsis.yaml"
    if updates is not None:
        write_spec(spec, **updates)
    with create_defs_folder_sandbox() as sandbox:
        path = write_defs_yaml(sandbox.defs_folder_path / "sepsis_risk", spec)
        with sandbox.load_component_and_build_defs(defs_path=path) as (_, defs):
            (error,) = spec_error_descriptions(defs)
    assert f"{spec.resolve()}: " in error and expected in error and str(path / "defs.yaml") in error, error


def test_one_bad_task_component_leaves_the_others_in_the_code_location(tmp_path):
    """A defs folder with a good task and one whose spec has a cron Dagster refuses: the good task loads, the bad
    one is its spec_errors asset (before issue 24 the whole location failed to import)."""
    good = write_spec(tmp_path / "good.yaml", name="sepsis_risk")
    bad = write_spec(tmp_path / "bad.yaml", name="bad_task", schedule={"cron": "every day at noon"})
    with create_defs_folder_sandbox() as sandbox:
        write_defs_yaml(sandbox.defs_folder_path / "sepsis_risk", good)
        write_defs_yaml(sandbox.defs_folder_path / "bad_task", bad)
        with sandbox.build_all_defs() as defs:
            built = summary(dg.Definitions.merge(defs, dg.Definitions(resources=build_resources(tmp_path / "data"))))
            (error,) = spec_error_descriptions(defs)
    assert {f"sepsis_risk/{a}" for a in TASK_ASSETS} <= built["assets"] and built["jobs"] == {"sepsis_risk_batches_job"}
    assert f"{bad.resolve()}: key 'schedule.cron'" in error


def test_a_task_component_that_cannot_be_built_gives_its_spec_error_asset(tmp_path, monkeypatch):
    import meddiag_pipelines.definitions as definitions

    def refuse(spec):
        raise dg.DagsterInvalidDefinitionError("a value Dagster refuses")

    monkeypatch.setattr(definitions, "build_task_definitions", refuse)
    spec = write_spec(tmp_path / "sepsis.yaml", name="sepsis_risk")
    with create_defs_folder_sandbox() as sandbox:
        path = write_defs_yaml(sandbox.defs_folder_path / "sepsis_risk", spec)
        with sandbox.load_component_and_build_defs(defs_path=path) as (_, defs):
            (error,) = spec_error_descriptions(defs)
    assert f"{spec.resolve()}: task 'sepsis_risk' cannot be built" in error and "a value Dagster refuses" in error


def test_scaffolding_refuses_a_bad_spec(tmp_path):
    spec = write_spec(tmp_path / "sepsis.yaml", positive="maybe")
    with create_defs_folder_sandbox() as sandbox:
        with pytest.raises(SpecError, match=re.escape(f"{spec.resolve()}: ") + "key .* positive class 'maybe' is not among"):
            sandbox.scaffold_component(TaskComponent, defs_path="tasks/sepsis_risk", scaffold_params={"spec": str(spec)})
        assert not (sandbox.defs_folder_path / "tasks" / "sepsis_risk" / "defs.yaml").exists()


def test_dg_telemetry_is_off_with_the_project_dagster_home(monkeypatch, tmp_path):
    """dg reads its own telemetry setting only from the user's dg.toml and $DAGSTER_HOME/dagster.yaml (not from
    pyproject.toml): the project's dagster_home turns it off."""
    from dagster_dg_core.utils.telemetry import get_telemetry_settings_for_cli

    monkeypatch.setenv("DG_CLI_CONFIG", str(tmp_path / "no-user-config.toml"))
    monkeypatch.setenv("DAGSTER_HOME", str(REPO / "dagster_home"))
    assert get_telemetry_settings_for_cli().dagster_telemetry_enabled is False


@pytest.mark.slow
def test_dg_check_defs_passes_from_the_repo_root(tmp_path):
    result = dg_command(["check", "defs"], REPO, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_dg_loads_the_good_task_beside_a_bad_spec(tmp_path):
    """A project with a good task and a spec whose cron Dagster refuses: `dg check defs` passes with a WARNING
    naming the bad spec, and `dg list defs` shows the good task and the bad spec's spec_errors asset."""
    good = write_spec(tmp_path / "sepsis.yaml")
    bad = write_spec(tmp_path / "bad.yaml", name="bad_task", schedule={"cron": "every day at noon"})
    project = tmp_path / "project"
    (project / "src" / "clinic" / "defs").mkdir(parents=True)
    (project / "dg.toml").write_text('directory_type = "project"\n[project]\nroot_module = "clinic"\n')
    (project / "src" / "clinic" / "__init__.py").touch()
    (project / "src" / "clinic" / "definitions.py").write_text(textwrap.dedent("""
        from pathlib import Path
        import dagster as dg

        from meddiag_pipelines.defs.resources.storage import build_resources

        @dg.definitions
        def defs():
            tasks = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
            return dg.Definitions.merge(dg.Definitions(resources=build_resources()), tasks)
    """))
    write_defs_yaml(project / "src" / "clinic" / "defs" / "sepsis_risk", good)
    write_defs_yaml(project / "src" / "clinic" / "defs" / "bad_task", bad)
    checked = dg_command(["check", "defs"], project, tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{bad}: key 'schedule.cron'" in checked.stdout + checked.stderr
    listed = dg_command(["list", "defs", "--json"], project, tmp_path)
    keys = {a["asset_key"] for a in json.loads(listed.stdout)["assets"]}
    assert "synthetic_risk/champion" in keys and [k for k in keys if k.startswith("spec_errors/bad_")], keys
