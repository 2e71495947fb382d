"""Pin the code location: a renamed asset, group, job or check shows up here, not in production."""

import os
import sys
import warnings

import dagster as dg
import pytest

from meddiag_pipelines import definitions
from meddiag_pipelines.defs import build
from meddiag_pipelines.defs.build import build_definitions, build_task_definitions
from meddiag_pipelines.specs import BUNDLED_TASKS_DIR, SPEC_ERRORS_GROUP, load_spec
from meddiag_pipelines_tests.conftest import TASK_ASSETS, run_cli

BUNDLED = [load_spec(path) for path in sorted(BUNDLED_TASKS_DIR.glob("*.yaml"))]


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    """The code location of `-m meddiag_pipelines.definitions`, bundled specs only."""
    saved = os.environ.pop("MEDDIAG_TASKS_DIR", None)
    try:
        return definitions.defs()
    finally:
        if saved is not None:
            os.environ["MEDDIAG_TASKS_DIR"] = saved


def test_definitions_load_with_pinned_assets_and_groups(defs):
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    for task in ("heart_disease", "breast_cancer"):
        assert {f"{task}/{a}" for a in TASK_ASSETS} <= keys
        for asset in TASK_ASSETS:
            node = graph.get(dg.AssetKey([task, asset]))
            assert node.group_name == task
            assert node.description and node.kinds and node.owners


def test_jobs_and_blocking_checks_are_pinned(defs):
    for task in ("heart_disease", "breast_cancer"):
        assert defs.resolve_job_def(f"{task}_batches_job").name == f"{task}_batches_job"
    check_keys = {(k.asset_key.to_user_string(), k.name) for k in defs.resolve_asset_graph().asset_check_keys}
    assert ("heart_disease/validated_records", "validated_records_suite") in check_keys
    assert ("heart_disease/champion", "champion_fit_for_use") in check_keys


def test_every_step_of_every_task_is_in_its_pool(defs):
    """One pool per task (limit 1 in dagster_home/dagster.yaml): two runs never ingest or publish at once."""
    graph = defs.resolve_asset_graph()
    tasks = {spec.name: spec.modality for spec in BUNDLED}
    assert set(tasks.values()) == {"tabular", "image", "text", "omop", "volume"}
    seen = set()
    for key in graph.get_all_asset_keys():
        task = graph.get(key).group_name
        assert defs.resolve_assets_def(key).op.pool == f"meddiag_{task}", key.to_user_string()
        seen.add(task)
    assert seen == set(tasks)


# Each step's inputs, by asset name within its own task; image baselines train on the features, not the candidate.
PARENTS = {
    "raw_records": set(),
    "validated_records": {"raw_records"},
    "split": {"validated_records"},
    "features": {"split"},
    "feature_plan": {"split"},
    "candidate_model": {"features", "feature_plan"},
    "baseline_model": {"candidate_model"},
    "evaluation": {"split", "candidate_model", "baseline_model"},
    "champion": {"split", "candidate_model", "baseline_model", "evaluation"},
    "predictions": {"champion", "split"},
}
IMAGE_PARENTS = {**PARENTS, "baseline_model": {"features", "feature_plan"}}


def test_lineage_takes_real_inputs_from_its_own_task(defs):
    """Parents by full asset key: an edge to another task's asset of the same name fails here."""
    graph = defs.resolve_asset_graph()
    assert {"tabular", "image", "text"} <= {spec.modality for spec in BUNDLED}
    for spec in BUNDLED:
        # A volume's baseline is the voxel-feature model trained beside its CNN in the candidate step.
        expected = IMAGE_PARENTS if spec.modality == "image" else PARENTS
        for asset, parents in expected.items():
            actual = graph.get(dg.AssetKey([spec.name, asset])).parent_keys
            assert actual == {dg.AssetKey([spec.name, p]) for p in parents}, f"{spec.name}/{asset}"


def test_text_task_is_pinned(defs):
    task = "icd10_chapters"
    graph = defs.resolve_asset_graph()
    for asset in TASK_ASSETS:
        node = graph.get(dg.AssetKey([task, asset]))
        assert node.group_name == task and node.description and node.kinds and node.owners
    assert defs.resolve_job_def(f"{task}_batches_job").name == f"{task}_batches_job"
    check_keys = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert {
        (f"{task}/raw_records", "unreadable_files_quarantined"),
        (f"{task}/validated_records", "validated_records_suite"),
        (f"{task}/split", "texts_unique_across_splits"),
        (f"{task}/champion", "champion_fit_for_use"),
    } <= check_keys


