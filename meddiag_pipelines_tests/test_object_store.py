"""An S3-compatible data root (issue 15 §4), against moto's S3 server started as a separate process."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from meddiag_pipelines.defs.build import build_definitions
from meddiag_pipelines.registry.store import ModelRegistry
from meddiag_pipelines.storage import DataRoot
from meddiag_pipelines.update import update_task
from meddiag_pipelines_tests.conftest import land, synthetic_records

S3_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server on a free port; stopped by its PID."""
    port = _free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def s3_root(s3_endpoint, tmp_path, monkeypatch) -> str:
    """A fresh bucket on the server, the standard AWS variables pointing at it, a local folder in tmp_path;
    returns the data root's URL."""
    for name, value in zip(S3_ENV, (s3_endpoint, "testing", "testing", "us-east-1"), strict=False):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MEDDIAG_LOCAL_DIR", str(tmp_path / "local"))
    bucket = f"meddiag-{uuid.uuid4().hex[:12]}"
    DataRoot(f"s3://{bucket}").fs.mkdir(bucket)
    return f"s3://{bucket}/root"


def test_round_trips_go_to_the_bucket(s3_root, tmp_path):
    root = DataRoot(s3_root)
    assert root.remote and root.local.is_relative_to(tmp_path / "local")
    frame = pl.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    root.write_parquet("t/one.parquet", frame, metadata={"batch": "b1"})
    root.write_json("t/v.json", {"k": [1, 2]})
    root.write_bytes("t/.hidden", b"leftover")
    assert root.read_parquet("t/one.parquet").equals(frame) and root.parquet_width("t/one.parquet") == 2
    assert root.read_json("t/v.json") == {"k": [1, 2]}
    assert root.list("t") == ["one.parquet", "v.json"] and root.list("absent") == []
    assert root.exists("t/v.json") and not root.exists("t/w.json")
    assert root.fs.exists(s3_root[len("s3://") :] + "/t/one.parquet")
    assert [p for p in (tmp_path / "local").rglob("*") if p.is_file()] == []  # nothing written locally
    with pytest.raises(ValueError, match="resolves outside the data folder"):
        root.key("../outside")


def test_write_once_creates_only_if_absent(s3_root):
    root = DataRoot(s3_root)
    assert root.write_once("ledger/entry.json", b"first")
    assert not root.write_once("ledger/entry.json", b"second")
    assert root.read_bytes("ledger/entry.json") == b"first"


def test_write_once_on_a_local_root(tmp_path):
    root = DataRoot(tmp_path)
    assert root.write_once("a/entry.json", b"first") and not root.write_once("a/entry.json", b"second")
    assert (tmp_path / "a" / "entry.json").read_bytes() == b"first"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["entry.json"]  # no temporary file left


def _staged(root: DataRoot, name: str) -> Path:
    staged = root.path(f"models/t/.staging/{name}")
    (staged / "model").mkdir(parents=True)
    (staged / "model" / "weights.json").write_text("{}")
    (staged / "manifest.json").write_text(f'{{"version": "{name}"}}')
    return staged


def test_publish_dir_uploads_the_manifest_last_and_never_twice(s3_root, monkeypatch):
    root = DataRoot(s3_root)
    order = []
    put_file, pipe_file = root.fs.put_file, root.fs.pipe_file
    monkeypatch.setattr(
        root.fs,
        "put_file",
        lambda lpath, rpath, **kw: (order.append(Path(rpath).name), put_file(lpath, rpath, **kw))[1],
    )
    monkeypatch.setattr(
        root.fs, "pipe_file", lambda path, data, **kw: (order.append(Path(path).name), pipe_file(path, data, **kw))[1]
    )
    staged = _staged(root, "v1")
    root.publish_dir(staged, "models/t/v1")
    assert order == ["weights.json", "manifest.json"] and not staged.exists()
    assert root.read_json("models/t/v1/manifest.json") == {"version": "v1"}
    with pytest.raises(FileExistsError, match="immutable"):
        root.publish_dir(_staged(root, "v1"), "models/t/v1")
    assert root.read_bytes("models/t/v1/model/weights.json") == b"{}"


