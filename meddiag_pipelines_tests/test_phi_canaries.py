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
import numpy as np
import polars as pl
import pytest

from meddiag_pipelines.defs.build import build_definitions
from meddiag_pipelines.ingestion.warehouse import Warehouse
from meddiag_pipelines.specs import TaskSpec
from meddiag_pipelines.storage import DataRoot
from meddiag_pipelines.update import run_task_in_process
from meddiag_pipelines_tests.conftest import land, synthetic_records
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
    good = good.with_columns(
        pl.when(pl.col("rid").str.contains("r1[0-2]Z$")).then(None).otherwise(pl.col("outcome")).alias("outcome")
    )
    land_batch(tmp_path, "batch_0001", good)
    bad = canary_frame(20, seed=2, start=1000)
    land_batch(
        tmp_path, "batch_0002_dupes", pl.concat([bad, bad.head(2)]).with_columns(pl.lit("maybe").alias("outcome"))
    )
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


# -- issue 24: values found in the data never appear in a message --------------------------------------------------
VALUE_CANARY = re.compile(r"PHICANARY(?:HDR|DOM|OUT)")


def _header_less(folder, header_row: str, rows: str, name: str) -> None:
    """``name`` holding rows only: its first row, a row of data, stands where the header should be."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(header_row + "\n" + rows)
    (folder / "_READY").touch()


def _land_value_canaries(layout, task: str) -> None:
    """Tabular batches whose data values carry canaries into every message a bad batch causes: a first batch
    whose labels cannot fix a binary task's domain (many values), a good batch that fixes it, a batch with labels
    outside the domain, and a CSV without a header row."""
    base = synthetic_records(40, seed=5)
    many = base.with_columns(pl.Series("outcome", ["yes", *(f"PHICANARYDOM{i}Z" for i in range(39))]))
    land(layout, task, "batch_0001_many", many)
    land(layout, task, "batch_0002_good", synthetic_records(200, seed=6, start=100))
    outside = synthetic_records(30, seed=7, start=400).with_columns(
        pl.when(pl.int_range(pl.len()) % 3 == 0)
        .then(pl.format("PHICANARYOUT{}Z", pl.int_range(pl.len())))
        .otherwise(pl.col("outcome"))
        .alias("outcome")
    )
    land(layout, task, "batch_0003_outside", outside)
    rows = synthetic_records(5, seed=8, start=600).write_csv(include_header=False)
    _header_less(
        layout.landing(task) / "batch_0004_headerless", "PHICANARYHDR_Jane_Doe,p1,1.5,2,3,A,yes", rows, "records.csv"
    )


def _land_image_canaries(layout, task: str) -> None:
    """Image batches: a labels.csv without a header row, and labels outside the declared classes."""
    from PIL import Image

    for batch, labels in (("batch_0001_headerless", None), ("batch_0002_outside", ["normal", "PHICANARYOUT_Z"])):
        folder = layout.landing(task) / batch
        folder.mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.random.default_rng(i).integers(0, 256, (28, 28), dtype=np.uint8)).save(
                folder / f"i{i}.png"
            )
        if labels is None:
            _header_less(
                folder,
                "i0.png,PHICANARYHDR_John_Roe_1961-04-02,i0",
                "".join(f"i{i}.png,normal,i{i}\n" for i in range(1, 6)),
                "labels.csv",
            )
            continue
        rows = [{"file": f"i{i}.png", "label": labels[i % 2], "id": f"i{i}"} for i in range(6)]
        pl.DataFrame(rows).write_csv(folder / "labels.csv")
        (folder / "_READY").touch()


VALUE_TASKS = {
    "tabular": ({**FAST_SPEC, "classes": None}, _land_value_canaries, 3),
    "image": (
        {
            "name": "phantoms",
            "modality": "image",
            "label": "label",
            "id": "id",
            "positive": "finding",
            "classes": ["normal", "finding"],
            "image": {"format": "folder", "size": 28},
        },
        _land_image_canaries,
        2,
    ),
}


@pytest.mark.parametrize("modality", list(VALUE_TASKS))
def test_no_value_of_a_bad_batch_appears_in_any_message(tmp_path, caplog, capfd, modality):
    """Issue 24: a header-less first row, labels outside the domain, and a first batch's many labels were quoted
    into quarantine reasons, the ledger, the logs and the event log. Ingestion and validation of such batches:
    no canary in any reason.json, ledger entry, log record, printed line or Dagster event log record."""
    raw_spec, land_canaries, n_quarantined = VALUE_TASKS[modality]
    spec = TaskSpec.model_validate(raw_spec)
    layout = DataRoot(tmp_path / "data")
    land_canaries(layout, spec.name)
    defs = build_definitions([spec], layout.local)
    with caplog.at_level(logging.DEBUG), dg.instance_for_test() as instance:
        run_task_in_process(defs, spec, instance, ["raw_records", "validated_records"], raise_on_error=False)
        events = event_log_text(instance)
    printed = capfd.readouterr()
    ledger = json.dumps(Warehouse(layout).ledger(spec.name).to_dicts(), default=str)
    reasons = {p: p.read_text() for p in (layout.local / "quarantine").rglob("reason.json")}
    outputs = {
        "event log": events,
        "printed output": printed.out + printed.err,
        "log records": caplog.text,
        "ledger": ledger,
        **{str(p.relative_to(tmp_path)): text for p, text in reasons.items()},
    }
    assert not [name for name, text in outputs.items() if VALUE_CANARY.search(text)]
    # Each bad batch was quarantined and said why, in counts and declared names.
    assert len({p.relative_to(layout.local / "quarantine" / spec.name).parts[0] for p in reasons}) == n_quarantined
    said = "\n".join(reasons.values())
    assert "has no header row with the" in said and "rows hold labels outside the task's classes" in said
    if modality == "tabular":
        assert "it holds the positive class and 39 other distinct values" in said
        assert "(fixed by the task's first validated batch: no, yes): 10 distinct values" in said
