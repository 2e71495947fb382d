"""Recovery through the project CLI: requeue a quarantined batch after a spec fix; reset a task's warehouse state."""

from __future__ import annotations

import json
import os
import shutil
import time

import dagster as dg
import polars as pl
import pytest

import meddiag_pipelines.__main__ as cli
from meddiag_pipelines.ingestion.batches import ingest_new_batches, validate_pending_batches
from meddiag_pipelines.ingestion.warehouse import Warehouse
from meddiag_pipelines.tabular.readers import read_tabular_batch
from meddiag_pipelines.validation.suites import validate_tabular
from meddiag_pipelines_tests.conftest import land, synthetic_records

TASK = "synthetic_risk"


@pytest.fixture(autouse=True)
def instance(tmp_path, monkeypatch):
    """The Dagster instance the commands consult (no run of the task in flight unless a test adds one)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance


def _run(spec, layout):
    warehouse = Warehouse(layout)
    ingest_new_batches(spec, layout, warehouse, read_tabular_batch)
    return validate_pending_batches(spec, layout, warehouse, validate_tabular)


def _status(layout, batch):
    ledger = Warehouse(layout).ledger(TASK).filter(batch_id=batch)
    return ledger["status"][0] if ledger.height else None


def test_requeue_after_a_spec_fix_reads_the_batch_again(synthetic_spec, layout, capsys):
    land(layout, TASK, "b1", synthetic_records(40, seed=1).with_columns(pl.lit("maybe").alias("outcome")))
    _run(synthetic_spec, layout)
    assert _status(layout, "b1") == "quarantined" and not (layout.landing(TASK) / "b1").exists()

    assert cli.main(["requeue", TASK, "b1", "--data-dir", str(layout.local)]) == 0
    back = layout.landing(TASK) / "b1"
    assert (back / "_READY").is_file() and (back / "records.csv").is_file()
    assert sorted(p.relative_to(back).as_posix() for p in back.rglob("*")) == ["_READY", "records.csv"]
    [kept] = (layout.quarantine(TASK) / "_requeued").iterdir()  # the reason stays in quarantine, not as data
    assert (
        json.loads((kept / "reason.json").read_text())["batch"] == "b1"
        and not (layout.quarantine(TASK) / "b1").exists()
    )
    assert _status(layout, "b1") is None and "is back in" in capsys.readouterr().out

    fixed = synthetic_spec.model_copy(update={"classes": ["maybe", "no", "yes"], "positive": None})
    records, validation = _run(fixed, layout)
    assert validation.validated == ["b1"] and records.height == 40 and _status(layout, "b1") == "validated"


def _split_batch(spec, layout):
    """Quarantined batch b1, split over two quarantine folders: a FIFO set aside before reading, a file added after
    ingestion (quarantine/<task>/b1.changed-<time>/), then the whole batch refused by validation (a bad label)."""
    folder = land(layout, TASK, "b1", synthetic_records(40, seed=1).with_columns(pl.lit("maybe").alias("outcome")))
    (folder / "sub").mkdir()
    os.mkfifo(folder / "sub" / "pipe")
    warehouse = Warehouse(layout)
    ingest_new_batches(spec, layout, warehouse, read_tabular_batch)
    (folder / "extra").mkdir()
    (folder / "extra" / "late.csv").write_text("late\n")
    os.utime(folder / "extra" / "late.csv", (time.time() + 5, time.time() + 5))
    assert ingest_new_batches(spec, layout, warehouse, read_tabular_batch).changed
    validate_pending_batches(spec, layout, warehouse, validate_tabular)
    assert _status(layout, "b1") == "quarantined" and len(list(layout.quarantine(TASK).iterdir())) == 2


def test_requeue_brings_back_every_file_of_a_batch_split_between_quarantine_folders(synthetic_spec, layout):
    _split_batch(synthetic_spec, layout)
    assert cli.main(["requeue", TASK, "b1", "--data-dir", str(layout.local)]) == 0
    back = layout.landing(TASK) / "b1"
    files = sorted(p.relative_to(back).as_posix() for p in back.rglob("*") if not p.is_dir())
    assert files == ["_READY", "extra/late.csv", "records.csv", "sub/pipe"]  # each at its own path, no reason.json
    assert (back / "sub" / "pipe").is_fifo() and (back / "extra" / "late.csv").read_text() == "late\n"
    assert [p.name for p in layout.quarantine(TASK).iterdir()] == ["_requeued"] and _status(layout, "b1") is None
    kept = layout.quarantine(TASK) / "_requeued"
    assert not [p for p in kept.rglob("*") if not p.is_dir() and p.name != "reason.json"]  # only reasons stay


def test_requeue_refuses_to_overwrite_a_file_and_changes_nothing(synthetic_spec, layout, capsys):
    def tree():
        return sorted(p.relative_to(layout.local) for p in layout.local.rglob("*") if "warehouse" not in p.parts)

    _split_batch(synthetic_spec, layout)
    [changed] = layout.quarantine(TASK).glob("b1.changed-*")
    twice = shutil.copytree(
        changed, layout.quarantine(TASK) / "b1.changed-20000101T000000Z"
    )  # late.csv set aside twice
    before = tree()
    assert cli.main(["requeue", TASK, "b1", "--data-dir", str(layout.local)]) == 1
    err = capsys.readouterr().err
    assert "extra/late.csv is in quarantine/synthetic_risk/b1.changed-20000101T000000Z/files/ and in " in err
    assert "move one of them away and run requeue again" in err and tree() == before
    shutil.rmtree(twice)
    land(layout, TASK, "b1", synthetic_records(5, seed=2), ready=False)  # landed again under its name meanwhile
    before = tree()
    assert cli.main(["requeue", TASK, "b1", "--data-dir", str(layout.local)]) == 1
    assert "landing/synthetic_risk/b1 already exists" in capsys.readouterr().err
    assert tree() == before and _status(layout, "b1") == "quarantined"


@pytest.mark.parametrize("batch", ["b_good", "unknown", "../b_good"])
def test_requeue_refuses_a_batch_that_is_not_quarantined(synthetic_spec, layout, capsys, batch):
    land(layout, TASK, "b_good", synthetic_records(30, seed=1))
    _run(synthetic_spec, layout)
    before = sorted(p.relative_to(layout.local) for p in layout.local.rglob("*") if "warehouse" not in p.parts)
    assert cli.main(["requeue", TASK, batch, "--data-dir", str(layout.local)]) == 1
    err = capsys.readouterr().err
    assert "not quarantined" in err or "plain folder name" in err
    assert sorted(p.relative_to(layout.local) for p in layout.local.rglob("*") if "warehouse" not in p.parts) == before
    assert _status(layout, "b_good") == "validated"


def test_reset_forgets_the_warehouse_state_only(synthetic_spec, layout, capsys):
    spec = synthetic_spec.model_copy(update={"classes": None})  # the label domain is recorded in the warehouse
    land(layout, TASK, "b1", synthetic_records(30, seed=1))
    land(layout, TASK, "b2", synthetic_records(20, seed=2, start=100).with_columns(pl.lit("maybe").alias("outcome")))
    _run(spec, layout)
    warehouse = Warehouse(layout)
    table = layout.table(TASK, "split")
    partition = layout.table(TASK, "validated_records").with_suffix("") / "b1.parquet"  # one file per partition
    partition.parent.mkdir(parents=True, exist_ok=True)
    for path in (table, partition):
        pl.DataFrame({"x": [1]}).write_parquet(path)
    kept = [layout.models(TASK) / "v1" / "manifest.json", layout.reports(TASK) / "latest" / "metrics.json"]
    for path in kept:
        path.parent.mkdir(parents=True)
        path.write_text("{}")
    quarantined = sorted(layout.quarantine(TASK).rglob("*"))
    assert warehouse.state(TASK, "label_domain") is not None

    assert cli.main(["reset", TASK, "--data-dir", str(layout.local)]) == 1
    assert "--yes" in capsys.readouterr().err and warehouse.ledger(TASK).height == 2

    assert cli.main(["reset", TASK, "--yes", "--data-dir", str(layout.local)]) == 0
    assert warehouse.ledger(TASK).height == 0 and warehouse.state(TASK, "label_domain") is None
    assert not list((layout.warehouse_dir() / "raw_records" / TASK).glob("*.parquet")) and not table.exists()
    assert not partition.exists()
    assert all(p.read_text() == "{}" for p in kept) and sorted(layout.quarantine(TASK).rglob("*")) == quarantined
    records, validation = _run(spec, layout)  # what is still in landing is read again
    assert validation.validated == ["b1"] and records.height == 30
    assert json.loads(warehouse.state(TASK, "label_domain")) == ["no", "yes"]


@pytest.mark.parametrize("command", [["requeue", TASK, "b1"], ["reset", TASK, "--yes"]])
def test_recovery_refuses_while_the_task_has_a_run_in_flight(synthetic_spec, layout, instance, capsys, command):
    """No lock: the instance (shared by every host) says whether a run of the task is queued or running."""
    land(layout, TASK, "b1", synthetic_records(40, seed=1).with_columns(pl.lit("maybe").alias("outcome")))
    _run(synthetic_spec, layout)
    instance.add_run(
        dg.DagsterRun(
            job_name="__ASSET_JOB",
            run_id="0" * 36,
            status=dg.DagsterRunStatus.STARTED,
            tags={"meddiag/task": "another_task"},
        )
    )
    running = instance.add_run(
        dg.DagsterRun(
            job_name="__ASSET_JOB", run_id="1" * 36, status=dg.DagsterRunStatus.STARTING, tags={"meddiag/task": TASK}
        )
    )
    before = sorted(p.relative_to(layout.local) for p in layout.local.rglob("*"))
    assert cli.main([*command, "--data-dir", str(layout.local)]) == 1
    assert "1 run(s) queued or running" in capsys.readouterr().err
    assert (
        sorted(p.relative_to(layout.local) for p in layout.local.rglob("*")) == before
        and _status(layout, "b1") == "quarantined"
    )
    instance.report_run_failed(running)  # the run ended; another task's run does not hold this one up
    assert cli.main([*command, "--data-dir", str(layout.local)]) == 0
    assert _status(layout, "b1") is None


@pytest.mark.parametrize("command", [["requeue", TASK, "b1"], ["reset", TASK, "--yes"]])
def test_recovery_releases_a_run_whose_process_is_gone_instead_of_refusing(
    synthetic_spec, layout, instance, capsys, command
):
    """A run killed with SIGKILL stays 'started' in the instance: it is marked failed, not waited for."""
    import socket
    import subprocess

    land(layout, TASK, "b1", synthetic_records(40, seed=1).with_columns(pl.lit("maybe").alias("outcome")))
    _run(synthetic_spec, layout)
    gone = subprocess.Popen(["true"])
    gone.wait()
    killed = instance.add_run(
        dg.DagsterRun(
            job_name="__ASSET_JOB",
            run_id="2" * 36,
            status=dg.DagsterRunStatus.STARTED,
            tags={"meddiag/task": TASK, "meddiag/host": socket.gethostname(), "meddiag/pid": str(gone.pid)},
        )
    )
    assert cli.main([*command, "--data-dir", str(layout.local)]) == 0
    assert f"run {killed.run_id} (started" in capsys.readouterr().out and _status(layout, "b1") is None
    assert instance.get_run_by_id(killed.run_id).status == dg.DagsterRunStatus.FAILURE