def test_local_dir_downloads_once_into_a_cache(s3_root):
    root = DataRoot(s3_root)
    root.publish_dir(_staged(root, "v1"), "models/t/v1")
    first = root.local_dir("models/t/v1/model")
    assert (first / "weights.json").read_text() == "{}" and first.is_relative_to(root.local)
    root.fs.rm(root.key("models/t/v1/model/weights.json"))  # a second call must not fetch again
    assert root.local_dir("models/t/v1/model") == first and (first / "weights.json").exists()
    with pytest.raises(FileNotFoundError, match="models/t/v2/model: no such folder in the data root"):
        root.local_dir("models/t/v2/model")


def test_registry_in_the_bucket(s3_root):
    registry = ModelRegistry(DataRoot(s3_root))
    staged = registry.staging_dir("t", "v1")
    (staged / "model").mkdir()
    (staged / "model" / "weights.json").write_text("{}")
    assert registry.versions("t") == []  # staged is not published
    registry.publish("t", "v1", {"fingerprint": "f1"})
    registry.set_champion("t", "v1", "first")
    assert registry.versions("t") == ["v1"] and registry.tasks() == ["t"]
    assert registry.champion("t")["version"] == "v1" and registry.version_with_fingerprint("t", "f1") == "v1"
    assert registry.root.exists("models/t/champion.json") and not staged.exists()
    assert (registry.version_dir("t", "v1") / "model" / "weights.json").exists()


@pytest.mark.slow
def test_a_tabular_task_on_an_s3_data_root(s3_root, tmp_path, synthetic_spec, monkeypatch):
    """Models, reports, tables, raw records, the ledger, predictions and quarantine land in the bucket; on local
    disk only what must be local (landing, the DuckDB catalog, the model cache); a bad batch landed in the bucket's
    landing prefix is quarantined there; the champion scores a new batch."""
    monkeypatch.setenv("MEDDIAG_DATA_DIR", s3_root)
    task = synthetic_spec.name
    root = DataRoot(s3_root)
    layout = DataRoot(root.local)  # landing is local (copied there from a landing prefix, if any)
    land(layout, task, "b1", synthetic_records(200, seed=1))
    bad = synthetic_records(20, seed=3, start=500).with_columns(pl.lit("maybe").alias("outcome"))
    root.write_bytes(f"landing/{task}/b2/records.csv", bad.write_csv().encode())  # landed in the store's prefix
    root.write_bytes(f"landing/{task}/b2/_READY", b"")
    defs = build_definitions([synthetic_spec])
    with dg.instance_for_test() as instance:
        update_task(synthetic_spec, instance, defs=defs)
        champion = ModelRegistry(root).champion(task)
        land(
            layout,
            task,
            "b3",
            synthetic_records(6, seed=4, start=900).with_columns(pl.lit(None, pl.String).alias("outcome")),
        )
        update_task(synthetic_spec, instance, defs=defs)

    assert champion is not None and ModelRegistry(root).versions(task) == [champion["version"]]
    version = champion["version"]
    for rel in (
        f"models/{task}/{version}/manifest.json",
        f"models/{task}/{version}/report.html",
        f"reports/{task}/latest/metrics.json",
        f"quarantine/{task}/b2/reason.json",
        f"quarantine/{task}/b2/files/records.csv",
    ):
        assert root.exists(rel), rel
    assert root.read_json(f"reports/{task}/latest.json")["version_dir"] == f"models/{task}/{version}"
    assert root.list(f"warehouse/tables/{task}") == ["features", "split", "validated_records"]
    assert len(root.list(f"warehouse/ledger/{task}")) == 3 and root.list(f"warehouse/raw_records/{task}")
    scored = root.read_parquet(f"predictions/{task}/b3/{version}.parquet")
    assert scored.height == 6 and scored["model_version"].unique().to_list() == [version]
    local = {p.relative_to(root.local).parts[0] for p in root.local.rglob("*") if p.is_file()}
    assert local <= {"landing", "warehouse", ".objects"}, local
    assert {p.name for p in (root.local / "warehouse").glob("*")} <= {"meddiag.duckdb"}  # at most the catalog
    assert not (layout.landing(task) / "b2").exists() and root.list(f"landing/{task}") == []  # moved, not copied


