"""The spec folders as one Dagster Component: `dg` sees what `-m meddiag_pipelines.definitions` sees (the
bundled specs and MEDDIAG_TASKS_DIR's, resources and executor), and a bad spec the same way under both: the other
tasks load, and the error is a `spec_errors` asset naming the file."""

import json
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster.components.testing import create_defs_folder_sandbox

from meddiag_pipelines import definitions, dg_definitions
from meddiag_pipelines.defs import build
from meddiag_pipelines.defs.components.task_folder import TaskFolderComponent
from meddiag_pipelines_tests.conftest import REPO, SYNTHETIC_SPEC, TASK_ASSETS, instance_env, run_cli
from meddiag_pipelines_tests.test_defs import BAD_DAGSTER_VALUES, spec_error_descriptions

DG = Path(sys.executable).with_name("dg")
DAGSTER = Path(sys.executable).with_name("dagster")
BUNDLED_TASKS = {
    "heart_disease",
    "breast_cancer",
    "icd10_chapters",
    "synthetic_chest_phantoms",
    "eunomia_gi_bleed",
    "synthetic_volume_phantoms",
}


def write_spec(path: Path, **updates) -> Path:
    path.write_text(yaml.safe_dump({**SYNTHETIC_SPEC, **updates}))
    return path


def good_and_bad_specs(folder: Path) -> tuple[Path, Path]:
    """A folder with a good task and a spec whose cron Dagster refuses."""
    folder.mkdir(exist_ok=True)
    return (
        write_spec(folder / "sepsis.yaml", name="sepsis_risk"),
        write_spec(folder / "bad.yaml", name="bad_task", schedule={"cron": "every day at noon"}),
    )


def summary(defs: dg.Definitions) -> dict:
    graph = defs.resolve_asset_graph()
    return {
        "assets": {k.to_user_string(): graph.get(k).description for k in graph.get_all_asset_keys()},
        "checks": {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys},
        "jobs": {j.name for j in defs.jobs or ()},
        "sensors": {s.name for s in defs.sensors or ()},
        "schedules": {s.name for s in defs.schedules or ()},
        "resources": set(defs.resources or ()),
        "executor": defs.executor.name if defs.executor else None,
    }


def test_dg_code_location_holds_the_same_definitions_as_the_module_entry(monkeypatch):
    """The one component gives every bundled task, with the project's resources and executor, once each
    (nothing from the Python modules under defs/)."""
    monkeypatch.delenv("MEDDIAG_TASKS_DIR", raising=False)
    dg_defs = summary(dg_definitions.defs())
    assert dg_defs == summary(definitions.defs())
    assert {a.split("/")[0] for a in dg_defs["assets"]} == BUNDLED_TASKS
    assert {"storage", "warehouse_io_manager"} <= dg_defs["resources"] and dg_defs["executor"] == "in_process"


def test_a_spec_in_meddiag_tasks_dir_is_a_task_under_both_entry_points(tmp_path, monkeypatch):
    """Issue 25: `dg` ignored MEDDIAG_TASKS_DIR; a good and a bad spec there now give the same definitions under
    both entry points: the good task beside the bundled ones, and the bad spec's spec_errors asset naming its file."""
    _, bad = good_and_bad_specs(tmp_path / "specs")
    monkeypatch.setenv("MEDDIAG_TASKS_DIR", str(tmp_path / "specs"))
    loaded = dg_definitions.defs()
    assert summary(loaded) == summary(definitions.defs())
    groups = {loaded.resolve_asset_graph().get(k).group_name for k in loaded.resolve_asset_graph().get_all_asset_keys()}
    assert groups == BUNDLED_TASKS | {"sepsis_risk", "spec_errors"}
    (error,) = spec_error_descriptions(loaded)
    assert f"{bad}: key 'schedule.cron'" in error


def test_the_component_alone_builds_every_task_of_the_spec_folders(tmp_path, monkeypatch):
    """The component needs no attribute: a defs folder holding only its defs.yaml gives the bundled tasks and
    MEDDIAG_TASKS_DIR's (adding a task is adding its spec file)."""
    write_spec(tmp_path / "sepsis.yaml", name="sepsis_risk")
    monkeypatch.setenv("MEDDIAG_TASKS_DIR", str(tmp_path))
    with create_defs_folder_sandbox() as sandbox:
        path = sandbox.defs_folder_path / "tasks"
        path.mkdir()
        (path / "defs.yaml").write_text(f"type: {TaskFolderComponent.__module__}.TaskFolderComponent\n")
        with sandbox.load_component_and_build_defs(defs_path=path) as (component, defs):
            assert isinstance(component, TaskFolderComponent)
            built = summary(defs)
    assert {f"{task}/{a}" for task in ("sepsis_risk", "heart_disease") for a in TASK_ASSETS} <= set(built["assets"])
    assert {"sepsis_risk_batches_job", "heart_disease_batches_job"} <= built["jobs"]
    assert {"sepsis_risk_landing_sensor", "sepsis_risk_automation"} <= built["sensors"]


