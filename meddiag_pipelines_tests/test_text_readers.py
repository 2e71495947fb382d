"""Text readers: every format, bad files rejected with a clear problem, PHI scrubbed at read."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from meddiag_pipelines.specs import TaskSpec
from meddiag_pipelines.text.readers import MAX_TEXT_CHARS, read_text_batch

SPEC = TaskSpec(name="notes", modality="text", label="dx", text="note", id="nid", patient_id="pid", subgroups=["site"])
CANARIES = ["555-867-5309", "123-45-6789", "03/14/2023", "jdoe@example.org", "MRN 7654321".split()[1]]
PHI_NOTE = "Pt seen 03/14/2023 by Dr. Quimby. Call 555-867-5309. SSN 123-45-6789. MRN 7654321. jdoe@example.org"


def _assert_no_canary(df: pl.DataFrame) -> None:
    blob = "\n".join(t for t in df["text"].to_list() if t)
    for canary in [*CANARIES, "Quimby"]:
        assert canary not in blob


def test_csv_parquet_jsonl_in_one_batch(tmp_path: Path):
    rows = {
        "nid": ["a1", "a2"],
        "pid": ["p1", "p2"],
        "site": ["x", "y"],
        "dx": ["mi", ""],
        "note": [PHI_NOTE, "chest pain, 5 mg"],
    }
    pl.DataFrame(rows).write_csv(tmp_path / "one.csv")
    pl.DataFrame({**rows, "nid": ["b1", "b2"]}).write_parquet(tmp_path / "two.parquet")
    lines = [
        json.dumps({"nid": 3, "pid": "p3", "dx": "hf", "note": PHI_NOTE}),
        "",
        json.dumps({"nid": "c4", "note": "no label here"}),
    ]
    (tmp_path / "three.jsonl").write_text("\n".join(lines), encoding="utf-8")
    (tmp_path / "_READY").write_text("")
    res = read_text_batch(tmp_path, SPEC)
    assert res.rejected == []
    df = res.records
    assert df.columns == ["id", "label", "patient_id", "site", "text"]
    assert sorted(df["id"].to_list()) == ["3", "a1", "a2", "b1", "b2", "c4"]
    assert df.filter(pl.col("id") == "a2")["label"].item() is None  # empty label = unlabelled
    assert df.filter(pl.col("id") == "c4")["label"].item() is None  # no label key = unlabelled
    assert df.filter(pl.col("id") == "c4")["patient_id"].item() is None
    assert "[DATE]" in df.filter(pl.col("id") == "a1")["text"].item()
    assert df.filter(pl.col("id") == "a2")["text"].item() == "chest pain, 5 mg"
    _assert_no_canary(df)
    assert sorted(res.files_read) == ["one.csv", "three.jsonl", "two.parquet"]


def test_txt_folder_with_labels(tmp_path: Path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "n1.txt").write_text(PHI_NOTE, encoding="utf-8")
    (folder / "n2.txt").write_bytes(b"\xef\xbb\xbfBOM note about asthma")
    (folder / "n3.txt").write_bytes("Fièvre, température élevée".encode("latin-1"))
    (folder / "stray.txt").write_text("not named", encoding="utf-8")
    (folder / "labels.csv").write_text(
        "file,label,pid\nn1.txt,mi,p1\nn2.txt,,p2\nn3.txt,flu,p3\nmissing.txt,x,p4\n", encoding="utf-8"
    )
    res = read_text_batch(tmp_path, SPEC)
    df = res.records.sort("id")
    assert df["id"].to_list() == ["n1", "n2"]
    assert df["label"].to_list() == ["mi", None]
    assert df["text"][1] == "BOM note about asthma"
    _assert_no_canary(df)
    problems = dict(res.rejected)
    # a bad file is rejected as itself; a row naming a file that is not there is a problem of labels.csv
    assert set(problems) == {"notes/n3.txt", "notes/labels.csv", "notes/stray.txt"}
    assert "not valid UTF-8" in problems["notes/n3.txt"]
    assert "row 5 names a file that cannot be used: file listed but not found" in problems["notes/labels.csv"]
    assert "labels.csv" in problems["notes/stray.txt"]
    assert sorted(res.files_read) == ["notes/labels.csv", "notes/n1.txt", "notes/n2.txt"]


def test_bad_jsonl_line_rejects_the_file_with_its_line_number(tmp_path: Path):
    good = json.dumps({"nid": "1", "dx": "mi", "note": "fine"})
    (tmp_path / "bad.jsonl").write_text(good + "\n{not json\n" + good + "\n", encoding="utf-8")
    (tmp_path / "arr.jsonl").write_text(good + "\n[1, 2]\n", encoding="utf-8")
    (tmp_path / "ok.jsonl").write_text(json.dumps({"nid": "9", "dx": "hf", "note": "ok text"}) + "\n", encoding="utf-8")
    res = read_text_batch(tmp_path, SPEC)
    problems = dict(res.rejected)
    assert "line 2" in problems["bad.jsonl"] and "bad.jsonl" in problems["bad.jsonl"]
    assert "line 2" in problems["arr.jsonl"]
    assert res.records["id"].to_list() == ["9"]


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("latin1.csv", "nid,dx,note\n1,mi,Fièvre élevée\n".encode("latin-1"), "not valid UTF-8"),
        ("utf16.csv", "nid,dx,note\n1,mi,fever\n".encode("utf-16"), "UTF-16"),
        ("utf16.jsonl", '{"nid": "1", "note": "x"}\n'.encode("utf-16-le"), "UTF-16"),
        ("empty.csv", b"", "is empty"),
        ("blank.jsonl", b"\n\n", "is empty"),
        ("header.csv", b"nid,dx,note\n", "no rows"),
        ("nocol.csv", b"nid,dx\n1,mi\n", "lacks the column"),
        ("ragged.csv", b'nid,dx,note\n1,mi,"unterminated\n', "not a readable CSV"),
        ("empty.parquet", b"", "is empty"),
        ("junk.parquet", b"PAR1 not really", "not a readable Parquet"),
        ("notes.docx", b"PK..", "unsupported format"),
        ("orphan.txt", b"free text", "labels.csv"),
    ],
)
def test_bad_files_are_rejected_not_raised(tmp_path: Path, name: str, data: bytes, expected: str):
    (tmp_path / name).write_bytes(data)
    (tmp_path / "good.csv").write_text("nid,dx,note\nok,mi,chest pain\n", encoding="utf-8")
    res = read_text_batch(tmp_path, SPEC)
    assert res.records["id"].to_list() == ["ok"]
    assert len(res.rejected) == 1
    path, problem = res.rejected[0]
    assert path == name and name in problem and expected in problem, problem


def test_utf8_bom_csv_and_unlabelled_rows(tmp_path: Path):
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbfnid,note\nu1,to score 1\nu2,to score 2\n")
    res = read_text_batch(tmp_path, SPEC)
    assert res.rejected == []
    assert res.records["label"].to_list() == [None, None]
    assert res.records["id"].to_list() == ["u1", "u2"]


def test_huge_text_is_truncated_and_counted(tmp_path: Path):
    big = ("word " * 30_000) + " call 555-867-5309"
    (tmp_path / "big.jsonl").write_text(json.dumps({"nid": "1", "dx": "a", "note": big}) + "\n", encoding="utf-8")
    (tmp_path / "small.jsonl").write_text(json.dumps({"nid": "2", "dx": "a", "note": "short"}) + "\n", encoding="utf-8")
    res = read_text_batch(tmp_path, SPEC)
    assert res.truncated == 1
    lengths = dict(zip(res.records["id"], res.records["text"].str.len_chars(), strict=True))
    assert lengths == {"1": MAX_TEXT_CHARS, "2": 5}


def test_empty_batch_has_the_schema(tmp_path: Path):
    res = read_text_batch(tmp_path, SPEC)
    assert res.records.height == 0 and res.rejected == []
    assert res.records.columns == ["id", "label", "patient_id", "site", "text"]


def test_bundled_icd10_batch_reads_clean():
    from meddiag_pipelines.specs import load_spec

    root = Path(__file__).resolve().parents[1]
    spec = load_spec(root / "meddiag_pipelines" / "tasks" / "icd10_chapters.yaml")
    batch = root / "data" / "landing" / "icd10_chapters" / "batch_0001"
    assert (batch / "_READY").exists()
    assert (batch / "records.csv").stat().st_size < 2_000_000
    res = read_text_batch(batch, spec)
    assert res.rejected == [] and res.truncated == 0
    df = res.records
    assert df.height == 17_701 and df["label"].n_unique() == 21
    assert df["id"].n_unique() == df.height
    assert (df["patient_id"] == df["id"].str.slice(0, 3)).all()
    raw = pl.read_csv(batch / "records.csv", infer_schema=False)
    assert (raw["description"] == df["text"]).all()  # scrubbing leaves ICD-10 descriptions intact


# -- issue 24: binary text columns, a repeated header, CR-only line endings ------------------------------------
def _parquet(path: Path, columns: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)


def test_a_parquet_binary_text_column_is_decoded_as_utf8(tmp_path: Path):
    import pyarrow as pa

    _parquet(
        tmp_path / "notes.parquet",
        {
            "nid": ["a1", "a2"],
            "dx": pa.array([b"mi", b"hf"], pa.binary()),
            "note": pa.array([b"chest pain, 5 mg", "fièvre".encode()], pa.binary()),
        },
    )
    res = read_text_batch(tmp_path, SPEC)
    assert res.rejected == [] and res.records.sort("id")["text"].to_list() == ["chest pain, 5 mg", "fièvre"]
    assert res.records.sort("id")["label"].to_list() == ["mi", "hf"]


def test_a_parquet_binary_text_column_that_is_not_utf8_rejects_its_file_naming_the_column(tmp_path: Path):
    import pyarrow as pa

    _parquet(tmp_path / "notes.parquet", {"nid": ["a1", "a2"], "note": pa.array([b"Zqx \xff\xfe", b"ok"], pa.binary())})
    res = read_text_batch(tmp_path, SPEC)
    [(rel, problem)] = res.rejected
    assert rel == "notes.parquet" and "column 'note' holds binary values that are not UTF-8 text" in problem
    assert "Zqx" not in problem and res.records.is_empty()


@pytest.mark.parametrize("header", ["nid,note,dx,dx", "nid,note,dx,DX,note"])
def test_a_repeated_column_name_rejects_the_file_naming_the_column(tmp_path: Path, header: str):
    width = header.count(",") + 1
    row = ",".join(["a1", "chest pain", "mi", "hf", "x"][:width])
    (tmp_path / "notes.csv").write_text(f"{header}\n{row}\n", encoding="utf-8")
    res = read_text_batch(tmp_path, SPEC)
    [(rel, problem)] = res.rejected
    repeated = "dx" if header.endswith("dx,dx") else "note"
    assert rel == "notes.csv" and f"repeats the column name {repeated!r}" in problem and res.records.is_empty()


def test_a_repeated_column_name_in_labels_csv_rejects_it(tmp_path: Path):
    (tmp_path / "n1.txt").write_text("chest pain", encoding="utf-8")
    (tmp_path / "labels.csv").write_text("file,label,label\nn1.txt,mi,hf\n", encoding="utf-8")
    res = read_text_batch(tmp_path, SPEC)
    assert ("labels.csv" in dict(res.rejected)) and "repeats the column name 'label'" in dict(res.rejected)[
        "labels.csv"
    ]
    assert res.records.is_empty()


def test_cr_only_line_endings_read(tmp_path: Path):
    (tmp_path / "notes.csv").write_bytes(b"nid,note,dx\ra1,chest pain,mi\ra2,cough,hf\r")
    res = read_text_batch(tmp_path, SPEC)
    assert res.rejected == [] and res.records.sort("id")["text"].to_list() == ["chest pain", "cough"]
