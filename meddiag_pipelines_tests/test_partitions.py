"""Batches as dynamic partitions: registration, the `update` command, automation conditions, the GraphQL view."""

from __future__ import annotations

import datetime
import os
import textwrap
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from meddiag_pipelines.__main__ import main
from meddiag_pipelines.defs import partitions
from meddiag_pipelines.defs.automation.landing import RANGE_END, RANGE_START, range_tags
from meddiag_pipelines.defs.build import batch_job_name, build_definitions
from meddiag_pipelines.defs.partitions import ingestion_keys, partition_key_problem, scan_landing
from meddiag_pipelines.defs.resources.storage import MeddiagStorage
from meddiag_pipelines.ingestion.landing import batch_key
from meddiag_pipelines.registry.summary import TaskSummary
from meddiag_pipelines.update import (
    UpdateError,
    group_keys,
    plan_batches,
    run_task_in_process,
    update_task,
    whole_task_run,
)
from meddiag_pipelines_tests.conftest import land, synthetic_records

TASK = "synthetic_risk"
PARTITIONS = f"{TASK}__batches"


def _bad(n: int, seed: int, start: int) -> pl.DataFrame:
    return synthetic_records(n, seed=seed, start=start).with_columns(pl.lit("maybe").alias("outcome"))


def test_partition_key_rules():
    assert partition_key_problem(Path("landing/t/batch 2025-01 é")) is None
    assert "partition key" in partition_key_problem(Path("export...2"))
    assert "rename it" in partition_key_problem(Path("a\tb"))
    not_utf8 = Path(os.fsdecode(b"b\xff"))  # a Linux name is bytes: its key shows the byte, and the batch is refused
    assert batch_key(not_utf8) == "b\\xff" and "not valid UTF-8" in partition_key_problem(not_utf8)


def test_partitions_run_in_ranges_of_at_most_run_partitions_that_cover_nothing_else(monkeypatch):
    monkeypatch.setattr(partitions, "RUN_PARTITIONS", 2)
    assert partitions.run_ranges(["a", "b", "c", "d", "e"]) == [["a", "b"], ["c", "d"], ["e"]]
    order = ["a", "b", "c", "d", "e", "f"]
    assert partitions.run_ranges({"f", "a", "c", "d", "e"}, order) == [["a"], ["c", "d"], ["e", "f"]]
    assert partitions.run_ranges([]) == []


def test_ingestion_is_the_partitioned_assets_fed_only_by_partitioned_ones(synthetic_spec, layout):
    raw, valid, model, scores = (dg.AssetKey(n) for n in ("raw", "valid", "model", "scores"))
    assert ingestion_keys({raw: [], valid: [raw], scores: [valid, model]}) == {raw, valid}  # model: unpartitioned
    defs = build_definitions([synthetic_spec], layout.local)
    batch, downstream = group_keys(defs.resolve_implicit_global_asset_job_def(), synthetic_spec)
    assert [k.path[-1] for k in batch] == ["raw_records", "validated_records"] and "predictions" in {
        k.path[-1] for k in downstream
    }
    assert sorted(defs.resolve_job_def(batch_job_name(synthetic_spec)).asset_layer.executable_asset_keys) == batch


def test_a_whole_task_run_covers_every_partition_only_when_it_holds_a_partitioned_asset(synthetic_spec, layout):
    defs = build_definitions([synthetic_spec], layout.local)
    with dg.instance_for_test() as instance:
        keys, tags = whole_task_run(defs, synthetic_spec, instance, ["raw_records", "split"])
        assert [k.path[-1] for k in keys] == ["split"] and RANGE_START not in tags  # nothing landed yet
        land(layout, TASK, "b1", synthetic_records(10, seed=1))
        land(layout, TASK, "b2", synthetic_records(10, seed=2, start=10))
        keys, tags = whole_task_run(defs, synthetic_spec, instance, ["raw_records", "split"])
        assert [k.path[-1] for k in keys] == ["raw_records", "split"] and (tags[RANGE_START], tags[RANGE_END]) == (
            "b1",
            "b2",
        )
        keys, tags = whole_task_run(defs, synthetic_spec, instance, ["split"])
    assert [k.path[-1] for k in keys] == ["split"] and RANGE_START not in tags and tags["meddiag/task"] == TASK


def test_plan_registers_new_batches_and_partition_restricts_it(synthetic_spec, layout):
    storage = MeddiagStorage(data_dir=str(layout.local))
    land(layout, TASK, "b1", synthetic_records(10, seed=1))
    land(layout, TASK, "b2", synthetic_records(10, seed=2, start=10))
    with dg.instance_for_test() as instance:
        only = plan_batches(synthetic_spec, storage, instance, partition="b2")
        assert list(only.new) == ["b2"] and instance.get_dynamic_partitions(PARTITIONS) == ["b2"]
        rest = plan_batches(synthetic_spec, storage, instance)
        assert list(rest.new) == ["b1"] and rest.again == {"b2": rest.again["b2"]}  # b2 never ran: runs again
        assert not scan_landing(synthetic_spec, layout, storage.warehouse, {"b1", "b2"}, retry_unrecorded=False).again


