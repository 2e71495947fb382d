import json
import os
import time

import polars as pl
import pytest

from meddiag_pipelines.ingestion.batches import ingest_new_batches, reconcile, validate_pending_batches
from meddiag_pipelines.ingestion.landing import describe_batch, ready_batch_dirs
from meddiag_pipelines.ingestion.quarantine import file_reason
from meddiag_pipelines.ingestion.warehouse import Warehouse
from meddiag_pipelines.specs import LandingSpec
from meddiag_pipelines.tabular.readers import read_tabular_batch
from meddiag_pipelines.validation.suites import validate_tabular
from meddiag_pipelines_tests.conftest import land, synthetic_records


def run_ingestion(spec, layout):
    warehouse = Warehouse(layout)
    ingest = ingest_new_batches(spec, layout, warehouse, read_tabular_batch)
    records, validation = validate_pending_batches(spec, layout, warehouse, validate_tabular)
    return warehouse, ingest, records, validation


def reason(layout, task, batch):
    return json.loads((layout.quarantine(task) / batch / "reason.json").read_text())


def test_good_batch_is_read_once_and_recorded(synthetic_spec, layout):
    frame = synthetic_records(50, seed=1)
    land(layout, "synthetic_risk", "b1", frame)
    warehouse, ingest, records, _ = run_ingestion(synthetic_spec, layout)
    assert ingest.ingested == ["b1"] and records.height == 50
    ledger = warehouse.ledger("synthetic_risk")
    assert ledger["status"].to_list() == ["validated"] and len(ledger["content_hash"][0]) == 64
    again = ingest_new_batches(synthetic_spec, layout, warehouse, read_tabular_batch)
    assert again.ingested == [] and again.skipped_known == 1
    assert warehouse.read("synthetic_risk", "raw_records").height == 50


@pytest.mark.parametrize("bad_first", [True, False])
def test_wrong_column_type_is_quarantined_without_values(synthetic_spec, layout, bad_first):
    good, bad = ("b2_good", "b1_bad") if bad_first else ("b1_good", "b2_bad")
    land(layout, "synthetic_risk", good, synthetic_records(60, seed=1))
    land(
        layout,
        "synthetic_risk",
        bad,
        synthetic_records(40, seed=2, start=1000).with_columns(pl.col("x1").cast(pl.String) + "mg"),
    )
    _, ingest, records, _ = run_ingestion(synthetic_spec, layout)
    assert set(records["_meddiag_batch"]) == {good} and records.height == 60
    why = reason(layout, "synthetic_risk", bad)
    assert why["file"] == "records.csv" and "column 'x1' is declared numeric but holds String" in why["problem"]
    assert "mg" not in json.dumps(why)


def test_undeclared_column_changing_type_is_quarantined(synthetic_spec, layout):
    land(layout, "synthetic_risk", "b1", synthetic_records(30, seed=1).with_columns(pl.lit(1.5).alias("extra")))
    land(
        layout,
        "synthetic_risk",
        "b2",
        synthetic_records(30, seed=2, start=100).with_columns(pl.lit("high").alias("extra")),
    )
    _, _, records, validation = run_ingestion(synthetic_spec, layout)
    assert records.height == 30
    [failure] = validation.quarantined[0]["failures"]
    assert failure["column"] == "extra"
    assert failure["problem"] == (
        "column 'extra' holds text (String) where the task's validated batches hold decimal numbers (Float64)"
    )
    assert "high" not in json.dumps(validation.quarantined)


def test_a_quarantined_first_batch_does_not_fix_column_types(synthetic_spec, layout):
    """The first batch, text in an undeclared column, fails validation (bad label); the second, numbers in it,
    must not be measured against the first one's types."""
    land(
        layout,
        "synthetic_risk",
        "b1",
        synthetic_records(30, seed=1).with_columns(pl.lit("high").alias("extra"), pl.lit("maybe").alias("outcome")),
    )
    land(
        layout,
        "synthetic_risk",
        "b2",
        synthetic_records(30, seed=2, start=100).with_columns(pl.lit(1.5).alias("extra")),
    )
    _, _, records, validation = run_ingestion(synthetic_spec, layout)
    assert [q["batch"] for q in validation.quarantined] == ["b1"] and validation.validated == ["b2"]
    assert records.height == 30 and records.schema["extra"] == pl.Float64


