"""The audit trail through Dagster: each version keeps its own report and is never rewritten; latest.json names
the latest evaluated candidate; predictions are partitioned by batch and a new champion adds a file per batch."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from meddiag_pipelines.defs.build import build_definitions
from meddiag_pipelines.defs.partitions import batch_partitions
from meddiag_pipelines.registry.__main__ import main as registry_cli
from meddiag_pipelines.registry.manifest import REPORT_FILES
from meddiag_pipelines.registry.store import ModelRegistry
from meddiag_pipelines.update import run_task_in_process
from meddiag_pipelines_tests.conftest import land, synthetic_records

pytestmark = pytest.mark.slow


def run(defs, instance, spec, assets=None, **kwargs) -> dg.ExecuteInProcessResult:
    """``assets``: these assets of the task (with the partition given); by default the whole task but the
    partitioned predictions, its new batches registered and ingested in the same run."""
    if assets is None:
        names = {k.path[-1] for k in defs.resolve_asset_graph().get_all_asset_keys() if k.path[0] == spec.name}
        result = run_task_in_process(defs, spec, instance, sorted(names - {"predictions"}), **kwargs)
    else:
        keys = [dg.AssetKey([spec.name, a]) for a in assets]
        result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance, asset_selection=keys, **kwargs
        )
    assert result.success
    return result


def metadata(result, task: str, asset: str) -> dict:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey([task, asset])]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_versions_keep_their_reports_and_a_new_champion_adds_predictions(synthetic_spec, layout, monkeypatch, capsys):
    spec = synthetic_spec.model_copy(
        update={
            "training": synthetic_spec.training.model_copy(update={"trials": 1, "max_rounds": 60}),
            "evaluation": synthetic_spec.evaluation.model_copy(update={"n_bootstrap": 100}),
        }
    )
    task = spec.name
    registry = ModelRegistry(layout)
    land(layout, task, "batch_0001", synthetic_records(400, seed=1))
    cases = synthetic_records(5, seed=2, start=400).with_columns(pl.lit(None, pl.String).alias("outcome"))
    land(layout, task, "batch_0002", cases)
    defs = build_definitions([spec], layout.local)
    latest = layout.reports(task) / "latest.json"
    with dg.instance_for_test() as instance:
        first = run(defs, instance, spec)
        v1 = registry.champion(task)["version"]
        v1_dir = registry.version_dir(task, v1)
        assert {f for f in REPORT_FILES if (v1_dir / f).is_file()} == set(REPORT_FILES)
        for asset in ("evaluation", "champion"):
            assert metadata(first, task, asset)["report"] == f"models/{task}/{v1}/report.html"
        assert json.loads(latest.read_text())["version"] == v1
        assert (layout.reports(task) / "latest" / "metrics.json").read_bytes() == (v1_dir / "metrics.json").read_bytes()
        v1_files = snapshot(v1_dir)

        assert instance.get_dynamic_partitions(batch_partitions(spec).name) == ["batch_0001", "batch_0002"]
        labelled_only = run(defs, instance, spec, ["predictions"], partition_key="batch_0001")
        assert metadata(labelled_only, task, "predictions")["note"].startswith("nothing to score")
        run(defs, instance, spec, ["predictions"], partition_key="batch_0002")
        scored = layout.predictions(task) / "batch_0002"
        old_predictions = (scored / f"{v1}.parquet").read_bytes()

        land(layout, task, "batch_0003", synthetic_records(200, seed=3, start=405))
        second = run(defs, instance, spec)
        assert metadata(second, task, "champion")["published"]
        v2 = json.loads(latest.read_text())["version"]
        assert registry.versions(task) == [v1, v2]
        registry.set_champion(task, v2, "test: the new version in force")
        run(
            defs,
            instance,
            spec,
            ["predictions"],
            tags={
                "dagster/asset_partition_range_start": "batch_0001",
                "dagster/asset_partition_range_end": "batch_0002",
            },
        )
        assert sorted(p.name for p in scored.iterdir()) == sorted([f"{v1}.parquet", f"{v2}.parquet"])
        assert (scored / f"{v1}.parquet").read_bytes() == old_predictions
        for version in (v1, v2):
            frame = pl.read_parquet(scored / f"{version}.parquet")
            assert (
                frame.height == 5 and set(frame["model_version"]) == {version} and set(frame["batch"]) == {"batch_0002"}
            )
        assert not (layout.predictions(task) / "batch_0001").exists()

        unchanged = run(defs, instance, spec)  # no new data: nothing published, nothing left staged
        assert not metadata(unchanged, task, "champion")["published"]
        assert registry.versions(task) == [v1, v2] and not list((registry.task_dir(task) / ".staging").iterdir())
        pointer = json.loads(latest.read_text())
        assert pointer["version"] == v2 and pointer["unchanged_candidate"] not in (v1, v2)
        assert pointer["version_dir"] == f"models/{task}/{v2}"
    assert snapshot(v1_dir) == v1_files  # a published version folder is never rewritten

    monkeypatch.setenv("MEDDIAG_DATA_DIR", str(layout.local))
    capsys.readouterr()
    assert registry_cli(["list", task, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["version"] for r in listed] == [v1, v2] and [r["champion"] for r in listed] == [False, True]
    assert listed[0]["partitions"] == ["batch_0001", "batch_0002"] and len(listed[1]["partitions"]) == 3
    assert listed[1]["unchanged_candidate"] == pointer["unchanged_candidate"] and listed[0]["metric"] == "AUROC"
