"""Batch lifecycle: non-regular files never block a reader, a known batch that changed is set aside, files a
reader skipped are not counted as ingested, and a task's label domain is fixed once."""

from __future__ import annotations

import io
import json
import os
import re
import signal
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from meddiag_pipelines.imaging.modality import read_image_records
from meddiag_pipelines.ingestion.batches import (
    NOT_READ,
    NOT_REGULAR,
    ReadOutcome,
    ingest_new_batches,
    label_domain_failures,
    reconcile,
    validate_pending_batches,
)
from meddiag_pipelines.ingestion.landing import content_hash, data_files, describe_batch
from meddiag_pipelines.ingestion.quarantine import file_reason
from meddiag_pipelines.ingestion.warehouse import Warehouse
from meddiag_pipelines.specs import TaskSpec
from meddiag_pipelines.storage import DataRoot
from meddiag_pipelines.tabular.readers import read_tabular_batch
from meddiag_pipelines.text.readers import read_text_batch
from meddiag_pipelines.validation.suites import validate_tabular
from meddiag_pipelines_tests.conftest import land, synthetic_records

TASK = "synthetic_risk"


@contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging the suite) if the body blocks, e.g. on opening a FIFO."""

    def expired(signum, frame):
        raise TimeoutError(f"blocked for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 255, size=(28, 28), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _text_reader(batch, spec):
    result = read_text_batch(batch.path, spec)
    return ReadOutcome(result.records, list(result.rejected))


def _ready(folder: Path) -> Path:
    (folder / "_READY").touch()
    return folder


def test_listing_and_hash_never_open_a_fifo(tmp_path: Path):
    (tmp_path / "a.csv").write_text("x\n1\n")
    os.mkfifo(tmp_path / "records.csv")
    with deadline(10):
        files = data_files(tmp_path)
        batch = describe_batch(TASK, tmp_path)
    assert [str(f) for f in files] == ["a.csv", "records.csv"] and batch.files == ("a.csv", "records.csv")
    assert batch.total_bytes == 4 and batch.content_hash == content_hash(tmp_path, files)


def _tabular_case(layout: DataRoot, tmp_path: Path):
    spec = TaskSpec(name=TASK, modality="tabular", label="outcome", positive="yes", classes=["no", "yes"], id="rid")
    hostile = land(layout, TASK, "a_fifo", synthetic_records(20, seed=1))
    os.mkfifo(hostile / "more.csv")
    alone = layout.landing(TASK) / "b_only_fifo"
    alone.mkdir()
    os.mkfifo(alone / "records.csv")
    _ready(alone)
    land(layout, TASK, "z_good", synthetic_records(30, seed=2, start=100))
    return spec, read_tabular_batch, {"a_fifo": 20, "z_good": 30}


def _text_case(layout: DataRoot, tmp_path: Path):
    spec = TaskSpec(name="notes", modality="text", text="note", label="label", id="id", classes=["a", "b"])
    hostile = layout.landing("notes") / "a_fifo"
    hostile.mkdir(parents=True)
    os.mkfifo(hostile / "notes.jsonl")
    _ready(hostile)
    good = layout.landing("notes") / "z_good"
    good.mkdir()
    lines = [
        json.dumps({"id": f"n{i}", "note": f"Patient seen for review number {i}, stable.", "label": "ab"[i % 2]})
        for i in range(12)
    ]
    (good / "notes.jsonl").write_text("\n".join(lines) + "\n")
    _ready(good)
    return spec, _text_reader, {"z_good": 12}


def _image_case(layout: DataRoot, tmp_path: Path):
    spec = TaskSpec(
        name="scans",
        modality="image",
        label="label",
        id="id",
        classes=["0", "1"],
        positive="1",
        image={"format": "folder"},
    )
    for name in ("a_fifo", "z_good"):
        folder = layout.landing("scans") / name
        folder.mkdir(parents=True)
        for i in range(4):
            (folder / f"{i}.png").write_bytes(_png(i + (100 if name == "z_good" else 0)))
        _ready(folder)
    os.mkfifo(layout.landing("scans") / "a_fifo" / "labels.csv")
    rows = ["file,label,id", *(f"{i}.png,{i % 2},g{i}" for i in range(4))]
    (layout.landing("scans") / "z_good" / "labels.csv").write_text("\n".join(rows) + "\n")
    return spec, read_image_records, {"a_fifo": 4, "z_good": 4}  # without labels.csv: images to score


@pytest.mark.parametrize(
    "case", [_tabular_case, _text_case, _image_case], ids=["records.csv", "notes.jsonl", "labels.csv"]
)
def test_a_fifo_never_blocks_ingestion_and_the_good_batch_flows(case, tmp_path: Path):
    layout = DataRoot(tmp_path / "data")
    spec, reader, expected_rows = case(layout, tmp_path)
    warehouse = Warehouse(layout)
    with deadline(60):
        summary = ingest_new_batches(spec, layout, warehouse, reader)
    fifo_rejections = [q for q in summary.quarantined if q["problem"] == NOT_REGULAR]
    assert fifo_rejections, "each FIFO is rejected with the plain reason"
    raw = warehouse.read(spec.name, "raw_records")
    assert raw.group_by("_meddiag_batch").len().sort("_meddiag_batch").rows() == sorted(expected_rows.items())
    quarantine = layout.quarantine(spec.name)
    fifos = [p.relative_to(quarantine).parts for p in quarantine.rglob("*") if p.is_fifo()]  # <batch>/files/<path>
    assert fifos and all(file_reason(quarantine / batch, "/".join(rel)).is_file() for batch, _, *rel in fifos), (
        "the FIFO was moved, never opened"
    )
    assert not [p for p in layout.landing(spec.name).rglob("*") if p.is_fifo()]
    counts = reconcile(spec, warehouse)
    assert counts["landed_files"] == counts["ingested_files"] + counts["quarantined_files"]


def _ingest(layout: DataRoot, spec: TaskSpec, reader=read_tabular_batch):
    warehouse = Warehouse(layout)
    summary = ingest_new_batches(spec, layout, warehouse, reader)
    records, validation = validate_pending_batches(spec, layout, warehouse, validate_tabular)
    return warehouse, summary, records, validation


def _touch_later(path: Path) -> None:
    """Make a change visible to the mtime test even on file systems with coarse time stamps."""
    later = path.parent.parent.stat().st_mtime_ns + 10**9 * 5
    os.utime(path, ns=(later, later))


@pytest.mark.parametrize("change", ["added", "changed", "removed"])
def test_a_known_batch_that_changed_is_set_aside_and_its_rows_stay(synthetic_spec, layout, change):
    folder = land(layout, TASK, "b1", synthetic_records(30, seed=1))
    synthetic_records(10, seed=9, start=500).write_csv(folder / "extra.csv")
    _ingest(layout, synthetic_spec)
    if change == "added":
        synthetic_records(5, seed=3, start=900).write_csv(folder / "late.csv")
        _touch_later(folder / "late.csv")
    elif change == "changed":
        synthetic_records(31, seed=4).write_csv(folder / "records.csv")
        _touch_later(folder / "records.csv")
    else:
        (folder / "extra.csv").unlink()
        _touch_later(folder)
    warehouse, summary, records, _ = _ingest(layout, synthetic_spec)
    assert summary.changed == [
        {
            "batch": "b1",
            "added": int(change == "added"),
            "changed": int(change == "changed"),
            "removed": int(change == "removed"),
        }
    ]
    assert records.height == 40 and folder.is_dir(), "the rows ingested and the unchanged files stay"
    moved = {"added": "late.csv", "changed": "records.csv"}.get(change)
    if moved is None:  # a removed file: nothing to set aside, the change is reported
        assert not list(layout.quarantine(TASK).glob("b1.changed-*"))
    else:
        [aside] = list(layout.quarantine(TASK).glob("b1.changed-*"))
        assert (aside / "files" / moved).is_file() and not (folder / moved).exists()
        reason = json.loads(file_reason(aside, moved).read_text())
        assert reason["problem"].startswith(
            f"changed after it was ingested: {int(change == 'added')} files added, "
            f"{int(change == 'changed')} changed, 0 removed"
        )
        assert "land the new rows as a new batch" in reason["problem"]
        assert _ingest(layout, synthetic_spec)[1].changed == [], "reported once"


def test_an_unchanged_known_batch_is_not_set_aside_even_when_touched(synthetic_spec, layout):
    folder = land(layout, TASK, "b1", synthetic_records(30, seed=1))
    _ingest(layout, synthetic_spec)
    _touch_later(folder / "records.csv")  # newer, same bytes: hashed again, found unchanged
    _, summary, records, _ = _ingest(layout, synthetic_spec)
    assert summary.changed == [] and summary.skipped_known == 1 and folder.is_dir() and records.height == 30


def test_files_the_reader_did_not_read_are_rejected_not_counted_as_ingested(synthetic_spec, layout):
    folder = land(layout, TASK, "b1", synthetic_records(30, seed=1))
    (folder / "notes.md").write_text("exported by hand\n")

    def reader(batch, spec):  # reads only the CSV, as a reader that skips unknown formats would
        return ReadOutcome(
            read_tabular_batch(batch.__class__(**{**batch.__dict__, "files": ("records.csv",)}), spec),
            files_read=["records.csv"],
        )

    warehouse, summary, records, _ = _ingest(layout, synthetic_spec, reader)
    assert {"batch": "b1", "file": "notes.md", "problem": NOT_READ} in summary.quarantined
    assert file_reason(layout.quarantine(TASK) / "b1", "notes.md").is_file()
    counts = reconcile(synthetic_spec, warehouse)
    assert (counts["landed_files"], counts["ingested_files"], counts["quarantined_files"]) == (2, 1, 1)
    assert records.height == 30


def _binary_spec(**extra) -> TaskSpec:
    return TaskSpec(name=TASK, modality="tabular", label="outcome", positive="1", id="rid", **extra)


def _labelled(n: int, seed: int, start: int, labels: list) -> pl.DataFrame:
    return synthetic_records(n, seed=seed, start=start).with_columns(pl.Series("outcome", (labels * n)[:n]))


def test_label_domain_is_fixed_by_the_first_validated_batch(layout):
    spec = _binary_spec()
    land(layout, TASK, "b1", _labelled(40, 1, 0, [0, 1]))
    land(layout, TASK, "b2", _labelled(40, 2, 100, [0, 1, 7]))
    land(layout, TASK, "b3", _labelled(40, 3, 200, [1, 0]))
    warehouse, _, records, validation = _ingest(layout, spec)
    assert validation.validated == ["b1", "b3"] and [q["batch"] for q in validation.quarantined] == ["b2"]
    [failure] = [f for f in validation.quarantined[0]["failures"] if f["expectation"] == "label_domain"]
    assert (
        failure["problem"]
        == (
            "13 rows hold labels outside the task's classes (fixed by the task's first "
            "validated batch: 0, 1): 1 distinct values"
        )
        and failure["unexpected_count"] == 13
    )
    assert sorted(records["outcome"].cast(pl.String).unique().to_list()) == ["0", "1"]
    assert json.loads(warehouse.state(TASK, "label_domain")) == ["0", "1"]
    reason = (layout.quarantine(TASK) / "b2" / "reason.json").read_text()
    assert "13 rows hold labels outside" in reason and not re.search(r"['\"]7['\"]", reason)  # counts, not values


def test_a_first_batch_that_cannot_fix_a_binary_domain_is_quarantined(layout):
    land(layout, TASK, "b1", _labelled(30, 1, 0, [0, 1, 2]))
    land(layout, TASK, "b2", _labelled(30, 2, 100, [0, 1]))
    warehouse, _, records, validation = _ingest(layout, _binary_spec())
    assert [q["batch"] for q in validation.quarantined] == ["b1"] and validation.validated == ["b2"]
    assert (
        "exactly one other label in the first batch to fix its domain; it holds the positive class and 2 other "
        "distinct values" in json.dumps(validation.quarantined)
    )
    assert json.loads(warehouse.state(TASK, "label_domain")) == ["0", "1"]


@pytest.mark.parametrize(
    "values, domain, spec_extra, outside",
    [
        ([1, 0, 1], None, {}, []),
        ([1.0, 0.0], ["0", "1"], {}, []),
        ([True, False], ["0", "1"], {}, []),
        (["1", "2"], ["0", "1"], {}, ["2"]),
        (["yes", "no"], None, {"classes": ["0", "1"]}, ["no", "yes"]),
    ],
)
def test_label_domain_failures_compare_canonical_labels(values, domain, spec_extra, outside):
    frame = pl.DataFrame({"outcome": values})
    failures, _ = label_domain_failures(domain, _binary_spec(**spec_extra), frame)
    if outside:
        [failure] = failures
        assert f"{len(outside)} distinct values" in failure.problem
        assert not [v for v in outside if v in failure.problem]  # values found in data are never quoted
    else:
        assert failures == []


HOSTILE_BATCH_NAMES = ["[x](javascript:alert(1))", "**b**|c"]


def shown_as_text(md: str, names: list[str]) -> str:
    """The HTML a viewer renders from markdown metadata, once it is checked to show each name as its own text
    (no link, emphasis or table made of it)."""
    import markdown_it

    html = markdown_it.MarkdownIt("commonmark").enable("table").render(md)
    assert "<a " not in html and "<strong>" not in html and "<em>" not in html and "<table" not in html, html
    assert all(name in html for name in names), html
    return html


def test_waiting_and_quarantined_batches_are_named_on_the_materializations(synthetic_spec, layout):
    """Issue 12 §6: a batch without its marker is named at INFO on raw_records (issue 24: as text, its folder
    name escaped in the markdown metadata); an empty validated_records says why; check failures carry their
    reasons in the description."""
    import dagster as dg

    from meddiag_pipelines.defs.build import build_definitions
    from meddiag_pipelines.update import run_task_in_process

    land(layout, TASK, "batch-0001", synthetic_records(20, seed=1), ready=False)
    for hostile in HOSTILE_BATCH_NAMES:
        land(layout, TASK, hostile, synthetic_records(5, seed=3), ready=False)
    land(
        layout,
        TASK,
        "batch-0002",
        synthetic_records(20, seed=2, start=100).with_columns(pl.lit("maybe").alias("outcome")),
    )
    defs = build_definitions([synthetic_spec], layout.local)
    keys = [dg.AssetKey([TASK, "raw_records"]), dg.AssetKey([TASK, "validated_records"])]
    with dg.instance_for_test() as instance:
        result = run_task_in_process(
            defs, synthetic_spec, instance, ["raw_records", "validated_records"], raise_on_error=False
        )
        raw = instance.get_latest_materialization_event(keys[0]).asset_materialization.metadata
        validated = instance.get_latest_materialization_event(keys[1]).asset_materialization.metadata
        logs = [(e.level, e.user_message) for e in instance.all_logs(result.run_id) if e.level >= 20]
    assert raw["waiting_batches"].value == 1 + len(HOSTILE_BATCH_NAMES)
    assert "batch-0001 has no _READY marker" in shown_as_text(raw["waiting"].value, HOSTILE_BATCH_NAMES)
    assert any(level == 20 and "batch-0001 has no _READY marker" in msg for level, msg in logs)
    why = validated["why_empty"].value
    assert "batch-0001 has no _READY marker" in why and "batch-0002 was quarantined" in why
    assert "20 rows hold labels outside the task's classes (declared: no, yes)" in why and "maybe" not in why


def test_failures_result_puts_the_reasons_in_the_description():
    from meddiag_pipelines.defs.assets.common import failures_result
    from meddiag_pipelines.validation.suites import CheckFailure

    result = failures_result(
        [CheckFailure("expect_column_values_to_be_in_set", "outcome", "3 rows outside the domain")]
    )
    assert not result.passed and result.description == "outcome: 3 rows outside the domain"
    assert failures_result([]).description is None


def test_a_batch_name_too_long_for_its_outputs_is_refused_and_the_good_batch_flows(tmp_path):
    from meddiag_pipelines.ingestion.batches import MAX_BATCH_NAME_BYTES, ingest_new_batches
    from meddiag_pipelines.ingestion.warehouse import Warehouse
    from meddiag_pipelines.specs import TaskSpec
    from meddiag_pipelines.storage import DataRoot
    from meddiag_pipelines.tabular.readers import read_tabular_batch
    from meddiag_pipelines_tests.conftest import SYNTHETIC_SPEC, land, synthetic_records

    layout, spec = DataRoot(tmp_path / "data"), TaskSpec.model_validate(SYNTHETIC_SPEC)
    long_name = "b" + "é" * (MAX_BATCH_NAME_BYTES // 2 + 10)  # 221 bytes: the folder fits, its outputs would not
    land(layout, spec.name, long_name, synthetic_records(20, seed=1))
    land(layout, spec.name, "b2", synthetic_records(20, seed=2, start=100))
    land(layout, spec.name, long_name + "x", synthetic_records(20, seed=3, start=200))
    summary = ingest_new_batches(spec, layout, Warehouse(layout), read_tabular_batch)
    assert summary.ingested == ["b2"]
    assert all("over 200 bytes" in q["problem"] for q in summary.quarantined) and len(summary.quarantined) == 2


@pytest.mark.slow
def test_a_task_whose_only_batch_is_quarantined_updates_cleanly_and_a_good_batch_later_publishes(
    synthetic_spec, layout
):
    """Issue 24: with no validated rows the split says so and the later steps are skipped (no column error, no
    failed run); the next good batch trains and is published."""
    import dagster as dg

    from meddiag_pipelines.defs.build import build_definitions
    from meddiag_pipelines.registry.store import ModelRegistry
    from meddiag_pipelines.update import update_task
    from meddiag_pipelines_tests.conftest import fast

    spec = fast(synthetic_spec)
    land(layout, TASK, "b1", synthetic_records(40, seed=2).with_columns(pl.lit("maybe").alias("outcome")))
    defs = build_definitions([spec], layout.local)
    registry = ModelRegistry(layout)
    with dg.instance_for_test() as instance:
        first = update_task(spec, instance, defs=defs)
        skipped = [
            e.step_key
            for e in instance.all_logs(first.downstream_run)
            if e.is_dagster_event and e.dagster_event.event_type == dg.DagsterEventType.STEP_SKIPPED
        ]
        assert f"{TASK}__features" in skipped and registry.champion(TASK) is None
        land(layout, TASK, "b2", synthetic_records(300, seed=3, start=1000))
        update_task(spec, instance, defs=defs)
    assert registry.champion(TASK) is not None
