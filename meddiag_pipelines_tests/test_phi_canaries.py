"""PHI canaries in the identifiers: one in-process run of the tabular job on a small batch whose record ids,
patient ids and a free-text column excluded from features all carry canaries, beside hostile batches (duplicate
ids, a re-export, a ragged CSV) carrying them to quarantine. No canary may appear in any Python log record of
the run at any level, in what it prints, in the Dagster event log (log messages, materialization and check
metadata, run tags and config) or anything else under DAGSTER_HOME, in the reports, the models and their
manifests, or the quarantine reason.json files.

test_hostile_cli.py plants note-text canaries and runs the CLI; this test covers the identifier columns, which
the warehouse legitimately holds, at every log level of the steps themselves.

Excluded by contract: ``test_predictions.parquet`` (in a report or a model version) and
``predictions/<task>/<batch>/*.parquet`` carry record ids (the user's own output); the warehouse holds the records.
"""

import json
import logging
import re

import dagster as dg
import polars as pl
import pytest

from meddiag_pipelines.definitions import build_definitions
from meddiag_pipelines.update import run_task_in_process
from meddiag_pipelines.specs import TaskSpec
from meddiag_pipelines_tests.conftest import synthetic_records
from meddiag_pipelines_tests.test_crash_safety import FAST_SPEC, TASK, land_batch
from meddiag_pipelines_tests.test_text_pipeline import _strings_of_parquet

pytestmark = pytest.mark.slow
CANARY = re.compile(rb"PHICANARY(?:ID|PT|NOTE)")


def canary_frame(n: int, seed: int, start: int) -> pl.DataFrame:
    frame = synthetic_records(n, seed=seed, start=start)
    return frame.with_columns(
        (pl.lit("PHICANARYID") + pl.col("rid") + pl.lit("Z")).alias("rid"),
        (pl.lit("PHICANARYPT") + pl.col("pid") + pl.lit("Z")).alias("pid"),
        (pl.lit("seen by Dr PHICANARYNOTE at home ") + pl.col("rid")).alias("notes"),
    )


def land_canary_batches(tmp_path) -> None:
    good = canary_frame(300, seed=1, start=0)
    good = good.with_columns(pl.when(pl.col("rid").str.contains("r1[0-2]Z$")).then(None).otherwise(pl.col("outcome")).alias("outcome"))
    land_batch(tmp_path, "batch_0001", good)
    bad = canary_frame(20, seed=2, start=1000)
    land_batch(tmp_path, "batch_0002_dupes", pl.concat([bad, bad.head(2)]).with_columns(pl.lit("maybe").alias("outcome")))
    land_batch(tmp_path, "batch_0003_reexport", good.head(15))
    ragged = tmp_path / "data" / "landing" / TASK / "batch_0004_ragged"
    ragged.mkdir()
    (ragged / "records.csv").write_text(good.head(5).write_csv() + "PHICANARYIDextra,PHICANARYPTx,1,2\n")
    (ragged / "_READY").touch()


def contents(path) -> bytes:
    """A file's bytes, plus the decoded string cells of a (compressed) Parquet file."""
    strings = _strings_of_parquet(path).encode() if path.suffix == ".parquet" else b""
    return path.read_bytes() + strings


def event_log_text(instance: dg.DagsterInstance) -> str:
    text = ""
    for run in instance.get_runs():
        text += json.dumps(run.tags) + str(run.run_config)
        text += "".join(dg.serialize_value(record) for record in instance.all_logs(run.run_id))
    return text


def test_no_identifier_canary_leaks_from_an_in_process_run(tmp_path, caplog, capfd):
    land_canary_batches(tmp_path)
    data, home = tmp_path / "data", tmp_path / "dagster_home"
    home.mkdir()
    spec = TaskSpec.model_validate({**FAST_SPEC, "exclude": ["notes"]})
    defs = build_definitions([spec], data)
    with caplog.at_level(logging.DEBUG), dg.instance_for_test(temp_dir=str(home)) as instance:
        result = run_task_in_process(defs, spec, instance, raise_on_error=False)
        events = event_log_text(instance)
    assert result.success
    printed = capfd.readouterr()

    outputs = {"event log": events, "printed output": printed.out + printed.err, "log records": caplog.text}
    leaks = [name for name, text in outputs.items() if CANARY.search(text.encode())]
    scanned = [p for p in home.rglob("*") if p.is_file()]
    scanned += [p for root in (data / "reports", data / "models") for p in root.rglob("*") if p.is_file()]
    scanned += list((data / "quarantine").rglob("reason.json"))
    scanned = [p for p in scanned if p.name != "test_predictions.parquet"]
    leaks += [str(p.relative_to(tmp_path)) for p in scanned if CANARY.search(contents(p))]
    assert not leaks, f"canaries leaked into: {leaks}"
    # The scan saw the run: its events, its logs, its outputs; and the canaries did reach the user's own output.
    assert "ASSET_MATERIALIZATION" in events and len(caplog.records) > 20 and len(scanned) > 20
    assert CANARY.search(contents(data / "reports" / TASK / "latest" / "test_predictions.parquet"))
    reasons = sorted(p.parent.name for p in (data / "quarantine" / TASK).glob("*/reason.json"))
    assert reasons == ["batch_0002_dupes", "batch_0003_reexport", "batch_0004_ragged"]