@pytest.mark.parametrize(
    ("bad_frame", "column", "expectation"),
    [
        (lambda f: f.drop("x2"), "x2", "expect_column_to_exist"),
        (lambda f: pl.concat([f, f.head(3)]), "rid", "expect_column_values_to_be_unique"),
        (lambda f: f.with_columns(pl.lit("maybe").alias("outcome")), "outcome", "expect_column_values_to_be_in_set"),
    ],
    ids=["missing_feature_column", "duplicate_ids", "label_out_of_domain"],
)
def test_bad_batch_is_quarantined_while_good_one_flows(synthetic_spec, layout, bad_frame, column, expectation):
    # The bad batch lands first (sorted name), so the type check meets it in validation, not at append.
    land(layout, "synthetic_risk", "b2_good", synthetic_records(60, seed=1))
    land(layout, "synthetic_risk", "b1_bad", bad_frame(synthetic_records(40, seed=2, start=1000)))
    warehouse, _, records, validation = run_ingestion(synthetic_spec, layout)
    assert set(records["_meddiag_batch"]) == {"b2_good"} and records.height == 60
    assert [q["batch"] for q in validation.quarantined] == ["b1_bad"]
    why = reason(layout, "synthetic_risk", "b1_bad")
    assert any(f["column"] == column and f["expectation"] == expectation for f in why["failures"])
    assert (layout.quarantine("synthetic_risk") / "b1_bad" / "files" / "records.csv").exists()  # moved, not lost
    assert not (layout.landing("synthetic_risk") / "b1_bad").exists()
    counts = reconcile(synthetic_spec, warehouse)
    assert counts["landed_batches"] == counts["validated_batches"] + counts["quarantined_batches"] == 2


def test_reexported_ids_are_quarantined_as_duplicates_across_batches(synthetic_spec, layout):
    frame = synthetic_records(30, seed=1)
    land(layout, "synthetic_risk", "b1", frame)
    run_ingestion(synthetic_spec, layout)
    land(layout, "synthetic_risk", "b2", frame.head(10))
    _, _, records, validation = run_ingestion(synthetic_spec, layout)
    assert records.height == 30 and validation.quarantined[0]["batch"] == "b2"
    failures = reason(layout, "synthetic_risk", "b2")["failures"]
    assert failures[-1]["expectation"] == "ids_unique_across_batches"
    on_ids = [f for f in failures if f["column"] == "rid"]
    assert on_ids and not any(f["examples"] for f in on_ids)  # identifiers are never echoed


def test_unreadable_batch_names_file_and_problem(synthetic_spec, layout):
    land(layout, "synthetic_risk", "b1", raw=b"", filename="records.csv")
    land(layout, "synthetic_risk", "b2", raw=b"rid,outcome\n", filename="export.csv")
    land(layout, "synthetic_risk", "b3", raw=b"PAR1garbage", filename="records.parquet")
    land(layout, "synthetic_risk", "b4", synthetic_records(20, seed=4))
    _, ingest, records, _ = run_ingestion(synthetic_spec, layout)
    problems = {q["batch"]: (q["file"], q["problem"]) for q in ingest.quarantined}
    assert problems["b1"] == ("records.csv", "is empty (zero bytes)")
    assert problems["b2"][0] == "export.csv" and "no rows" in problems["b2"][1]
    assert problems["b3"][0] == "records.parquet" and "cannot be read as parquet" in problems["b3"][1]
    assert records.height == 20
    assert reason(layout, "synthetic_risk", "b1")["problem"] == "is empty (zero bytes)"


def test_batch_is_picked_up_only_when_complete(synthetic_spec, layout):
    land(layout, "synthetic_risk", "half", synthetic_records(5, seed=1), ready=False)
    land(layout, "synthetic_risk", ".copying", synthetic_records(5, seed=1))
    assert ready_batch_dirs(layout.landing("synthetic_risk"), synthetic_spec.landing) == []
    quiet = LandingSpec(ready="quiet", quiet_seconds=30)
    folder = layout.landing("synthetic_risk") / "half"
    assert ready_batch_dirs(layout.landing("synthetic_risk"), quiet) == []
    past = time.time() - 60
    for p in [folder, *folder.iterdir()]:
        os.utime(p, (past, past))
    assert ready_batch_dirs(layout.landing("synthetic_risk"), quiet) == [folder]


