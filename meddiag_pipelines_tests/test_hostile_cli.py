"""Hostile input through the CLI, as a user runs it: several hostile batches land beside good ones for a
tabular and a text task, and one `dagster asset materialize` per task must (a) finish (no run hangs on a FIFO),
(b) leave every file outside the batches byte-identical, (c) keep planted PHI canaries of every class out of
the warehouse, DAGSTER_HOME, reports, models, reasons and the CLI output, and (d) still train the good batch."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import polars as pl
import pytest

from meddiag_pipelines_tests.conftest import MEDDIAG, SYNTHETIC_SPEC, instance_env, run_cli, synthetic_records
from meddiag_pipelines_tests.test_text_pipeline import _strings_of_duckdb, _strings_of_parquet

pytestmark = pytest.mark.slow
RUN_TIMEOUT_S = 600
# One canary per PHI class, in the forms the scrubber must catch; each is unique enough to grep for.
PHI_NOTE = (
    "Seen by dr. Zorbulax Quentaro on 14MAR1931 (again MARCH 14, 2023 and 17/Apr/2023); call "
    "+44 20 7946 0958 or 555\u2013881\u20133397; SSN 321.54.9876; MR No. 4455667, chart: 3344556; "
    "93 y.o.; lives at 4417 Wexmoor Street."
)
CANARIES = [
    "Zorbulax",
    "Quentaro",
    "14MAR1931",
    "7946 0958",
    "881\u20133397",
    "321.54.9876",
    "4455667",
    "3344556",
    "Wexmoor",
]
ID_CANARY = "IDCANARY"


def _tabular_batches(landing: Path) -> None:
    good = synthetic_records(400, seed=1).with_columns((pl.lit(ID_CANARY) + pl.col("rid")).alias("rid"))
    _land(landing / "batch_0001", good.write_csv().encode())
    awkward = synthetic_records(120, seed=2, start=1000).with_columns(
        pl.Series("dose[mg]", [f"<0.0{i % 3}" for i in range(120)])
    )
    _land(landing / "batch 0002 ünïcode", awkward.write_csv().encode())
    quote = good.head(3).write_csv() + f'r9999,p9999,1,2,3,A,"{PHI_NOTE}\n'
    _land(landing / "batch_0003_unterminated", quote.encode())
    _land(landing / "batch_0004_fifo", None)
    os.mkfifo(landing / "batch_0004_fifo" / "records.csv")
    huge = synthetic_records(10, seed=3, start=2000).with_columns(pl.lit(1e39).alias("x1"))
    _land(landing / "batch_0005_beyond_float32", huge.write_csv().encode())
    reserved = synthetic_records(10, seed=4, start=3000).with_columns(pl.lit("x").alias("_meddiag_batch"))
    _land(landing / "batch_0006_reserved_column", reserved.write_csv().encode())


def _text_rows(n: int, seed: int) -> pl.DataFrame:
    import random

    rng = random.Random(seed)
    cardiac = ["chest pain on exertion", "palpitations and syncope", "atrial fibrillation with rapid rate"]
    lung = ["productive cough and fever", "wheeze and shortness of breath", "pleuritic pain, consolidation"]
    rows = []
    for i in range(n):
        label = rng.choice(["cardiac", "respiratory"])
        body = rng.choice(cardiac if label == "cardiac" else lung) + f", case {i % 17}"
        rows.append(
            {
                "note_id": f"{ID_CANARY}{seed}-{i}",
                "note": body + (". " + PHI_NOTE if i % 5 == 0 else ""),
                "label": label,
            }
        )
    return pl.DataFrame(rows)


def _text_batches(landing: Path, outside: Path) -> None:
    _land(landing / "batch_0001", _text_rows(300, 1).write_csv().encode())
    _land(landing / "batch_0002_unterminated", f'note_id,note,label\nn1,"{PHI_NOTE}\n'.encode())
    folder = landing / "batch_0003_paths"
    _land(folder, None)
    (folder / "a.txt").write_text("productive cough and fever, case 3")
    rows = [
        "file,label,note_id",
        "a.txt,respiratory,t1",
        f"{outside},cardiac,t2",
        "../../../warehouse/meddiag.duckdb,cardiac,t3",
    ]
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    _land(landing / "batch_0004_fifo", None)
    os.mkfifo(landing / "batch_0004_fifo" / "notes.jsonl")


def _land(folder: Path, raw: bytes | None, name: str = "records.csv") -> None:
    folder.mkdir(parents=True)
    if raw is not None:
        (folder / name).write_bytes(raw)
    (folder / "_READY").touch()


def _digests(root: Path, skip: tuple[Path, ...]) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink() and not any(p.is_relative_to(s) for s in skip)
    }


def _blob(path: Path) -> bytes:
    if path.suffix == ".parquet":
        return _strings_of_parquet(path).encode()
    if path.suffix == ".duckdb":
        return _strings_of_duckdb(path).encode() + path.read_bytes()
    return path.read_bytes()


def test_hostile_batches_through_the_cli(tmp_path: Path):
    data, home = tmp_path / "data", tmp_path / "dagster_home"
    outside = tmp_path / "outside.txt"
    outside.write_text("nobody's business\n")
    tabular = {
        **SYNTHETIC_SPEC,
        "training": {"trials": 1, "timeout_s": 10, "max_rounds": 60},
        "evaluation": {"n_bootstrap": 100},
    }
    text = {
        "name": "hostile_notes",
        "modality": "text",
        "text": "note",
        "label": "label",
        "id": "note_id",
        "training": {"epochs": 2, "time_budget_s": 30},
        "evaluation": {"n_bootstrap": 100},
        "promotion": {"auroc_floor": 0.6},
    }
    env = instance_env(home, data, tmp_path / "tasks", [tabular, text])
    _tabular_batches(data / "landing" / tabular["name"])
    _text_batches(data / "landing" / text["name"], outside)
    before = _digests(tmp_path, skip=(data,))

    outputs = []
    for spec in (tabular, text):
        # the project's one command that brings a task up to date (new batches as partitions, then the rest)
        result = run_cli([*MEDDIAG, "update", spec["name"]], env=env, timeout=RUN_TIMEOUT_S, expect_rc=0)
        outputs.append(result.stdout + result.stderr)
        assert (data / "models" / spec["name"] / "champion.json").is_file(), f"{spec['name']}: the good batch trained"

    assert _digests(tmp_path, skip=(data, home)) == {k: v for k, v in before.items() if not k.startswith(str(home))}
    assert outside.read_text() == "nobody's business\n"
    assert (data / "warehouse" / "meddiag.duckdb").is_file()
    leaks = {}
    places = [home, data / "warehouse", data / "models", data / "reports", data / "cache"]
    places += list((data / "quarantine").rglob("reason.json"))
    for place in places:
        for path in [place] if place.is_file() else place.rglob("*"):
            if path.is_file() and not path.is_symlink():
                hits = [c for c in CANARIES if c.lower().encode() in _blob(path).lower()]
                if hits:
                    leaks[str(path.relative_to(tmp_path))] = hits
    for i, out in enumerate(outputs):
        hits = [c for c in CANARIES if c.lower() in out.lower()]
        if hits:
            leaks[f"cli output {i}"] = hits
    assert not leaks, leaks