def test_batches_another_update_registers_at_the_same_moment_are_planned_not_failed(
    synthetic_spec, layout, monkeypatch
):
    """Dagster checks, then inserts: a second ``update`` that registered the keys in between fails the insert on
    the storage's unique key (seen with two updates at once); the keys are there, so planning goes on."""
    storage = MeddiagStorage(data_dir=str(layout.local))
    land(layout, TASK, "b1", synthetic_records(10, seed=1))
    with dg.instance_for_test() as instance:
        add = instance.add_dynamic_partitions

        def raced(name, keys):
            add(name, keys)  # the other process got there first ...
            raise RuntimeError("UNIQUE constraint failed: dynamic_partitions")  # ... so this insert fails

        monkeypatch.setattr(instance, "add_dynamic_partitions", raced)
        assert list(plan_batches(synthetic_spec, storage, instance).new) == ["b1"]

        def broken(name, keys):
            raise RuntimeError("disk full")

        monkeypatch.setattr(instance, "add_dynamic_partitions", broken)
        land(layout, TASK, "b2", synthetic_records(10, seed=2, start=10))
        with pytest.raises(RuntimeError, match="disk full"):  # a failure that registered nothing is not swallowed
            plan_batches(synthetic_spec, storage, instance)


def newest(folder):
    """The latest run's file of an asset (or partition) folder: names sort by run creation."""
    return sorted(folder.glob("*.parquet"))[-1]


def test_a_partitioned_run_keeps_each_batch_apart_and_split_reads_every_valid_one(synthetic_spec, layout):
    """validated_records of a run over three partitions is stored per partition (the quarantined one empty,
    with the columns); split loads them as one frame; the check is blocking, per run of partitions."""
    land(layout, TASK, "b1", synthetic_records(40, seed=1))
    land(layout, TASK, "b2", _bad(10, seed=3, start=500))
    land(layout, TASK, "b3", synthetic_records(40, seed=2, start=100))
    defs = build_definitions([synthetic_spec], layout.local)
    with dg.instance_for_test() as instance:
        result = run_task_in_process(defs, synthetic_spec, instance, ["raw_records", "validated_records", "split"])
        assert result.success
        statuses = {
            e.partition: e.metadata["status"].value
            for e in result.asset_observations_for_node(f"{TASK}__validated_records")
        }
        assert statuses == {"b1": "validated", "b2": "quarantined", "b3": "validated"}
        materialized = instance.get_materialized_partitions(dg.AssetKey([TASK, "validated_records"]))
    folder = layout.table(TASK, "validated_records")  # <partition>/<run>.parquet
    parts = {p.name: pl.read_parquet(newest(p)) for p in folder.iterdir() if p.is_dir()}
    assert materialized == {"b1", "b2", "b3"} and {k: v.height for k, v in parts.items()} == {
        "b1": 40,
        "b2": 0,
        "b3": 40,
    }
    assert parts["b2"].columns == parts["b1"].columns
    split = pl.read_parquet(newest(layout.table(TASK, "split")))
    assert split.height == 80 and set(split["_meddiag_batch"]) == {"b1", "b3"}


def test_a_new_valid_partition_requests_the_downstream_and_a_quiet_cron_tick_nothing(synthetic_spec, layout):
    defs = build_definitions([synthetic_spec], layout.local)
    land(layout, TASK, "b1", synthetic_records(40, seed=1))
    with dg.instance_for_test() as instance:
        before = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert before.total_requested == 0  # nothing validated yet
        assert run_task_in_process(defs, synthetic_spec, instance, ["raw_records", "validated_records"]).success
        landed = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=before.cursor)
        assert landed.get_num_requested(dg.AssetKey([TASK, "split"])) == 1
        # the downstream ran (recorded here without training); then nothing changes until the nightly tick
        graph = defs.resolve_asset_graph()
        for key in graph.get_all_asset_keys():
            if key.path[0] == TASK and key.path[-1] not in ("raw_records", "validated_records"):
                partitioned = graph.get(key).partitions_def is not None  # predictions: per batch
                instance.report_runless_asset_event(
                    dg.AssetMaterialization(key, partition="b1" if partitioned else None)
                )
        now = datetime.datetime.now(datetime.UTC)
        settled = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=landed.cursor, evaluation_time=now
        )
        tick = (now + datetime.timedelta(days=1)).replace(hour=2, minute=1)
        nightly = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=settled.cursor, evaluation_time=tick
        )
    assert settled.total_requested == 0 and nightly.total_requested == 0


