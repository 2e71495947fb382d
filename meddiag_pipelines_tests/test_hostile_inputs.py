"""Hostile tabular input, generated here: each case lands one hostile batch beside a good one and runs
ingestion + validation. Every hostile batch ends in quarantine with a reason.json naming the file and the
problem; the good batch flows with every row; the ledger reconciles; no cell value is echoed.

Encodings (the documented choice): UTF-8, and UTF-8/UTF-16/UTF-32 with a byte-order mark, are decoded; text
in any other encoding (Latin-1, UTF-16 without a BOM) is quarantined with the offset of the first bad byte.
NaN in a numeric column is "not recorded" (null); infinities are quarantined.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

from meddiag_pipelines.ingestion import tables
from meddiag_pipelines.ingestion.batches import ingest_new_batches, reconcile, validate_pending_batches
from meddiag_pipelines.ingestion.errors import BatchRejected
from meddiag_pipelines.ingestion.landing import LandedBatch, describe_batch
from meddiag_pipelines.ingestion.warehouse import Warehouse
from meddiag_pipelines.storage import DataRoot, PathOutsideDataRoot
from meddiag_pipelines.tabular.readers import read_tabular_batch
from meddiag_pipelines.validation.suites import validate_tabular
from meddiag_pipelines_tests.conftest import land, synthetic_records

TASK = "synthetic_risk"
CANARY = "CANARY-HOSTILE-7731"
GOOD_ROWS = 40


def records(n: int = 30, seed: int = 1, start: int = 0) -> pl.DataFrame:
    """Synthetic rows whose ids carry a canary, so any echo of an identifier is caught."""
    return synthetic_records(n, seed=seed, start=start).with_columns(
        (pl.lit(CANARY + "-") + pl.col("rid")).alias("rid"), (pl.lit(CANARY + "-") + pl.col("pid")).alias("pid")
    )


def csv_bytes(frame: pl.DataFrame, **kw) -> bytes:
    return frame.write_csv(**kw).encode()


def parquet_bytes(frame: pl.DataFrame, **kw) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer, **kw)
    return buffer.getvalue()


def land_raw(layout: DataRoot, batch: str, raw: bytes, filename: str = "records.csv") -> Path:
    return land(layout, TASK, batch, raw=raw, filename=filename)


@dataclass
class Case:
    kind: str
    setup: Callable[[DataRoot, Path], None]
    file: str | None  # the file the reason must name (None: the batch itself)
    problem: str  # a fragment of the reason's problem (read stage) or of a failing expectation (validation)
    stage: str = "read"
    batch: str = "b1"


def _truncated_csv(layout, tmp):
    raw = csv_bytes(records())
    land_raw(layout, "b1", raw[: len(raw) // 2])


def _truncated_quoted_csv(layout, tmp):
    raw = csv_bytes(records().with_columns(pl.lit("a, b").alias("note")), quote_style="always")
    land_raw(layout, "b1", raw[:-6])


def _truncated_parquet(layout, tmp):
    raw = parquet_bytes(records())
    land_raw(layout, "b1", raw[: len(raw) // 2], "records.parquet")


def _parquet_footer_cut(layout, tmp):
    raw = parquet_bytes(records())
    land_raw(layout, "b1", raw[:-12] + b"PAR1", "records.parquet")


def _parquet_bomb(layout, tmp):
    # A million identical long strings: a few KB on disk (dictionary + zstd), 100 MB decoded.
    frame = pl.select(rid=pl.repeat("r", 1_000_000), pad=pl.repeat("x" * 100, 1_000_000))
    raw = parquet_bytes(frame, compression="zstd", row_group_size=1_000_000)
    assert len(raw) < 100_000
    land_raw(layout, "b1", raw, "records.parquet")


def _nested_parquet(layout, tmp):
    land_raw(
        layout, "b1", parquet_bytes(records().with_columns(pl.concat_list("x1", "x2").alias("vec"))), "records.parquet"
    )


def _semicolons(layout, tmp):
    land_raw(layout, "b1", csv_bytes(records(), separator=";"))


def _tabs(layout, tmp):
    land_raw(layout, "b1", csv_bytes(records(), separator="\t"))


def _latin1(layout, tmp):
    land_raw(
        layout, "b1", records().with_columns(pl.lit("Müller-Lüdenscheidt").alias("ward")).write_csv().encode("latin-1")
    )


def _utf16_no_bom(layout, tmp):
    land_raw(layout, "b1", records().write_csv().encode("utf-16-le"))


def _mixed_types(layout, tmp):
    frame = records().with_columns(pl.col("x1").cast(pl.String))
    frame = frame.with_columns(
        pl.when(pl.col("rid").str.ends_with("r3")).then(pl.lit("n/a")).otherwise(pl.col("x1")).alias("x1")
    )
    land_raw(layout, "b1", csv_bytes(frame))


def _mixed_files(layout, tmp):
    folder = land_raw(layout, "b1", csv_bytes(records(10)))
    (folder / "more.csv").write_bytes(csv_bytes(records(10, start=100).with_columns(pl.lit("high").alias("x2"))))


def _header_only(layout, tmp):
    land_raw(layout, "b1", b"rid,pid,x1,x2,x3,group,outcome\n")


def _zero_bytes(layout, tmp):
    land_raw(layout, "b1", b"")


def _whitespace_only(layout, tmp):
    land_raw(layout, "b1", b"\n\n   \n")


def _wide(layout, tmp):
    frame = records().with_columns([pl.lit(1.0).alias(f"c{i}") for i in range(5000)])
    land_raw(layout, "b1", csv_bytes(frame))


def _long_row(layout, tmp):
    land_raw(layout, "b1", csv_bytes(records()) + b"r999," + b"9," * 100_000 + b"yes\n")


def _duplicate_header(layout, tmp):
    land_raw(layout, "b1", b"rid,pid,x1,x1,x2,x3,group,outcome\n" + b"a,b,1,2,3,4,A,yes\n")


def _nul_header(layout, tmp):
    land_raw(layout, "b1", b"rid,pid,x\x011,x2,x3,group,outcome\na,b,1,2,3,A,yes\n")


def _duplicate_ids(layout, tmp):
    frame = records()
    land_raw(layout, "b1", csv_bytes(pl.concat([frame, frame.head(3)])))


def _label_out_of_domain(layout, tmp):
    land_raw(layout, "b1", csv_bytes(records().with_columns(pl.lit("maybe").alias("outcome"))))


def _infinities(layout, tmp):
    raw = csv_bytes(records()).replace(b"\n" + CANARY.encode() + b"-r5,", b"\n" + CANARY.encode() + b"-r5,", 1)
    land_raw(layout, "b1", raw + f"{CANARY}-r999,{CANARY}-p9,inf,-inf,1.0,A,yes\n".encode())


def _oversized(layout, tmp):
    land_raw(layout, "b1", csv_bytes(records(20_000)))


def _unsupported(layout, tmp):
    land_raw(layout, "b1", b"PK\x03\x04not a spreadsheet", "records.xlsx")


def _symlinked_batch(layout, tmp):
    outside = tmp / "outside_batch"
    outside.mkdir()
    (outside / "records.csv").write_bytes(csv_bytes(records()))
    (outside / "_READY").touch()
    layout.landing(TASK).mkdir(parents=True, exist_ok=True)
    (layout.landing(TASK) / "b1").symlink_to(outside, target_is_directory=True)


def _symlinked_file(layout, tmp):
    outside = tmp / "outside.csv"
    outside.write_bytes(csv_bytes(records()))
    folder = land_raw(layout, "b1", csv_bytes(records(5)))
    (folder / "escape.csv").symlink_to(outside)


def _symlinked_subfolder(layout, tmp):
    outside = tmp / "outside_dir"
    outside.mkdir()
    (outside / "records.csv").write_bytes(csv_bytes(records()))
    folder = land_raw(layout, "b1", csv_bytes(records(5)))
    (folder / "sub").symlink_to(outside, target_is_directory=True)


def _bytes_file_name(layout, tmp):
    land_raw(layout, "b1", csv_bytes(records()), os.fsdecode(b"records-\xff\xfe.csv"))


def _bytes_batch_name(layout, tmp):
    land_raw(layout, os.fsdecode(b"b1-\xe9t\xe9"), csv_bytes(records()))


def _huge_text(layout, tmp):
    # Huge free text is data, not an attack: it must flow (excluded from features by the spec).
    land_raw(layout, "b1", csv_bytes(records(3).with_columns(pl.lit("note " * 400_000).alias("notes"))))


def _fifo(layout, tmp):
    folder = layout.landing(TASK) / "b1"
    folder.mkdir(parents=True)
    os.mkfifo(folder / "records.csv")  # opening it would block the reader (and the task's lock) for ever
    (folder / "_READY").touch()


def _nan(layout, tmp):
    land_raw(layout, "b1", csv_bytes(records()) + f"{CANARY}-r999,{CANARY}-p9,NaN,0.5,nan,A,yes\n".encode())


CASES = [
    Case("truncated CSV (cut mid-row)", _truncated_csv, "records.csv", "looks truncated"),
    Case("truncated CSV (cut inside a quoted field)", _truncated_quoted_csv, "records.csv", "truncated"),
    Case("truncated Parquet", _truncated_parquet, "records.parquet", "cannot be read as parquet"),
    Case("Parquet with a damaged footer", _parquet_footer_cut, "records.parquet", "cannot be read as parquet"),
    Case("Parquet decompression bomb", _parquet_bomb, "records.parquet", "decompression bomb"),
    Case("Parquet with a nested column", _nested_parquet, "records.parquet", "nested values"),
    Case("wrong delimiter (;)", _semicolons, "records.csv", "delimited by ';'"),
    Case("wrong delimiter (tab)", _tabs, "records.csv", "delimited by '\\t'"),
    Case("Latin-1 encoding", _latin1, "records.csv", "is not UTF-8 text"),
    Case("UTF-16 without BOM", _utf16_no_bom, "records.csv", "UTF-16 without a byte-order mark"),
    Case("mixed types in a numeric column", _mixed_types, "records.csv", "declared numeric but holds String"),
    Case("mixed types across files of a batch", _mixed_files, "more.csv", "declared numeric but holds String"),
    Case("header only", _header_only, "records.csv", "header but no rows"),
    Case("zero bytes", _zero_bytes, "records.csv", "is empty (zero bytes)"),
    Case("whitespace only", _whitespace_only, "records.csv", "holds only whitespace"),
    Case("5,000 columns", _wide, "records.csv", "over the limit of 1000"),
    Case("very long row (100,000 fields)", _long_row, "records.csv", "fields where the header has 7"),
    Case("duplicate column names", _duplicate_header, "records.csv", "column 4 repeats the name of column 3"),
    Case("control character in a column name", _nul_header, "records.csv", "control characters"),
    Case("duplicate ids within a batch", _duplicate_ids, None, "expect_column_values_to_be_unique", "validate"),
    Case("label out of domain", _label_out_of_domain, None, "expect_column_values_to_be_in_set", "validate"),
    Case("infinities in numeric columns", _infinities, "records.csv", "infinite values"),
    Case("oversized file (landing.max_file_mb)", _oversized, "records.csv", "landing.max_file_mb"),
    Case("unsupported file type", _unsupported, "records.xlsx", "unsupported file type"),
    Case("batch folder is a symlink out of landing", _symlinked_batch, None, "symbolic link"),
    Case("file symlink pointing outside", _symlinked_file, "escape.csv", "symbolic link"),
    Case("sub-folder symlink pointing outside", _symlinked_subfolder, "sub", "symbolic link"),
    Case("non-UTF-8 file name", _bytes_file_name, "records-\\xff\\xfe.csv", "not valid UTF-8"),
    Case("non-UTF-8 batch folder name", _bytes_batch_name, None, "not valid UTF-8", batch="b1-\\xe9t\\xe9"),
    Case("FIFO named records.csv", _fifo, None, "holds no regular files"),
]
ACCEPTED = [  # hostile-looking input that is valid data and must flow, whole
    ("UTF-8 with BOM", lambda layout, tmp: land_raw(layout, "b1", b"\xef\xbb\xbf" + csv_bytes(records())), 30),
    ("UTF-16 with BOM", lambda layout, tmp: land_raw(layout, "b1", records().write_csv().encode("utf-16")), 30),
    ("UTF-32 with BOM", lambda layout, tmp: land_raw(layout, "b1", records().write_csv().encode("utf-32")), 30),
    (
        "CRLF line ends, no final newline",
        lambda layout, tmp: land_raw(layout, "b1", csv_bytes(records(), line_terminator="\r\n").rstrip(b"\r\n")),
        30,
    ),
    ("NaN in numeric columns (= not recorded)", _nan, 31),
    ("huge free-text field (2 MB per row)", _huge_text, 3),
]


def ingest_and_validate(spec, layout):
    warehouse = Warehouse(layout)
    ingest = ingest_new_batches(spec, layout, warehouse, read_tabular_batch)
    records_, validation = validate_pending_batches(spec, layout, warehouse, validate_tabular)
    return warehouse, ingest, records_, validation


def assert_reconciles(spec, warehouse):
    counts = reconcile(spec, warehouse)
    assert counts["landed_files"] == counts["ingested_files"] + counts["quarantined_files"]
    assert counts["landed_batches"] == counts["validated_batches"] + counts["quarantined_batches"]
    assert counts["read_batches"] == 0
    return counts


def land_good(layout):
    land(layout, TASK, "z_good", records(GOOD_ROWS, seed=9, start=5000))


@pytest.mark.parametrize("case", CASES, ids=[c.kind for c in CASES])
def test_hostile_batch_is_quarantined_and_the_good_one_flows(case, synthetic_spec, layout, tmp_path):
    spec = synthetic_spec.model_copy(update={"landing": synthetic_spec.landing.model_copy(update={"max_file_mb": 1.0})})
    case.setup(layout, tmp_path)
    land_good(layout)
    warehouse, ingest, records_, validation = ingest_and_validate(spec, layout)

    assert set(records_["_meddiag_batch"]) == {"z_good"} and records_.height == GOOD_ROWS  # no good row lost
    quarantine = layout.quarantine(TASK) / case.batch
    why = json.loads((quarantine / "reason.json").read_text())
    assert why["batch"] == case.batch and why["stage"] == case.stage
    if case.stage == "read":
        assert why["file"] == (case.file or case.batch), why
        assert case.problem in why["problem"], why["problem"]
        assert any(q["batch"] == case.batch and case.problem in q["problem"] for q in ingest.quarantined)
    else:
        assert any(f["expectation"] == case.problem for f in why["failures"]), why
    assert not (layout.landing(TASK) / case.batch).exists() and not os.path.lexists(layout.landing(TASK) / case.batch)
    assert CANARY not in json.dumps(why) and CANARY not in json.dumps(ingest.quarantined)  # no value echoed
    counts = assert_reconciles(spec, warehouse)
    assert counts["quarantined_batches"] == 1 and counts["validated_rows"] == GOOD_ROWS
    assert warehouse.read(TASK, "raw_records").filter(pl.col("_meddiag_batch") == "z_good").height == GOOD_ROWS


@pytest.mark.parametrize(("kind", "setup", "rows"), ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_valid_but_unusual_input_flows_whole(kind, setup, rows, synthetic_spec, layout, tmp_path):
    spec = synthetic_spec.model_copy(update={"exclude": ["notes"]})
    setup(layout, tmp_path)
    land_good(layout)
    warehouse, ingest, records_, _ = ingest_and_validate(spec, layout)
    assert ingest.quarantined == []
    assert records_.filter(pl.col("_meddiag_batch") == "b1").height == rows
    assert records_.select(pl.col("x1", "x2", "x3").is_nan().any()).row(0) == (False, False, False)  # NaN -> null
    assert set(records_["rid"].str.slice(0, len(CANARY))) == {CANARY}  # BOM stripped from the first header
    assert_reconciles(spec, warehouse)


def test_reexported_batch_is_quarantined_as_duplicates_across_batches(synthetic_spec, layout):
    land(layout, TASK, "b1", records())
    ingest_and_validate(synthetic_spec, layout)
    land(layout, TASK, "b2_reexport", records())  # the same export, landed again under a new name
    warehouse, _, records_, validation = ingest_and_validate(synthetic_spec, layout)
    assert records_.height == 30 and [q["batch"] for q in validation.quarantined] == ["b2_reexport"]
    why = json.loads((layout.quarantine(TASK) / "b2_reexport" / "reason.json").read_text())
    assert why["failures"][-1]["expectation"] == "ids_unique_across_batches" and CANARY not in json.dumps(why)
    assert_reconciles(synthetic_spec, warehouse)


def test_every_hostile_batch_at_once(synthetic_spec, layout, tmp_path):
    """All cases in one landing folder: one pass quarantines each, the good batch flows, the ledger adds up."""
    spec = synthetic_spec.model_copy(update={"landing": synthetic_spec.landing.model_copy(update={"max_file_mb": 1.0})})
    for i, case in enumerate(CASES):
        scratch = tmp_path / f"case{i}"
        scratch.mkdir()
        sub = DataRoot(scratch / "data")
        case.setup(sub, scratch)
        for entry in sub.landing(TASK).iterdir():
            target = layout.landing(TASK) / f"h{i:02d}_{entry.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            entry.rename(target)
    land_good(layout)
    warehouse, ingest, records_, validation = ingest_and_validate(spec, layout)
    assert records_.height == GOOD_ROWS
    counts = assert_reconciles(spec, warehouse)
    assert counts["quarantined_batches"] == len(CASES) and counts["validated_batches"] == 1
    assert sorted(os.listdir(layout.landing(TASK))) == ["z_good"]
    assert len(list(layout.quarantine(TASK).glob("*/reason.json"))) == len(CASES)


def test_paths_with_dotdot_or_outside_the_data_root_are_refused(synthetic_spec, layout, tmp_path):
    folder = land(layout, TASK, "b1", records(5))
    (tmp_path / "outside.csv").write_bytes(csv_bytes(records(5)))
    batch = describe_batch(TASK, folder)
    sneaky = LandedBatch(TASK, "b1", folder, ("../../../../outside.csv",), batch.content_hash, 0)
    with pytest.raises(BatchRejected, match="escapes the batch folder"):
        read_tabular_batch(sneaky, synthetic_spec)
    with pytest.raises(PathOutsideDataRoot, match="outside.csv: resolves outside the data folder"):
        layout.confined(layout.landing(TASK) / ".." / ".." / ".." / "outside.csv")
    assert layout.confined(layout.landing(TASK) / "b1" / ".." / "b1") == f"landing/{TASK}/b1"
    for bad in ("/etc/passwd", "../x", f"landing/{TASK}/b1/../../../../x"):  # strings: '..' is refused, not resolved
        with pytest.raises(PathOutsideDataRoot, match="resolves outside the data folder"):
            layout.confined(bad)


def test_landing_folder_linked_out_of_the_data_root_fails_loudly(synthetic_spec, layout, tmp_path):
    outside = tmp_path / "elsewhere"
    (outside / "b1").mkdir(parents=True)
    (outside / "b1" / "records.csv").write_bytes(csv_bytes(records()))
    (outside / "b1" / "_READY").touch()
    layout.landing(TASK).parent.mkdir(parents=True)
    layout.landing(TASK).symlink_to(outside, target_is_directory=True)
    with pytest.raises(PathOutsideDataRoot, match="landing/synthetic_risk: resolves outside the data folder"):
        ingest_new_batches(synthetic_spec, layout, Warehouse(layout), read_tabular_batch)
    assert (outside / "b1" / "records.csv").exists()


def test_a_crashing_reader_rejects_its_batch_only(synthetic_spec, layout):
    land(layout, TASK, "b1", records())
    land_good(layout)

    def reader(batch, spec):
        if batch.batch_id == "b1":
            raise pl.exceptions.PanicException("boom " + CANARY)
        return read_tabular_batch(batch, spec)

    warehouse = Warehouse(layout)
    ingest = ingest_new_batches(synthetic_spec, layout, warehouse, reader)
    assert ingest.ingested == ["z_good"] and "PanicException" in ingest.quarantined[0]["problem"]
    assert CANARY not in json.dumps(ingest.quarantined)


def test_interrupted_quarantine_is_finished_by_the_next_run(synthetic_spec, layout, monkeypatch):
    """Ledger first, move second: a crash between them is repaired, never lost or read twice."""
    from meddiag_pipelines.ingestion import batches

    land_raw(layout, "b1", b"")
    land_good(layout)
    monkeypatch.setattr(
        batches, "quarantine_batch", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt("between ledger and move"))
    )
    with pytest.raises(KeyboardInterrupt, match="between ledger and move"):
        ingest_and_validate(synthetic_spec, layout)
    monkeypatch.undo()
    warehouse, ingest, records_, _ = ingest_and_validate(synthetic_spec, layout)
    assert (layout.quarantine(TASK) / "b1" / "reason.json").exists() and not (layout.landing(TASK) / "b1").exists()
    assert records_.height == GOOD_ROWS and assert_reconciles(synthetic_spec, warehouse)["quarantined_batches"] == 1


def test_case_table_for_the_report():
    """The list of hostile kinds the suite tries (printed with -s for bench/README.md)."""
    kinds = [c.kind for c in CASES] + [a[0] for a in ACCEPTED]
    assert len(set(kinds)) == len(kinds) and len(CASES) >= 25
    assert tables.MAX_COLUMNS == 1000
    print("\n".join(f"| {k} | {'quarantined' if k in {c.kind for c in CASES} else 'accepted'} |" for k in kinds))


# -- batches that passed before and then blocked every later run (issue 13 §3) ----------------------------------
def _train_on(records_, spec, out):
    from meddiag_pipelines_tests.test_tabular_totality import train_and_score

    return train_and_score(records_, spec, out)


BLOCKING = [
    (
        "finite values beyond float32",
        lambda f: f.with_columns(pl.when(pl.col("x1") > 1).then(1e39).otherwise(pl.col("x1")).alias("x1")),
        "exceeds the float32",
    ),
    (
        "a column in the internal namespace",
        lambda f: f.with_columns(pl.lit("train").alias("_meddiag_split")),
        "reserved namespace",
    ),
    ("two columns differing only in case", lambda f: f.with_columns(pl.col("x2").alias("X2")), "differ only in case"),
]


@pytest.mark.parametrize(("kind", "mutate", "problem"), BLOCKING, ids=[b[0] for b in BLOCKING])
def test_a_batch_that_would_block_training_is_quarantined_and_the_good_ones_train(
    kind, mutate, problem, synthetic_spec, layout, tmp_path
):
    land(layout, TASK, "b1", mutate(records(60, seed=3)), filename="records.parquet")
    land(layout, TASK, "z_good", records(200, seed=9, start=5000))
    warehouse, ingest, records_, _ = ingest_and_validate(synthetic_spec, layout)
    why = json.loads((layout.quarantine(TASK) / "b1" / "reason.json").read_text())
    assert why["file"] == "records.parquet" and problem in why["problem"] and CANARY not in json.dumps(why)
    assert set(records_["_meddiag_batch"]) == {"z_good"}
    _train_on(records_, synthetic_spec, tmp_path / "model")


def test_real_headers_and_values_xgboost_refused_flow_into_training(synthetic_spec, layout, tmp_path):
    """`dose[mg]`, `<0.01` and an optional column first seen in a later batch (mostly missing overall)."""
    first = records(200, seed=4).with_columns(
        (pl.col("x1") * 10).alias("dose[mg]"),
        pl.when(pl.col("x2") > 0).then(pl.lit("<0.01")).otherwise(pl.lit("0.2")).alias("crp"),
    )
    land(layout, TASK, "b1", first)
    land(layout, TASK, "b2", records(60, seed=5, start=3000).with_columns(pl.col("x1").alias("lactate")))
    warehouse, ingest, records_, validation = ingest_and_validate(synthetic_spec, layout)
    assert ingest.quarantined == [] and validation.quarantined == [] and records_.height == 260
    assert records_["lactate"].null_count() / records_.height > synthetic_spec.max_null_rate
    assert validate_tabular(records_, synthetic_spec) == []  # the task-wide suite no longer blocks on it
    result = _train_on(records_, synthetic_spec, tmp_path / "model")
    assert {"dose[mg]", "crp=<0.01", "lactate"} <= set(result["plan"].feature_names)
