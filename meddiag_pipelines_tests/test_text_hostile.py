"""Hostile text batches (issue 13): a malformed file is rejected in plain words that never quote its content
(the parser's own message does), paths are confined, non-regular files are never opened, and the good file
beside a bad one still flows. Canaries planted in the raw note text must not reach a rejection, the ledger,
a reason.json, the Dagster event log or storage, or the captured log and console output."""

from __future__ import annotations

import io
import json
import os
import signal
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from meddiag_pipelines.defs.build import build_definitions
from meddiag_pipelines.ingestion.warehouse import Warehouse
from meddiag_pipelines.specs import TaskSpec
from meddiag_pipelines.text.readers import read_text_batch
from meddiag_pipelines.update import run_task_in_process
from meddiag_pipelines_tests.test_text_pipeline import _strings_of_duckdb, _strings_of_parquet

CANARY = "Ottoline Farthingale QX7741Z"
SPEC = TaskSpec(
    name="hostile_notes", modality="text", label="dx", text="note", id="nid", classes=["mi", "hf"], min_text_chars=3
)
GOOD = "nid,dx,note\ngood1,mi,chest pain on exertion\n"
WORD_DATE = "the twenty-third of September, nineteen thirty-one"  # issue 24: a date in words reached the warehouse


class ReaderBlocked(BaseException):
    """Raised by the alarm when a read blocks (on a FIFO) instead of refusing it."""