def test_each_batch_of_a_range_run_shows_in_progress_then_failed(synthetic_spec, layout):
    """A range run plans its partitions one by one (not as Dagster's opt-in partition subset, which OSS storage
    does not track per partition): the UI shows each batch of a queued run in progress, and failed if it fails."""
    from dagster._core.storage.partition_status_cache import AssetPartitionStatus

    for i in (1, 2, 3):
        land(layout, TASK, f"b{i}", synthetic_records(5, seed=i, start=10 * i))
    defs = build_definitions([synthetic_spec], layout.local)
    job = defs.resolve_implicit_global_asset_job_def()
    batch = set(group_keys(job, synthetic_spec)[0])
    with dg.instance_for_test() as instance:
        plan_batches(synthetic_spec, defs.resources["storage"], instance)
        runs = [
            instance.create_run_for_job(
                job.get_subset(asset_selection=batch), asset_selection=batch, tags=range_tags(keys)
            )
            for keys in (["b1", "b2"], ["b3"])
        ]
        instance.report_run_failed(runs[1])
        status = instance.get_status_by_partition(
            dg.AssetKey([TASK, "validated_records"]), ["b1", "b2", "b3"], partitions.batch_partitions(synthetic_spec)
        )
    progress, failed = AssetPartitionStatus.IN_PROGRESS, AssetPartitionStatus.FAILED
    assert status == {"b1": progress, "b2": progress, "b3": failed}


def test_a_landed_batch_is_a_partition_over_the_graphql_api(synthetic_spec, layout, tmp_path):
    from dagster._core.test_utils import in_process_test_workspace
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster_graphql.test.utils import execute_dagster_graphql

    land(layout, TASK, "b1", synthetic_records(10, seed=1))
    spec_file = tmp_path / "tasks" / f"{TASK}.yaml"
    spec_file.parent.mkdir()
    spec_file.write_text(synthetic_spec.model_dump_json())  # JSON is YAML
    code = tmp_path / "code.py"
    code.write_text(
        textwrap.dedent(f"""
        from pathlib import Path
        from meddiag_pipelines.defs.build import build_definitions
        from meddiag_pipelines.specs import load_spec
        defs = build_definitions([load_spec(Path({str(spec_file)!r}))], Path({str(layout.local)!r}))
    """)
    )
    query = f'query {{ assetNodeOrError(assetKey: {{path: ["{TASK}", "raw_records"]}}) {{ ... on AssetNode {{ partitionKeys }} }} }}'
    with dg.instance_for_test() as instance:
        plan_batches(synthetic_spec, MeddiagStorage(data_dir=str(layout.local)), instance)
        origin = LoadableTargetOrigin(python_file=str(code), attribute="defs")
        with in_process_test_workspace(instance, origin) as context:
            result = execute_dagster_graphql(context, query)
    assert result.data["assetNodeOrError"]["partitionKeys"] == ["b1"]


def test_update_refuses_unknown_tasks_and_partition_without_one_task(capsys):
    assert main(["update", "no_such_task"]) == 2
    assert main(["update", "--partition", "b1"]) == 2


@pytest.mark.slow
def test_update_runs_every_task_past_a_failed_one_and_a_bad_spec_and_exits_1(tmp_path, monkeypatch, caplog, capsys):
    """One task failing, or a spec that does not load, does not stop the others; the exit status says so, and
    the command ends with a line per task, the failed one's too."""
    from meddiag_pipelines import update

    (tmp_path / "broken.yaml").write_text("name: broken\nmodality: tabular\n")  # no label: does not load
    monkeypatch.setenv("MEDDIAG_TASKS_DIR", str(tmp_path))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    ran = []

    def fake_update(spec, instance, partition=None, **kwargs):
        ran.append(spec.name)
        if spec.name == "breast_cancer":
            raise update.UpdateError("breast_cancer: run x failed")
        return update.TaskUpdate(spec.name, summary=TaskSummary(spec.name, ("up to date",)))

    monkeypatch.setattr(update, "update_task", fake_update)
    assert main(["update"]) == 1
    assert ran == [
        "breast_cancer",
        "eunomia_gi_bleed",
        "heart_disease",
        "icd10_chapters",
        "synthetic_chest_phantoms",
        "synthetic_volume_phantoms",
    ]
    assert "broken.yaml" in caplog.text and "breast_cancer: run x failed" in caplog.text
    assert capsys.readouterr().out.splitlines() == [
        "breast_cancer: failed (the error above says why)",
        *(f"{t}: up to date" for t in ran[1:]),
    ]
    ran.clear()
    assert main(["update", "heart_disease"]) == 0 and ran == ["heart_disease"]  # named tasks: other specs not judged


