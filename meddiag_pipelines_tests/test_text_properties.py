"""Property-based (hypothesis): any text batch (random batch and file names, long ones near the file-system limit; random
texts, ids and labels in every format) goes read -> ingest -> validate without raising; every landed file is
read or rejected with a reason naming it; every batch ends validated or quarantined with a reason; no text
reaches a rejection or a validation failure."""

from __future__ import annotations

import io
import json
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meddiag_pipelines.ingestion.batches import ReadOutcome, ingest_new_batches, validate_pending_batches
from meddiag_pipelines.ingestion.landing import display_name, is_data_file
from meddiag_pipelines.ingestion.warehouse import Warehouse
from meddiag_pipelines.specs import TaskSpec, spec_columns
from meddiag_pipelines.storage import DataRoot
from meddiag_pipelines.text.readers import read_text_batch
from meddiag_pipelines.text.validation import validate_texts

CANARY = "QZXCANARY"  # starts every planted text: never in a problem
SPEC = TaskSpec(
    name="prop_notes", modality="text", label="dx", text="note", id="nid", classes=["mi", "hf"], min_text_chars=3
)
FS_NAME_MAX = 255  # bytes
# Quarantine and predictions add up to ~30 bytes to a batch name (a ".<timestamp>.<pid>.<n>" suffix when the
# destination exists, ".<name>.<random>.tmp"); at 255 bytes those overflow (reported; not the text reader's).
BATCH_NAME_MAX = FS_NAME_MAX - 40


def _fits(name: str, limit: int = FS_NAME_MAX) -> bool:
    return name not in (".", "..") and len(name.encode("utf-8")) <= limit


name_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00")
odd_names = ["batch 0001", "lot n°7 — ünïcode", "a b\tc", "x" * FS_NAME_MAX, "é" * (FS_NAME_MAX // 2)]
names = st.one_of(st.text(name_chars, min_size=1, max_size=40), st.sampled_from(odd_names)).filter(_fits)
batch_names = st.one_of(
    st.text(name_chars, min_size=1, max_size=40),
    st.sampled_from([*odd_names[:3], "x" * BATCH_NAME_MAX, "é" * (BATCH_NAME_MAX // 2)]),
).filter(lambda n: _fits(n, BATCH_NAME_MAX))
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60).map(lambda t: CANARY + t)
labels = st.one_of(
    st.sampled_from(["mi", "hf", "", "MI", "1.0"]), st.integers(-3, 3), st.booleans(), st.none(), st.text(max_size=4)
)
ids = st.one_of(st.text(max_size=6), st.integers(0, 50))
records = st.lists(st.tuples(ids, labels, texts), min_size=1, max_size=6)
files = st.lists(st.tuples(st.sampled_from(["csv", "jsonl", "parquet", "txt"]), names, records), min_size=1, max_size=3)


def _as_text(value) -> str | None:
    return None if value is None else str(value)


def _land(batch: Path, kind: str, stem: str, rows: list[tuple]) -> None:
    """One file (or a folder of .txt files with labels.csv) holding ``rows``."""
    frame = pl.DataFrame(
        {
            "nid": [_as_text(i) for i, _, _ in rows],
            "dx": [_as_text(lab) for _, lab, _ in rows],
            "note": [t for _, _, t in rows],
        },
        schema={c: pl.String for c in ("nid", "dx", "note")},
    )
    name = _stem(stem)
    if kind == "csv":
        (batch / f"{name}.csv").write_bytes(frame.write_csv().encode())
    elif kind == "parquet":
        buffer = io.BytesIO()
        frame.write_parquet(buffer)
        (batch / f"{name}.parquet").write_bytes(buffer.getvalue())
    elif kind == "jsonl":
        lines = [json.dumps({"nid": i, "dx": lab, "note": t}) for i, lab, t in rows]
        (batch / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        folder = batch / name
        folder.mkdir(exist_ok=True)
        listing = pl.DataFrame(
            {"file": [f"n{k}.txt" for k in range(len(rows))], "nid": frame["nid"], "dx": frame["dx"]}
        )
        for k, (_, _, t) in enumerate(rows):
            (folder / f"n{k}.txt").write_text(t, encoding="utf-8")
        (folder / "labels.csv").write_bytes(listing.write_csv().encode())


def _stem(stem: str) -> str:
    """``stem`` cut so that it fits the file-system limit with a suffix (".parquet")."""
    return stem.encode("utf-8")[: FS_NAME_MAX - 10].decode("utf-8", "ignore") or "x"


def _entries(batch: Path) -> set[str]:
    return {
        p.relative_to(batch).as_posix() for p in batch.rglob("*") if p.is_file() and is_data_file(p.relative_to(batch))
    }


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(batch_name=batch_names, landed=files)
def test_any_text_batch_is_read_and_validated_or_rejected_with_a_reason(tmp_path_factory, batch_name, landed):
    layout = DataRoot(tmp_path_factory.mktemp("prop") / "data")
    batch = layout.landing(SPEC.name) / batch_name
    batch.mkdir(parents=True)
    for kind, stem, rows in landed:
        if not any(p.stem == _stem(stem) for p in batch.iterdir()):
            _land(batch, kind, stem, rows)
    entries = _entries(batch)

    result = read_text_batch(batch, SPEC)
    problems = dict(result.rejected)
    assert set(problems) | set(result.files_read) == entries, "a landed file was neither read nor rejected"
    for rel, problem in problems.items():
        assert rel in entries and problem.startswith(display_name(rel) + ":")
        assert CANARY not in problem.replace(display_name(rel), "")
    assert all(CANARY in t for t in result.records["text"].drop_nulls().to_list())  # texts arrive (scrubbed)
    for failure in validate_texts(spec_columns(result.records, SPEC), SPEC):
        assert CANARY not in json.dumps(failure.as_dict())

    (batch / "_READY").touch()
    warehouse = Warehouse(layout)

    def reader(landed_batch, spec):
        read = read_text_batch(landed_batch.path, spec)
        return ReadOutcome(spec_columns(read.records, spec), list(read.rejected))

    ingest_new_batches(SPEC, layout, warehouse, reader)
    validate_pending_batches(SPEC, layout, warehouse, validate_texts)
    ledger = warehouse.ledger(SPEC.name)
    if batch_name.startswith((".", "_")):  # a copy in flight or a marker: landing never picks it up
        assert ledger.height == 0
        return
    assert ledger.height == 1 and ledger["status"][0] in ("validated", "quarantined")
    reasons = list(layout.quarantine(SPEC.name).rglob("reason.json"))
    if ledger["status"][0] == "quarantined":
        assert reasons and ledger["reason"][0]
    assert CANARY not in "".join(p.read_text(encoding="utf-8") for p in reasons)