def _parquet_bytes(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return buffer.getvalue()


CANARY_PARQUET = _parquet_bytes(pl.DataFrame({"nid": ["1"], "dx": ["mi"], "note": [CANARY * 20]}))
# (file, bytes, rejected rel, words expected in the problem)
HOSTILE = [
    (
        "open_quote.csv",
        f'nid,dx,note\n1,mi,fine text\n2,mi,"{CANARY} never closed\n3,mi,more {CANARY}\n',
        "open_quote.csv",
        "line 3: a quoted field is never closed (truncated file?)",
    ),
    ("after_quote.csv", f'nid,dx,note\n1,mi,"{CANARY}"x\n', "after_quote.csv", "line 2: text follows a closing quote"),
    ("ragged.csv", f"nid,dx,note\n1,mi,fine,{CANARY}\n", "ragged.csv", "line 2 has 4 fields, the header row has 3"),
    ("headerless.csv", f"1,mi,{CANARY} seen today\n", "headerless.csv", "lacks the column(s) ['nid', 'note']"),
    (
        "open_string.jsonl",
        f'{{"nid": "1", "note": "{CANARY} unterminated\n',
        "open_string.jsonl",
        "line 1 is not valid JSON: a string is never closed",
    ),
    (
        "extra.jsonl",
        f'{{"nid": "1", "note": "ok"}} {CANARY}\n',
        "extra.jsonl",
        "line 1 is not valid JSON: more than one",
    ),
    ("deep.jsonl", "[" * 200_000 + CANARY, "deep.jsonl", "line 1 is nested too deeply"),
    ("surrogate.jsonl", f'{{"nid": "1", "note": "{CANARY} \\ud800"}}\n', "surrogate.jsonl", "lone surrogate"),
    ("bigint.jsonl", f'{{"nid": 1{"1" * 5000}, "note": "{CANARY}"}}\n', "bigint.jsonl", "a number is too long"),
    ("cut.parquet", CANARY_PARQUET[: len(CANARY_PARQUET) // 2], "cut.parquet", "not a readable Parquet file"),
    ("fake.parquet", b"PAR1" + CANARY.encode() * 30 + b"PAR1", "fake.parquet", "not a readable Parquet file"),
    ("notes/labels.csv", f'file,dx\na.txt,"{CANARY}\n', "notes/labels.csv", "line 2: a quoted field is never closed"),
    ("latin/n1.txt", f"Fièvre {CANARY}".encode("latin-1"), "latin/n1.txt", "not valid UTF-8"),
]


def _write(batch: Path, name: str, data: str | bytes) -> None:
    path = batch / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


@pytest.mark.parametrize(("name", "data", "rel", "words"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_malformed_file_is_rejected_without_quoting_it(tmp_path: Path, name, data, rel, words):
    _write(tmp_path, name, data)
    if name.startswith("notes/"):
        _write(tmp_path, "notes/a.txt", "a note about chest pain")
    if name.startswith("latin/"):
        _write(tmp_path, "latin/labels.csv", "file,dx\nn1.txt,mi\n")
    _write(tmp_path, "good.csv", GOOD)
    res = read_text_batch(tmp_path, SPEC)
    assert res.records["id"].to_list() == ["good1"]
    problems = dict(res.rejected)
    assert rel in problems and words in problems[rel] and problems[rel].startswith(rel), problems
    assert not any(CANARY[:9] in p or CANARY[-7:] in p for p in problems.values()), problems
    assert "good.csv" in res.files_read and rel not in res.files_read


def test_labels_rows_are_problems_of_labels_csv_and_files_are_files(tmp_path: Path):
    notes = tmp_path / "notes"
    _write(tmp_path, "notes/a.txt", "first note text")
    _write(tmp_path, "notes/b.txt", "second note text")
    _write(tmp_path, "notes/sub/c.txt", "third note text")
    _write(tmp_path, "notes/_hidden.txt", "a marker-like file")
    _write(tmp_path, "outside.txt", "beside the folder")
    (notes / "link.txt").symlink_to(tmp_path / "outside.txt")
    rows = [
        "file,dx,nid",
        "a.txt,mi,a",
        "../outside.txt,mi,o",
        "/etc/passwd,mi,p",
        "link.txt,mi,l",
        "a.txt,mi,a2",
        ",mi,e",
        "missing.txt,mi,m",
        "_hidden.txt,mi,h",
        "sub/c.txt,hf,c",
        "b.txt,mi,",
        "sub,mi,d",
    ]
    _write(tmp_path, "notes/labels.csv", "\n".join(rows) + "\n")
    os.mkfifo(notes / "fifo.txt")
    res = read_text_batch(tmp_path, SPEC)
    assert sorted(res.records["id"].to_list()) == ["a", "c"]
    problems = dict(res.rejected)
    assert set(problems) == {"notes/labels.csv", "notes/link.txt", "notes/fifo.txt", "notes/b.txt", "outside.txt"}
    labels = problems["notes/labels.csv"]
    assert labels.startswith("notes/labels.csv: 8 rows cannot be used:")
    for expected in [
        "row 3 names a file that cannot be used: path escapes the batch folder",
        "row 4 names a file that cannot be used: absolute path",
        "row 6 names a file an earlier row",
        "row 7 has no file name",
        "row 8 names a file that cannot be used: file listed but not found",
        "row 9 names a hidden or marker file",
        "row 11 has an empty 'nid'",
        "row 12 names a file that cannot be used: not a regular file",
    ]:
        assert expected in labels, labels
    assert "passwd" not in labels and "outside" not in labels
    assert "symbolic link refused" in problems["notes/link.txt"]  # a listed entry: rejected as the file it is
    assert "not a regular file" in problems["notes/fifo.txt"]
    assert "no readable labels.csv names" in problems["notes/b.txt"]  # its row was unusable
    assert sorted(res.files_read) == ["notes/a.txt", "notes/labels.csv", "notes/sub/c.txt"]


@pytest.mark.parametrize("name", ["notes.jsonl", "records.csv", "labels.csv", "x.parquet"])
def test_a_fifo_never_blocks_the_reader(tmp_path: Path, name: str):
    os.mkfifo(tmp_path / name)
    _write(tmp_path, "good.csv", GOOD)
    if name == "labels.csv":
        _write(tmp_path, "a.txt", "a note that a FIFO labels.csv would describe")

    def hang(*_):
        raise ReaderBlocked  # not an Exception: no handler in the reader can swallow it and block again

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(20)
    try:
        res = read_text_batch(tmp_path, SPEC)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert res.records["id"].to_list() == ["good1"]
    assert "not a regular file" in dict(res.rejected)[name]


@pytest.mark.parametrize(("raw", "canonical"), [("1", "1"), ("1.0", "1"), ("true", "1"), ("01", "01")])
def test_labels_are_canonical_in_every_format(tmp_path: Path, raw: str, canonical: str):
    spec = TaskSpec(name="binary_notes", modality="text", label="dx", text="note", id="nid", positive="1")
    _write(tmp_path, "a.csv", f"nid,dx,note\nc,{raw},some text\n")
    json_value = {"1": 1, "1.0": 1.0, "true": True, "01": "01"}[raw]
    _write(tmp_path, "b.jsonl", json.dumps({"nid": "j", "dx": json_value, "note": "some text"}) + "\n")
    parquet_value = pl.Series("dx", [json_value])
    _write(
        tmp_path,
        "c.parquet",
        _parquet_bytes(pl.DataFrame({"nid": ["p"], "note": ["some text"]}).with_columns(parquet_value)),
    )
    res = read_text_batch(tmp_path, spec)
    assert res.rejected == []
    assert res.records.sort("id")["label"].to_list() == [canonical] * 3


def test_no_canary_leaves_the_reader_through_ingestion_logs_or_dagster(tmp_path: Path, capfd, caplog):
    """The hostile files of every format land in one batch beside a good file; raw_records runs through Dagster."""
    from meddiag_pipelines.storage import DataRoot

    layout = DataRoot(tmp_path / "data")
    batch = layout.landing(SPEC.name) / "b1"
    for name, data, _, _ in HOSTILE:
        _write(batch, name, data)
    _write(batch, "notes/a.txt", "a note about chest pain")
    _write(batch, "latin/labels.csv", "file,dx\nn1.txt,mi\n")
    _write(batch, "good.csv", GOOD)
    _write(batch, "dated.csv", f'nid,dx,note\ngood2,hf,"Fell on {WORD_DATE} and again on Tues. the 4th"\n')
    (batch / "_READY").touch()
    caplog.set_level("DEBUG")
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        defs = build_definitions([SPEC], layout.local)
        result = run_task_in_process(defs, SPEC, instance, ["raw_records"], raise_on_error=False)
        events = "\n".join(str(e) for e in instance.all_logs(result.run_id))
    assert result.success
    ledger = Warehouse(layout).ledger(SPEC.name)
    assert ledger["status"].to_list() == ["read"]
    reason = json.loads(ledger["reason"][0])
    assert {r["file"] for r in reason["rejected_files"]} >= {h[2] for h in HOSTILE}
    reasons = [p.read_text() for p in layout.quarantine(SPEC.name).rglob("reason.json")]
    assert len(reasons) >= len(HOSTILE)
    out, err = capfd.readouterr()
    with Warehouse(layout).connect():  # the catalog's views of the ledger and state objects
        pass
    places = {
        "events": events,
        "ledger+warehouse": _strings_of_duckdb(layout.warehouse_db()),
        "reason.json": "\n".join(reasons),
        "console": out + err,
        "logging": caplog.text,
    }
    for path in home.rglob("*"):
        if path.is_file():
            places[f"dagster:{path.name}"] = path.read_bytes().decode("utf-8", "replace")
    places["raw records"] = "\n".join(map(_strings_of_parquet, layout.local.rglob("raw_records/**/*.parquet")))
    leaks = [where for where, blob in places.items() if CANARY[:9] in blob or CANARY[-7:] in blob]
    assert leaks == [], leaks
    dated = [
        where for where, blob in places.items() if "twenty-third" in blob or "thirty-one" in blob or "Tues" in blob
    ]
    assert dated == [] and "Fell on the [DATE] and again on [DATE]" in places["raw records"], dated
    assert "a quoted field is never closed" in places["reason.json"]  # the scan does see the reasons


# Characters that print nothing: format (Cf), controls, separators of every kind, combining marks alone, and the
# blank letters and symbols of Hangul and Braille. A note made of them is empty (issue 24).
INVISIBLE = [
    "\u200b",
    "\u200c",
    "\u200d",
    "\ufeff",
    "\u2060",
    "\u00ad",
    "\u180e",
    "\u2061",
    "\u202e",
    "\u2066",
    "\U000e0001",
    "\x0b",
    "\x1f",
    "\u0085",
    "\u00a0",
    "\u2007",
    "\u3000",
    "\u2028",
    "\u2029",
    "\u0301",
    "\u3164",
    "\u115f",
    "\u2800",
]


@pytest.mark.parametrize("blank", INVISIBLE, ids=[f"U+{ord(c):04X}" for c in INVISIBLE])
def test_invisible_characters_do_not_count_toward_min_text_chars(blank: str):
    from meddiag_pipelines.text.validation import short_texts

    frame = pl.DataFrame(
        {
            "nid": ["blank", "padded", "short", "fine"],
            "dx": ["mi"] * 4,
            "note": [blank * 500, f"{blank * 100}ab{blank * 100}", "a" + blank + "b", f"a{blank}bc"],
        }
    )
    failures = short_texts(frame, SPEC)
    assert [(f.expectation, f.unexpected_count) for f in failures] == [("text_min_length", 3)]
    assert "visible characters" in failures[0].problem


def test_a_text_over_the_deid_time_limit_rejects_its_file_naming_the_row(tmp_path: Path, monkeypatch):
    """Issue 24: a note whose scrubbing overruns is never stored unscrubbed; its file is rejected with the row
    (never the text) and the other files of the batch flow on."""
    from meddiag_pipelines.deid.rules import ScrubTimeout
    from meddiag_pipelines.text import readers

    def scrub_or_overrun(text: str, time_limit: float | None = None) -> str:
        if CANARY in text:  # stands for a note whose scrubbing overruns its limit
            raise ScrubTimeout("finding the identifiers of the text took longer than its time limit")
        return real_scrub(text, time_limit)

    real_scrub = readers.scrub
    monkeypatch.setattr(readers, "scrub", scrub_or_overrun)
    _write(tmp_path, "slow.csv", f"nid,dx,note\ns1,mi,chest pain\ns2,hf,{CANARY} seen on 3/14\n")
    _write(tmp_path, "good.csv", GOOD)
    res = read_text_batch(tmp_path, SPEC)
    assert res.records["id"].to_list() == ["good1"] and res.files_read == ["good.csv"]
    assert dict(res.rejected) == {
        "slow.csv": "slow.csv: row 3: its text took longer than 5 s to de-identify, so it "
        "was not stored (MEDDIAG_DEID_SECONDS sets the limit)"
    }


def test_a_tiny_deid_time_limit_rejects_every_file_with_text(tmp_path: Path, monkeypatch):
    """The real scrubber under a limit no text can meet (set as an operator would, in the environment)."""
    monkeypatch.setenv("MEDDIAG_DEID_SECONDS", "1e-9")
    _write(tmp_path, "a.csv", f"nid,dx,note\na1,mi,{CANARY} called 555-123-4567\n")
    _write(tmp_path, "b.jsonl", json.dumps({"nid": "b1", "dx": "hf", "note": CANARY}) + "\n")
    _write(tmp_path, "notes/labels.csv", "file,dx\nn1.txt,mi\n")
    _write(tmp_path, "notes/n1.txt", f"Dr. {CANARY}")
    res = read_text_batch(tmp_path, SPEC)
    assert res.records.is_empty() and res.files_read == ["notes/labels.csv"]
    problems = dict(res.rejected)
    assert {rel: p.split(" took longer")[0] for rel, p in problems.items()} == {
        "a.csv": "a.csv: row 2: its text",
        "b.jsonl": "b.jsonl: line 1: its text",
        "notes/n1.txt": "notes/n1.txt: labels.csv row 2: its text",
    }
    assert all("1e-09 s to de-identify" in p for p in problems.values()) and CANARY[:9] not in str(problems)


@pytest.mark.parametrize("value", ["0", "-1", "five", "nan", "inf"])
def test_an_invalid_deid_time_limit_stops_the_read_instead_of_rejecting_files(tmp_path: Path, monkeypatch, value):
    monkeypatch.setenv("MEDDIAG_DEID_SECONDS", value)
    _write(tmp_path, "good.csv", GOOD)
    with pytest.raises(ValueError, match="MEDDIAG_DEID_SECONDS must be a positive number of seconds"):
        read_text_batch(tmp_path, SPEC)