@pytest.mark.slow
def test_update_brings_a_task_up_to_date_once(synthetic_spec, layout, monkeypatch):
    """Good batches and a bad one: validated, quarantined, a model trained; a second `update` with nothing new
    starts no run at all. New batches run in ranges of at most RUN_PARTITIONS (here 2), and so do partitions a
    failed run left unrecorded (here registered without a run), by ranges of consecutive ones."""
    monkeypatch.setattr(partitions, "RUN_PARTITIONS", 2)
    land(layout, TASK, "b1", synthetic_records(120, seed=1))
    land(layout, TASK, "b2", _bad(20, seed=3, start=500))
    land(layout, TASK, "b3", synthetic_records(120, seed=2, start=200))
    land(layout, TASK, "b4", synthetic_records(10, seed=4, start=400))
    defs = build_definitions([synthetic_spec], layout.local)
    with dg.instance_for_test() as instance:
        for name in ("b1", "b2"):
            plan_batches(synthetic_spec, defs.resources["storage"], instance, partition=name)
        first = update_task(synthetic_spec, instance, defs=defs)
        assert (first.new, first.again) == (["b3", "b4"], ["b1", "b2"]) and first.downstream_run
        runs = [instance.get_run_by_id(r) for r in first.batch_runs]
        assert [(r.tags[RANGE_START], r.tags[RANGE_END]) for r in runs] == [("b3", "b4"), ("b1", "b2")]
        assert all(r.tags["meddiag/trigger"] == "cli" and r.tags["meddiag/task"] == TASK for r in runs)
        champion = instance.get_latest_materialization_event(dg.AssetKey([TASK, "champion"]))
        again = update_task(synthetic_spec, instance, defs=defs)
        n_runs = len(instance.get_runs())
    ledger = MeddiagStorage(data_dir=str(layout.local)).warehouse.ledger(TASK)
    assert dict(zip(ledger["batch_id"], ledger["status"], strict=False)) == {
        "b1": "validated",
        "b2": "quarantined",
        "b3": "validated",
        "b4": "validated",
    }
    assert champion is not None and (layout.quarantine(TASK) / "b2" / "reason.json").is_file()
    assert not again.batch_runs and again.downstream_run is None and n_runs == 3


def test_update_of_a_task_that_could_not_be_built_runs_nothing_and_says_so(synthetic_spec, layout):
    """Issue 24: a task whose spec loads but whose assets Dagster refused (a spec_errors asset) is named, not run."""
    land(layout, TASK, "b1", synthetic_records(20, seed=1))
    defs = build_definitions([synthetic_spec.model_copy(update={"name": "other_task"})], layout.local)
    with dg.instance_for_test() as instance:
        with pytest.raises(UpdateError, match=f"{TASK}: the task could not be built .* nothing was run"):
            update_task(synthetic_spec, instance, defs=defs)
        assert not instance.get_runs() and not instance.get_dynamic_partitions(PARTITIONS)


def test_a_symlinked_landing_folder_is_refused_with_an_error_never_reported_up_to_date(
    synthetic_spec, layout, tmp_path, monkeypatch, caplog
):
    """Links are never followed, even one inside the data root; scanning through it would find no batch."""
    import yaml

    from meddiag_pipelines.defs.automation.landing import build_landing_sensor

    real = land(layout, TASK, "b1", synthetic_records(20, seed=1)).parent.rename(layout.local / "exports")
    layout.landing(TASK).symlink_to(real, target_is_directory=True)
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / f"{TASK}.yaml").write_text(yaml.safe_dump(synthetic_spec.model_dump(mode="json")))
    (tmp_path / "home").mkdir()
    for name, value in (("MEDDIAG_TASKS_DIR", "tasks"), ("MEDDIAG_DATA_DIR", "data"), ("DAGSTER_HOME", "home")):
        monkeypatch.setenv(name, str(tmp_path / value))
    assert main(["update", TASK]) == 1
    [error] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert f"landing/{TASK} is a symbolic link" in error.getMessage() and "up to date" not in caplog.text

    job = dg.define_asset_job("synthetic_risk_batches_job", selection=dg.AssetSelection.groups(TASK))
    with dg.instance_for_test() as instance:  # the sensor's tick fails with the same reason
        context = dg.build_sensor_context(
            instance=instance, resources={"storage": MeddiagStorage(data_dir=str(layout.local))}
        )
        with pytest.raises(ValueError, match=f"landing/{TASK} is a symbolic link"):
            build_landing_sensor(synthetic_spec, job)(context)
        assert instance.get_dynamic_partitions(PARTITIONS) == []