# spec keys written over SYNTHETIC_SPEC -> what its error names
BAD_SPECS = {
    "invalid": ({"positive": "maybe"}, "positive class 'maybe' is not among classes"),
    **{file: (yaml.safe_load(extra), f"key '{key}'") for file, (extra, key) in BAD_DAGSTER_VALUES.items()},
}


@pytest.mark.parametrize("problem", list(BAD_SPECS))
def test_a_bad_spec_is_the_same_spec_error_asset_under_both_entry_points(tmp_path, monkeypatch, problem):
    """A spec that does not load (a bad `positive`, a cron, owner or time zone Dagster refuses) is an asset of
    `spec_errors` naming the spec file and the problem, never a failed code location, under dg as under -m."""
    updates, expected = BAD_SPECS[problem]
    spec = write_spec(tmp_path / "sepsis.yaml", **updates)
    monkeypatch.setenv("MEDDIAG_TASKS_DIR", str(tmp_path))
    (error,) = spec_error_descriptions(dg_definitions.defs())
    assert f"{spec}: " in error and expected in error, error
    assert spec_error_descriptions(definitions.defs()) == [error]


def test_a_missing_meddiag_tasks_dir_is_a_spec_error_under_both_entry_points(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDDIAG_TASKS_DIR", str(tmp_path / "nowhere"))
    (error,) = spec_error_descriptions(dg_definitions.defs())
    assert error == f"Spec not loaded: {tmp_path / 'nowhere'}: MEDDIAG_TASKS_DIR is not a folder"
    assert spec_error_descriptions(definitions.defs()) == [error]


def test_a_task_that_cannot_be_built_is_its_spec_error_asset_under_dg(tmp_path, monkeypatch):
    build_one = build.build_task_definitions

    def refuse_sepsis(spec):
        if spec.name == "sepsis_risk":
            raise dg.DagsterInvalidDefinitionError("a value Dagster refuses")
        return build_one(spec)

    monkeypatch.setattr(build, "build_task_definitions", refuse_sepsis)
    spec = write_spec(tmp_path / "sepsis.yaml", name="sepsis_risk")
    monkeypatch.setenv("MEDDIAG_TASKS_DIR", str(tmp_path))
    loaded = dg_definitions.defs()
    (error,) = spec_error_descriptions(loaded)
    assert f"{spec}: task 'sepsis_risk' cannot be built" in error and "a value Dagster refuses" in error
    assert loaded.resolve_job_def("heart_disease_batches_job")


def test_dg_telemetry_is_off_with_the_project_dagster_home(monkeypatch, tmp_path):
    """dg reads its own telemetry setting only from the user's dg.toml and $DAGSTER_HOME/dagster.yaml (not from
    pyproject.toml): the project's dagster_home turns it off."""
    from dagster_dg_core.utils.telemetry import get_telemetry_settings_for_cli

    monkeypatch.setenv("DG_CLI_CONFIG", str(tmp_path / "no-user-config.toml"))
    monkeypatch.setenv("DAGSTER_HOME", str(REPO / "dagster_home"))
    assert get_telemetry_settings_for_cli().dagster_telemetry_enabled is False


@pytest.mark.slow
def test_dg_check_defs_passes_from_the_repo_root(tmp_path):
    # the project's DAGSTER_HOME config (telemetry off), on a throwaway instance and data root
    run_cli([str(DG), "check", "defs"], env=instance_env(tmp_path / "home", tmp_path / "data"), expect_rc=0)


@pytest.mark.slow
def test_dg_and_the_module_entry_list_and_refuse_a_bad_spec_alike(tmp_path):
    """A good and a bad spec in MEDDIAG_TASKS_DIR, through the command lines: `dg check defs` passes with a WARNING
    naming the bad spec; `dg list defs` and `dagster asset list -m meddiag_pipelines.definitions` list the same
    assets (the good task and the bad spec's spec_errors asset); materializing that asset fails naming the file,
    with `dg launch` as with `dagster asset materialize`."""
    _, bad = good_and_bad_specs(tmp_path / "specs")
    env = instance_env(tmp_path / "home", tmp_path / "data", tmp_path / "specs")
    checked = run_cli([str(DG), "check", "defs"], env=env, expect_rc=0)
    assert f"{bad}: key 'schedule.cron'" in checked.stdout + checked.stderr
    listed = run_cli([str(DG), "list", "defs", "--json"], env=env)
    dg_keys = {a["asset_key"] for a in json.loads(listed.stdout)["assets"]}
    module = ["-m", "meddiag_pipelines.definitions"]
    dagster_keys = set(run_cli([str(DAGSTER), "asset", "list", *module], env=env).stdout.split())
    assert dg_keys == dagster_keys and "sepsis_risk/champion" in dg_keys, (dg_keys, dagster_keys)
    (error_key,) = [k for k in dg_keys if k.startswith("spec_errors/bad_")]
    for command in (
        [str(DG), "launch", "--assets", error_key],
        [str(DAGSTER), "asset", "materialize", *module, "--select", error_key],
    ):
        failed = run_cli(command, env=env)
        output = failed.stdout + failed.stderr
        assert failed.returncode != 0 and f"task spec not loaded: {bad}: key 'schedule.cron'" in output, command
