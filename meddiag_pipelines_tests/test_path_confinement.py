"""A labels.csv row is data, never a file operation: rows naming files outside their batch (``..``, absolute
paths, links) are rejected rows with a reason, and every file outside the batch is byte-identical afterwards."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from meddiag_pipelines.imaging.modality import read_image_records
from meddiag_pipelines.ingestion.batches import ReadOutcome, ingest_new_batches
from meddiag_pipelines.ingestion.landing import UnsafePath, confined_file
from meddiag_pipelines.ingestion.warehouse import Warehouse
from meddiag_pipelines.specs import TaskSpec
from meddiag_pipelines.storage import DataRoot
from meddiag_pipelines.text.readers import read_text_batch


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)).save(buffer, format="PNG")
    return buffer.getvalue()


def _snapshot(root: Path, batch_dir: Path) -> dict[str, str]:
    """sha256 of every regular file under ``root`` outside the batch and the task's own outputs (the
    warehouse, which ingestion appends to, and the quarantine the batch's own files go to)."""
    out = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and not path.is_relative_to(batch_dir):
            if not {"quarantine", "warehouse"} & set(path.relative_to(root).parts):
                out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _victims(tmp_path: Path, layout: DataRoot) -> tuple[Path, Path]:
    outside = tmp_path / "outside" / "root.txt"
    outside.parent.mkdir(parents=True)
    outside.write_text("not the pipeline's to touch\n")
    db = layout.warehouse_db()
    db.parent.mkdir(parents=True, exist_ok=True)
    return outside, db


def _hostile_labels(batch_dir: Path, outside: Path, first_file: str) -> None:
    rows = [
        "file,label,id",
        f"{first_file},0,a",
        f"{outside},1,v",
        "../../../warehouse/meddiag.duckdb,1,w",
        "../sibling_batch/x.png,1,x",
        "link_out,1,y",
    ]
    (batch_dir / "labels.csv").write_text("\n".join(rows) + "\n")
    (batch_dir / "link_out").symlink_to(outside)


def _run(spec: TaskSpec, layout: DataRoot, reader) -> tuple[dict, dict, list]:
    warehouse = Warehouse(layout)
    batch_dir = layout.landing(spec.name) / "b1"
    before = _snapshot(layout.local.parent, batch_dir)
    summary = ingest_new_batches(spec, layout, warehouse, reader)
    return before, _snapshot(layout.local.parent, batch_dir), summary.quarantined


def test_image_labels_rows_pointing_outside_move_nothing(tmp_path: Path):
    layout = DataRoot(tmp_path / "data")
    spec = TaskSpec(
        name="hostile_images",
        modality="image",
        label="label",
        id="id",
        classes=["0", "1"],
        positive="1",
        image={"format": "folder"},
    )
    outside, _ = _victims(tmp_path, layout)
    with Warehouse(layout).connect():  # the catalog file exists before the hostile batch is read
        pass
    batch_dir = layout.landing(spec.name) / "b1"
    batch_dir.mkdir(parents=True)
    (batch_dir / "a.png").write_bytes(_png())
    sibling = layout.landing(spec.name) / "sibling_batch"
    sibling.mkdir()
    (sibling / "x.png").write_bytes(_png())
    _hostile_labels(batch_dir, outside, "a.png")
    (batch_dir / "_READY").touch()
    before, after, quarantined = _run(spec, layout, read_image_records)
    assert before == after, "a file outside the batch changed"
    assert outside.read_text() == "not the pipeline's to touch\n"
    assert layout.warehouse_db().is_file() and not (layout.warehouse_db() / "reason.json").exists()
    assert (sibling / "x.png").is_file()
    assert not (outside.parent / "root.txt" / "reason.json").exists()
    problems = {q["file"]: q["problem"] for q in quarantined}
    # a path that names no file of the batch is a rejected row, named by its number (the path is a cell value)
    assert "absolute path" in problems["labels.csv row 2"] and "escapes" in problems["labels.csv row 3"]
    assert "symbolic link" in problems["link_out"]
    for file, problem in problems.items():
        assert "not the pipeline's" not in problem and "warehouse" not in file and str(outside) not in file


def test_text_labels_rows_pointing_outside_move_nothing(tmp_path: Path):
    layout = DataRoot(tmp_path / "data")
    spec = TaskSpec(name="hostile_notes", modality="text", text="note", label="label", id="id")
    outside, _ = _victims(tmp_path, layout)
    with Warehouse(layout).connect():
        pass
    batch_dir = layout.landing(spec.name) / "b1"
    batch_dir.mkdir(parents=True)
    (batch_dir / "a.txt").write_text("Chest pain on exertion, relieved by rest.")
    _hostile_labels(batch_dir, outside, "a.txt")
    (batch_dir / "_READY").touch()

    def reader(batch, spec):
        result = read_text_batch(batch.path, spec)
        return ReadOutcome(result.records, list(result.rejected))

    before, after, quarantined = _run(spec, layout, reader)
    assert before == after, "a file outside the batch changed"
    assert outside.read_text() == "not the pipeline's to touch\n"
    assert layout.warehouse_db().is_file() and not (layout.warehouse_db() / "reason.json").exists()
    assert quarantined, "the rows naming files outside the batch are reported"


@pytest.mark.parametrize(
    ("rel", "problem"),
    [
        ("../x", "escapes the batch folder"),
        ("/etc/passwd", "absolute path"),
        ("a/../../x", "escapes the batch folder"),
        ("", "empty file name"),
        (" a.png", "surrounding spaces"),
        ("a\\b", "backslash"),
        ("link/x.png", "symbolic link"),
    ],
)
def test_confined_file_refuses_names_that_leave_the_batch(tmp_path: Path, rel: str, problem: str):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "link").symlink_to(tmp_path)
    (tmp_path / "x.png").write_bytes(b"x")
    with pytest.raises(UnsafePath, match=problem):
        confined_file(tmp_path / "b", rel)


def test_confined_file_refuses_a_fifo(tmp_path: Path):
    import os

    os.mkfifo(tmp_path / "labels.csv")
    with pytest.raises(UnsafePath, match="regular file"):
        confined_file(tmp_path, "labels.csv")