def test_symlinked_file_is_refused(synthetic_spec, layout, tmp_path):
    outside = tmp_path / "outside.csv"
    synthetic_records(5, seed=1).write_csv(outside)
    folder = layout.landing("synthetic_risk") / "b1"
    folder.mkdir(parents=True)
    (folder / "records.csv").symlink_to(outside)
    (folder / "_READY").touch()
    _, ingest, _, _ = run_ingestion(synthetic_spec, layout)
    assert "symbolic link" in ingest.quarantined[0]["problem"]
    assert outside.exists()


def test_content_hash_tracks_bytes(synthetic_spec, layout):
    folder = land(layout, "synthetic_risk", "b1", synthetic_records(5, seed=1))
    first = describe_batch("synthetic_risk", folder).content_hash
    (folder / "records.csv").write_text("rid,outcome\nz,yes\n")
    assert describe_batch("synthetic_risk", folder).content_hash != first
    assert describe_batch("synthetic_risk", folder).files == ("records.csv",)


def test_parquet_batches_and_unlabelled_rows(synthetic_spec, layout):
    frame = synthetic_records(30, seed=1).with_columns(
        pl.when(pl.col("rid") == "r3").then(pl.lit("")).otherwise(pl.col("outcome")).alias("outcome")
    )
    land(layout, "synthetic_risk", "b1", frame, filename="records.parquet")
    _, _, records, _ = run_ingestion(synthetic_spec, layout)
    assert records.filter(pl.col("outcome").is_null())["rid"].to_list() == ["r3"]


def test_validation_suite_passes_on_clean_bundled_data(heart_spec):
    from meddiag_pipelines_tests.conftest import bundled_frame

    frame = bundled_frame("heart_disease").with_columns(pl.col("HeartDisease").cast(pl.String))
    assert validate_tabular(frame, heart_spec) == []
    broken = frame.with_columns(pl.when(pl.col("Age") > 70).then(200).otherwise(pl.col("Age")).alias("Age"))
    failures = validate_tabular(broken, heart_spec)
    assert [f.column for f in failures] == ["Age"] and failures[0].unexpected_count > 0
    typed = validate_tabular(frame.with_columns(pl.col("MaxHR").cast(pl.String)), heart_spec)
    assert any(f.expectation == "expect_column_values_to_be_in_type_list" and f.column == "MaxHR" for f in typed)


# -- the ledger and state as add-only objects (issue 15: no lock, no local file another host must see) ----------
def _row(batch_id: str, status: str = "read") -> dict:
    return {
        "batch_id": batch_id,
        "content_hash": "c" * 64,
        "status": status,
        "n_rows": 3,
        "files": ["a.csv"],
        "columns": ["x"],
        "reason": None,
    }


def test_write_once_creates_a_file_only_if_absent(tmp_path):
    from meddiag_pipelines.storage import DataRoot

    root = DataRoot(tmp_path)
    assert root.write_once("a/b.json", b"first") and not root.write_once("a/b.json", b"second")
    assert root.read_bytes("a/b.json") == b"first" and root.list("a") == ["b.json"]  # no temporary file left


def test_racing_writers_record_a_batch_once_and_lose_no_status_change(layout):
    from concurrent.futures import ThreadPoolExecutor

    warehouse = Warehouse(layout)
    with ThreadPoolExecutor(8) as pool:
        added = list(pool.map(lambda i: warehouse.add_batch("t", {**_row("b1"), "n_rows": i}), range(8)))
        assert added.count(True) == 1  # one of the racing runs recorded it; the others were told so
        list(pool.map(lambda i: warehouse.set_status("t", "b1", "validated", {"by": i}), range(8)))
    entries = sorted((layout.warehouse_dir() / "ledger" / "t").rglob("*.json"))
    assert [p.name for p in entries] == [f"{i:06d}.json" for i in range(1, 10)]  # each change its own entry
    assert sorted(json.loads(p.read_text())["reason"]["by"] for p in entries[1:]) == list(range(8))
    [row] = warehouse.ledger("t").iter_rows(named=True)
    assert row["status"] == "validated" and row["n_rows"] == added.index(True) and json.loads(row["files"]) == ["a.csv"]
    warehouse.set_status("t", "unknown", "validated", None)  # a batch the ledger does not hold: nothing written
    assert warehouse.ledger("t").height == 1