def test_a_bad_spec_leaves_the_other_tasks_and_stays_visible(tmp_path, monkeypatch, caplog):
    """A bad file in MEDDIAG_TASKS_DIR: the bundled and the good extra tasks load; the error is a WARNING at load,
    the description of a spec_errors asset, and the failure of that asset's materialization."""
    (tmp_path / "good.yaml").write_text("name: extra_task\nmodality: tabular\nlabel: y\nid: rid\npositive: 1\n")
    (tmp_path / "bad.yaml").write_text("name: bad_task\nmodality: tabular\nlabel: y\nid: rid\nranges: {a: [3, 1]}\n")
    monkeypatch.setenv("MEDDIAG_TASKS_DIR", str(tmp_path))
    problem = "range of 'a': the lower bound 3.0 is above the upper bound 1.0"
    with caplog.at_level("WARNING"):
        loaded = build_definitions(data_dir=tmp_path / "data")
    assert any(
        problem in r.getMessage() and "bad.yaml" in r.getMessage() for r in caplog.records if r.levelname == "WARNING"
    )
    graph = loaded.resolve_asset_graph()
    groups = {graph.get(k).group_name for k in graph.get_all_asset_keys()}
    assert {"heart_disease", "breast_cancer", "icd10_chapters", "extra_task", SPEC_ERRORS_GROUP} <= groups
    assert "bad_task" not in groups
    assert loaded.resolve_job_def("extra_task_batches_job")
    (error_key,) = [k for k in graph.get_all_asset_keys() if graph.get(k).group_name == SPEC_ERRORS_GROUP]
    assert problem in graph.get(error_key).description and "bad.yaml" in graph.get(error_key).description
    result = dg.materialize([loaded.resolve_assets_def(error_key)], raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert problem in failure.step_failure_data.user_failure_data.description


def test_bundled_definitions_have_no_spec_errors(defs):
    graph = defs.resolve_asset_graph()
    assert not [k for k in graph.get_all_asset_keys() if graph.get(k).group_name == SPEC_ERRORS_GROUP]


# One spec per value Dagster refuses (or, for the time zone, accepted silently until a tick): the key it names.
BAD_DAGSTER_VALUES = {
    "cron_words.yaml": ("schedule:\n  cron: every day at noon\n", "schedule.cron"),
    "cron_six_fields.yaml": ("schedule:\n  cron: '0 0 12 * * *'\n", "schedule.cron"),
    "owner.yaml": ("owner: not an owner\n", "owner"),
    "timezone.yaml": ("schedule:\n  timezone: Mars/Olympus\n", "schedule.timezone"),
}


def bad_dagster_specs(folder) -> None:
    """A good extra task beside one spec for each value of BAD_DAGSTER_VALUES (each its own task name)."""
    folder.mkdir(exist_ok=True)
    (folder / "good.yaml").write_text("name: extra_task\nmodality: tabular\nlabel: y\nid: rid\npositive: 1\n")
    for i, (file, (extra, _)) in enumerate(BAD_DAGSTER_VALUES.items()):
        (folder / file).write_text(f"name: bad_{i}\nmodality: tabular\nlabel: y\nid: rid\npositive: 1\n{extra}")


def spec_error_descriptions(loaded: dg.Definitions) -> list[str]:
    """The descriptions of the spec_errors assets (read from the definitions: no resources needed)."""
    return [s.description for a in loaded.assets or () for s in a.specs if s.group_name == SPEC_ERRORS_GROUP]


def test_a_cron_owner_or_timezone_dagster_refuses_is_a_spec_error_of_its_file(tmp_path, monkeypatch):
    """Issue 24: an invalid cron or owner made the whole code location fail to import; a bad time zone loaded."""
    bad_dagster_specs(tmp_path / "specs")
    monkeypatch.setenv("MEDDIAG_TASKS_DIR", str(tmp_path / "specs"))
    loaded = build_definitions(data_dir=tmp_path / "data")
    groups = {loaded.resolve_asset_graph().get(k).group_name for k in loaded.resolve_asset_graph().get_all_asset_keys()}
    assert {"heart_disease", "icd10_chapters", "extra_task"} <= groups
    assert not {g for g in groups if g.startswith("bad_")}
    errors = spec_error_descriptions(loaded)
    assert len(errors) == len(BAD_DAGSTER_VALUES)
    for file, (_, key) in BAD_DAGSTER_VALUES.items():
        assert [e for e in errors if f"{tmp_path / 'specs' / file}: key '{key}'" in e], (file, errors)


def test_a_task_that_cannot_be_built_becomes_a_spec_error_and_the_others_load(tmp_path, monkeypatch):
    """Whatever a task's builder raises (a value no spec rule foresaw), that task alone is refused."""
    (tmp_path / "good.yaml").write_text("name: extra_task\nmodality: tabular\nlabel: y\nid: rid\npositive: 1\n")
    (tmp_path / "odd.yaml").write_text("name: odd_task\nmodality: tabular\nlabel: y\nid: rid\npositive: 1\n")
    monkeypatch.setenv("MEDDIAG_TASKS_DIR", str(tmp_path))
    build_one = build.build_task_definitions

    def refuse_odd(spec):
        if spec.name == "odd_task":
            raise dg.DagsterInvalidDefinitionError("a value Dagster refuses")
        return build_one(spec)

    monkeypatch.setattr(build, "build_task_definitions", refuse_odd)
    loaded = build_definitions(data_dir=tmp_path / "data")
    assert loaded.resolve_job_def("extra_task_batches_job") and loaded.resolve_job_def("heart_disease_batches_job")
    (error,) = spec_error_descriptions(loaded)
    assert f"{tmp_path / 'odd.yaml'}: task 'odd_task' cannot be built" in error and "a value Dagster refuses" in error


def test_importing_the_package_leaves_the_users_dagster_warnings_shown():
    """Dagster's beta and preview warnings are silenced while a task is built, not for the user's own code."""
    code = (
        "import warnings, dagster as dg, meddiag_pipelines.defs, meddiag_pipelines.update\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    warnings.warn('mine', dg.BetaWarning)\n"
        "    warnings.warn('mine too', dg.PreviewWarning)\n"
        "print(sorted(type(w.message).__name__ for w in seen))\n"
    )
    out = run_cli([sys.executable, "-c", code], expect_rc=0)
    assert out.stdout.strip() == "['BetaWarning', 'PreviewWarning']", out.stderr[-2000:]


def test_building_a_task_shows_no_dagster_beta_warning_and_keeps_the_filters(synthetic_spec):
    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        inside = list(warnings.filters)
        build_task_definitions(synthetic_spec)
        assert warnings.filters == inside
    assert warnings.filters == before
    assert [str(w.message) for w in seen if issubclass(w.category, (dg.BetaWarning, dg.PreviewWarning))] == []