def test_batches_landed_in_the_store_move_to_the_local_landing_folder(s3_root, tmp_path):
    root = DataRoot(s3_root)
    root.write_bytes("landing/t/b1/records.csv", b"a,b\n1,2\n")
    root.write_bytes("landing/t/b1/sub/more.csv", b"a,b\n3,4\n")
    root.write_bytes("landing/t/b1/_READY", b"")
    root.write_bytes("landing/t/b2/records.csv", b"a,b\n5,6\n")  # not complete yet
    local = tmp_path / "landing"
    assert root.take_ready_folders("landing/t", local, "_READY", 60) == ["b1"]
    assert (local / "b1" / "sub" / "more.csv").read_bytes() == b"a,b\n3,4\n" and (local / "b1" / "_READY").exists()
    assert not root.exists("landing/t/b1/records.csv") and root.exists("landing/t/b2/records.csv")
    assert sorted(p.name for p in local.iterdir()) == ["b1"]  # no in-flight copy left
    root.write_bytes("landing/t/b1/records.csv", b"a,b\n7,8\n")  # re-landed under a known name: stays in the store
    root.write_bytes("landing/t/b1/_READY", b"")
    assert root.take_ready_folders("landing/t", local, "_READY", 60) == []
    assert root.exists("landing/t/b1/records.csv") and (local / "b1" / "records.csv").read_bytes() == b"a,b\n1,2\n"
    assert root.take_ready_folders("landing/t", local, None, 0) == ["b2"]  # quiet mode: nothing newer than 0 s


def test_a_store_batch_naming_a_file_outside_itself_stays_in_the_store(s3_root, tmp_path, caplog):
    root = DataRoot(s3_root)
    root.fs.pipe_file(f"{root.base}/landing/t/b1/sub/../../../secret-name.csv", b"a\n1\n")
    root.write_bytes("landing/t/b1/_READY", b"")
    listed = root.fs.find(root.key("landing/t"))
    assert root.take_ready_folders("landing/t", tmp_path / "landing", "_READY", 60) == [], listed
    assert not (tmp_path / "landing").exists() and not (tmp_path / "secret-name.csv").exists()
    assert root.exists("landing/t/b1/_READY") and "climbs out of the batch" in caplog.text
    assert "secret-name" not in caplog.text


def test_duckdb_reads_the_store_through_a_registered_filesystem(s3_root):
    """What a SQL user does instead of the views (none over an object store): offline, no httpfs extension."""
    import duckdb

    root = DataRoot(s3_root)
    for batch, n in (("b1", 2), ("b2", 3)):
        root.write_parquet(f"warehouse/tables/t/split/{batch}/run.parquet", pl.DataFrame({"a": list(range(n))}))
    con = duckdb.connect()
    con.register_filesystem(root.fs)
    assert con.execute(
        f"select count(*) from read_parquet('{s3_root}/warehouse/tables/t/split/*/*.parquet')"
    ).fetchone() == (5,)


def test_a_refused_series_folder_goes_to_the_stores_quarantine_whole(s3_root):
    from meddiag_pipelines.ingestion.quarantine import quarantine_file

    root = DataRoot(s3_root)
    batch = root.landing("t") / "b1"
    (batch / "series_1").mkdir(parents=True)
    for i in range(3):
        (batch / "series_1" / f"slice_{i}.dcm").write_bytes(bytes([i]) * 8)
    folder = root.quarantine("t") / "b1"
    where = quarantine_file(batch, "series_1", folder, {"problem": "mixed slice sizes"}, root.object_store())
    assert where == "quarantine/t/b1/files/series_1" and not (batch / "series_1").exists()
    assert [root.read_bytes(f"{where}/slice_{i}.dcm") for i in range(3)] == [bytes([i]) * 8 for i in range(3)]
    assert root.read_json("quarantine/t/b1/reasons/series_1/reason.json") == {"problem": "mixed slice sizes"}