def test_a_forgotten_batch_keeps_its_history_and_can_be_recorded_again(layout):
    warehouse = Warehouse(layout)
    assert warehouse.add_batch("t", _row("b1", "quarantined"))
    warehouse.forget_batch("t", "b1")
    assert warehouse.ledger("t").height == 0 and warehouse.add_batch("t", _row("b1"))
    assert warehouse.ledger("t")["status"].to_list() == ["read"]
    assert len(list((layout.warehouse_dir() / "ledger" / "t").rglob("*.json"))) == 3


def test_the_label_domain_is_set_once(layout):
    warehouse = Warehouse(layout)
    assert warehouse.state("t", "label_domain") is None
    assert warehouse.set_state_once("t", "label_domain", '["a"]') == '["a"]'
    assert warehouse.set_state_once("t", "label_domain", '["b"]') == '["a"]' == warehouse.state("t", "label_domain")


def test_the_duckdb_file_is_a_rebuildable_catalog(synthetic_spec, layout):
    import duckdb

    land(layout, "synthetic_risk", "b1", synthetic_records(20, seed=1))
    warehouse, *_ = run_ingestion(synthetic_spec.model_copy(update={"classes": None}), layout)
    with warehouse.connect() as con:
        assert con.execute("SELECT batch_id, status, n_rows FROM ingest_ledger").fetchall() == [("b1", "validated", 20)]
        assert con.execute("SELECT task, key FROM task_state").fetchall() == [("synthetic_risk", "label_domain")]
    layout.warehouse_db().unlink()  # losing the catalog loses no state
    assert warehouse.ledger("synthetic_risk")["status"].to_list() == ["validated"]
    with warehouse.connect() as con:
        assert json.loads(con.execute("SELECT files FROM ingest_ledger").fetchone()[0]) == ["records.csv"]
    with duckdb.connect(str(layout.warehouse_db()), read_only=True) as con:  # a SQL user, as the README says
        con.execute(f"SET file_search_path = '{layout.warehouse_dir()}'")
        assert con.execute("SELECT count(*) FROM ingest_ledger").fetchone() == (1,)


def test_landed_files_named_like_the_quarantines_own_are_kept_intact(synthetic_spec, layout):
    """A landed reason.json, or names like the temporary files of the reason's atomic write (old enough for the
    sweep), are data: quarantined intact beside the quarantine's own reason, never swept or overwritten."""
    folder = land(layout, "synthetic_risk", "b1", synthetic_records(20, seed=1))
    landed = {"reason.json": b'{"landed": 1}', "reason.json.0123456789ab": b"a", ".reason.json.x1.tmp": b"b"}
    for name, data in landed.items():
        (folder / name).write_bytes(data)
        os.utime(folder / name, (time.time() - 7200, time.time() - 7200))
    pipe = land(layout, "synthetic_risk", "b2", synthetic_records(20, seed=2, start=100)) / "reason.json"
    os.mkfifo(pipe)  # set aside on its own before reading: its reason must not replace it
    _, ingest, records, _ = run_ingestion(synthetic_spec, layout)
    kept = layout.quarantine("synthetic_risk") / "b1"
    assert {name: (kept / "files" / name).read_bytes() for name in landed} == landed
    assert "unsupported file type '.json'" in reason(layout, "synthetic_risk", "b1")["problem"]
    assert (layout.quarantine("synthetic_risk") / "b2" / "files" / "reason.json").is_fifo()
    why = json.loads(file_reason(layout.quarantine("synthetic_risk") / "b2", "reason.json").read_text())
    assert why["file"] == "reason.json" and "not a regular file" in why["problem"]
    assert ingest.ingested == ["b2"] and records.height == 20
