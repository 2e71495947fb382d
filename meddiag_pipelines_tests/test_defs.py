"""Pin the code location: a renamed asset, group, job or check shows up here, not in production."""

import dagster as dg

from meddiag_pipelines.definitions import defs

TASK_ASSETS = ["raw_records", "validated_records", "split", "features", "feature_plan", "candidate_model",
               "baseline_model", "evaluation", "champion", "predictions"]  # fmt: skip


def test_definitions_load_with_pinned_assets_and_groups():
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    for task in ("heart_disease", "breast_cancer"):
        assert {f"{task}/{a}" for a in TASK_ASSETS} <= keys
        for asset in TASK_ASSETS:
            node = graph.get(dg.AssetKey([task, asset]))
            assert node.group_name == task
            assert node.description and node.kinds and node.owners


def test_jobs_and_blocking_checks_are_pinned():
    for task in ("heart_disease", "breast_cancer"):
        assert defs.resolve_job_def(f"{task}_batches_job").name == f"{task}_batches_job"
    check_keys = {(k.asset_key.to_user_string(), k.name) for k in defs.resolve_asset_graph().asset_check_keys}
    assert ("heart_disease/validated_records", "validated_records_suite") in check_keys
    assert ("heart_disease/champion", "champion_fit_for_use") in check_keys


def test_every_step_of_a_task_is_in_its_pool():
    """One pool per task (limit 1 in dagster_home/dagster.yaml): two runs never ingest or publish at once."""
    for task in ("heart_disease", "breast_cancer"):
        for asset in TASK_ASSETS:
            assert defs.resolve_assets_def(dg.AssetKey([task, asset])).op.pool == f"meddiag_{task}", asset


def test_lineage_takes_real_inputs():
    graph = defs.resolve_asset_graph()
    parents = {p.path[-1] for p in graph.get(dg.AssetKey(["heart_disease", "evaluation"])).parent_keys}
    assert parents == {"split", "candidate_model", "baseline_model"}
    parents = {p.path[-1] for p in graph.get(dg.AssetKey(["heart_disease", "candidate_model"])).parent_keys}
    assert parents == {"features", "feature_plan"}


def test_text_task_is_pinned():
    task = "icd10_chapters"
    graph = defs.resolve_asset_graph()
    for asset in TASK_ASSETS:
        node = graph.get(dg.AssetKey([task, asset]))
        assert node.group_name == task and node.description and node.kinds and node.owners
    assert defs.resolve_job_def(f"{task}_batches_job").name == f"{task}_batches_job"
    check_keys = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert {(f"{task}/raw_records", "unreadable_files_quarantined"), (f"{task}/validated_records", "validated_records_suite"),
            (f"{task}/split", "texts_unique_across_splits"), (f"{task}/champion", "champion_fit_for_use")} <= check_keys
    parents = {a: {p.path[-1] for p in graph.get(dg.AssetKey([task, a])).parent_keys}
               for a in ("candidate_model", "baseline_model", "evaluation")}  # fmt: skip
    assert parents == {"candidate_model": {"features", "feature_plan"}, "baseline_model": {"candidate_model"},
                       "evaluation": {"split", "candidate_model", "baseline_model"}}  # fmt: skip


def test_a_bad_spec_leaves_the_other_tasks_and_stays_visible(tmp_path, monkeypatch, caplog):
    """A bad file in MEDDIAG_TASKS_DIR: the bundled and the good extra tasks load; the error is a WARNING at load,
    the description of a spec_errors asset, and the failure of that asset's materialization."""
    from meddiag_pipelines.definitions import SPEC_ERRORS_GROUP, build_definitions

    (tmp_path / "good.yaml").write_text("name: extra_task\nmodality: tabular\nlabel: y\nid: rid\npositive: 1\n")
    (tmp_path / "bad.yaml").write_text("name: bad_task\nmodality: tabular\nlabel: y\nid: rid\nranges: {a: [3, 1]}\n")
    monkeypatch.setenv("MEDDIAG_TASKS_DIR", str(tmp_path))
    problem = "range of 'a': the lower bound 3.0 is above the upper bound 1.0"
    with caplog.at_level("WARNING"):
        loaded = build_definitions(data_dir=tmp_path / "data")
    assert any(problem in r.getMessage() and "bad.yaml" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
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


def test_bundled_definitions_have_no_spec_errors():
    from meddiag_pipelines.definitions import SPEC_ERRORS_GROUP

    graph = defs.resolve_asset_graph()
    assert not [k for k in graph.get_all_asset_keys() if graph.get(k).group_name == SPEC_ERRORS_GROUP]


def test_code_version_survives_a_hung_or_missing_git(monkeypatch):
    import subprocess

    from meddiag_pipelines import __version__
    from meddiag_pipelines.defs.assets import common

    def hung(cmd, **kwargs):
        raise subprocess.TimeoutExpired(cmd, kwargs.get("timeout", 5))

    monkeypatch.setattr(common.subprocess, "run", hung)
    assert common.code_version() == __version__

    def missing(cmd, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(common.subprocess, "run", missing)
    assert common.code_version() == __version__
