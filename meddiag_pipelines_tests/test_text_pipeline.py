"""The text graph in-process against a temporary data folder (a few hundred ICD-10-CM rows), and each text check
failing on the input it exists to catch."""

import json
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest

from meddiag_pipelines.defs.build import build_definitions
from meddiag_pipelines.ingestion.quarantine import file_reason
from meddiag_pipelines.registry.store import ModelRegistry
from meddiag_pipelines.specs import TaskSpec
from meddiag_pipelines.split import SPLIT_COLUMN, text_content_key
from meddiag_pipelines.text.validation import (
    TextDuplicates,
    text_duplicates,
    unreadable_files,
    validate_texts,
)
from meddiag_pipelines.update import run_task_in_process
from meddiag_pipelines_tests.conftest import REPO, TASK_ASSETS, land

BUNDLED = REPO / "data" / "landing" / "icd10_chapters" / "batch_0001" / "records.csv"
CHAPTERS = ["circulatory", "eye", "infectious", "neoplasms"]
# Planted PHI: a name after a title and after "Patient:", a date, an MRN and a phone number.
CANARIES = ["Quimbleton", "Farthingale", "03/14/2023", "7654321", "867-5309"]
PHI = "Patient: Ottoline Farthingale, MRN 7654321, phone (555) 867-5309, seen 03/14/2023 by Dr. Quimbleton."


def small_spec(name: str = "icd_notes", **updates) -> TaskSpec:
    return TaskSpec.model_validate(
        {
            "name": name,
            "modality": "text",
            "description": "A few hundred ICD-10-CM descriptions (test task).",
            "label": "chapter",
            "text": "description",
            "id": "code",
            "patient_id": "category",
            "classes": CHAPTERS,
            "min_text_chars": 3,
            "training": {"epochs": 4, "batch_size": 32, "learning_rate": 0.01, "patience": 2, "time_budget_s": 60},
            "evaluation": {"n_bootstrap": 100},
            "promotion": {"auroc_floor": 0.6},
            **updates,
        }
    )


def icd_rows(n_per_chapter: int, seed: int = 7) -> pl.DataFrame:
    df = pl.read_csv(BUNDLED, infer_schema=False).filter(pl.col("chapter").is_in(CHAPTERS))
    return pl.concat([df.filter(pl.col("chapter") == c).sample(n=n_per_chapter, seed=seed) for c in CHAPTERS]).sort(
        "code"
    )


def materialize(spec, layout, instance):
    defs = build_definitions([spec], layout.local)
    return run_task_in_process(defs, spec, instance, raise_on_error=False)


# Every check of a text task, all passed.
ALL_CHECKS_PASSED = dict.fromkeys(
    [
        "unreadable_files_quarantined",
        "validated_records_suite",
        "texts_unique_across_splits",
        "champion_fit_for_use",
        "batch_schema",
        "realised_performance",
    ],
    True,
)
DRIFT_WARN = "batch_drift"  # a WARN that depends on the batch scored (monitoring), not a failure of the task


def check_outcomes(result) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations() if e.check_name != DRIFT_WARN}


# -- where the canaries must never be ------------------------------------------------------------------------
def _strings_of_parquet(path: Path) -> str:
    frame = pl.read_parquet(path)
    return "\n".join(str(v) for c in frame.columns if frame.schema[c] == pl.String for v in frame[c].to_list())


def _strings_of_duckdb(path: Path) -> str:
    parts = []
    with duckdb.connect(str(path), read_only=True) as con:
        con.execute(f"SET file_search_path = '{path.parent}'")  # the views name their files relative to it
        columns = con.execute(
            "SELECT table_schema, table_name, column_name FROM information_schema.columns WHERE data_type = 'VARCHAR'"
        ).fetchall()
        for schema, table, column in columns:
            rows = con.execute(f'SELECT "{column}" FROM "{schema}"."{table}"').fetchall()
            parts += [str(r[0]) for r in rows if r[0] is not None]
    return "\n".join(parts)


def leaked_canaries(root: Path, skip: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Every file under ``root`` (Parquet and DuckDB read through their libraries, the rest as bytes)."""
    found: dict[str, list[str]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(skip):
            continue
        if path.suffix == ".parquet":
            blob = _strings_of_parquet(path).encode()
        elif path.suffix == ".duckdb":
            blob = _strings_of_duckdb(path).encode() + path.read_bytes()
        else:
            blob = path.read_bytes()
        hits = [c for c in CANARIES if c.lower().encode() in blob.lower()]
        if hits:
            found[rel] = hits
    return found


@pytest.mark.slow
def test_text_task_end_to_end(layout):
    spec = small_spec()
    task = spec.name
    rows = icd_rows(110)
    held_out = rows.tail(8)  # to score: no label
    labelled = rows.head(rows.height - 8)
    # PHI planted in a dozen training texts and in half of the texts to score.
    labelled = labelled.with_columns(
        pl.when(pl.int_range(pl.len()) % 35 == 0)
        .then(pl.col("description") + ". " + PHI)
        .otherwise(pl.col("description"))
        .alias("description")
    )
    folder = land(layout, task, "batch_0001", labelled)
    lines = [
        json.dumps(
            {
                "code": r["code"],
                "category": r["category"],
                "description": r["description"] + (f" {PHI}" if i % 2 == 0 else ""),
            }
        )
        for i, r in enumerate(held_out.iter_rows(named=True))
    ]
    (folder / "to_score.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    # A legacy export in Latin-1: the whole file is quarantined, the rest of the batch flows on.
    legacy = f"code,category,chapter,description\nZ99.1,Z99,eye,Kératite du patient. {PHI}\n"
    (folder / "legacy.csv").write_bytes(legacy.encode("latin-1"))

    with dg.instance_for_test() as instance:
        result = materialize(spec, layout, instance)
        assert result.success
        assert check_outcomes(result) == ALL_CHECKS_PASSED

        # the bad-encoding file is quarantined alone, with its reason, and counted
        reason = json.loads(file_reason(layout.quarantine(task) / "batch_0001", "legacy.csv").read_text())
        assert reason["file"] == "legacy.csv" and "UTF-8" in reason["problem"]
        assert (layout.landing(task) / "batch_0001" / "records.csv").exists()
        latest = layout.reports(task) / "latest"
        metrics = json.loads((latest / "metrics.json").read_text())
        raw = instance.get_latest_materialization_event(dg.AssetKey([task, "raw_records"])).asset_materialization
        counts = {k: raw.metadata[k].value for k in ("quarantined_now", "quarantined_files", "ingested_files")}
        assert counts == {"quarantined_now": 1, "quarantined_files": 1, "ingested_files": 2}
        rejected = [e for e in result.get_asset_check_evaluations() if e.check_name == "unreadable_files_quarantined"]
        assert rejected[0].passed and rejected[0].metadata["rejected_files"].value == 1
        assert metrics["flow"]["landed_files"] == 3
        assert metrics["n_train"] + metrics["n_val"] + metrics["n_test"] == labelled.height

        # multiclass report with the top-terms section
        assert metrics["kind"] == "multiclass" and metrics["classes"] == CHAPTERS
        for key in (
            "auroc",
            "auroc_ci",
            "macro_f1",
            "weighted_f1",
            "accuracy",
            "per_class",
            "confusion_matrix",
            "baseline",
            "comparison",
        ):
            assert key in metrics, key
        assert metrics["macro_f1"] > 0.6 and metrics["baseline"]["name"] == "tfidf_logistic_regression"
        html = (latest / "report.html").read_text()
        assert "Top terms per class" in html and "https://" not in html
        card = (latest / "model_card.md").read_text()
        assert metrics["model_name"] in card

        # the champion scored the unlabelled texts, naming the words that drove each prediction
        registry = layout.local / "models" / task
        champion = json.loads((registry / "champion.json").read_text())["version"]
        assert (registry / champion / "model" / "chosen.json").exists()
        scored = pl.read_parquet(
            layout.predictions(task) / "batch_0001" / f"{ModelRegistry(layout).champion(task)['version']}.parquet"
        )
        assert sorted(scored["id"].to_list()) == sorted(held_out["code"].to_list())
        assert {"predicted", "model_version", "top_features", *[f"p_{c}" for c in CHAPTERS]} <= set(scored.columns)
        assert scored["top_features"].str.len_chars().min() > 0
        assert (scored["predicted"] == pl.Series(held_out.sort("code")["chapter"])).mean() >= 0.5

        # no planted identifier anywhere: warehouse, reports, model files, predictions, Dagster's storage
        leaks = leaked_canaries(layout.local, skip=("landing/", "quarantine/"))
        leaks.update({f"dagster/{k}": v for k, v in leaked_canaries(Path(instance.root_directory)).items()})
        events = "\n".join(str(e) for e in instance.all_logs(result.run_id))
        leaks.update({"event_log": [c for c in CANARIES if c.lower() in events.lower()]} if events else {})
        assert not {k: v for k, v in leaks.items() if v}, leaks
        assert leaked_canaries(layout.quarantine(task)) and leaked_canaries(layout.landing(task))  # the scan sees them
        assert "[NAME]" in _strings_of_duckdb(layout.warehouse_db())  # the scrubbed text did land


@pytest.mark.slow
def test_bad_batch_is_quarantined_while_duplicates_are_counted_and_the_task_trains(layout):
    spec = small_spec("icd_checks")
    task = spec.name
    rows = icd_rows(40, seed=3)
    # Real corpora repeat texts: copies under new ids (case and blanks changed), four of them relabelled. They share
    # their original's category (the patient key), so they sit in its split whatever else the split groups by.
    copies = rows.head(12).with_columns(pl.col("code") + "dup", pl.col("description").str.to_uppercase() + "  ")
    other = pl.when(pl.col("chapter") == CHAPTERS[0]).then(pl.lit(CHAPTERS[1])).otherwise(pl.lit(CHAPTERS[0]))
    relabelled = rows.head(4).with_columns(pl.col("code") + "alt", other.alias("chapter"))
    land(layout, task, "b1", pl.concat([rows, copies, relabelled]))
    bad = rows.head(3).with_columns(pl.col("code") + "x")
    bad = bad.with_columns(
        pl.Series("description", ["ab", bad["description"][1], bad["description"][2]]),
        pl.Series("chapter", [bad["chapter"][0], "not_a_chapter", bad["chapter"][2]]),
    )
    land(layout, task, "b2", bad)

    with dg.instance_for_test() as instance:
        result = materialize(spec, layout, instance)
    assert result.success
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert {k: e.passed for k, e in evaluations.items() if k != DRIFT_WARN} == ALL_CHECKS_PASSED
    duplicates = {k: v.value for k, v in evaluations["texts_unique_across_splits"].metadata.items()}
    assert duplicates["duplicated_texts"] >= 12 and duplicates["extra_copies"] >= 16
    assert duplicates["conflicting_texts"] >= 4 and duplicates["texts_across_splits"] == 0
    assert "conflicting labels" in evaluations["texts_unique_across_splits"].description
    assert (layout.local / "models" / task / "champion.json").exists()

    reason = json.loads((layout.quarantine(task) / "b2" / "reason.json").read_text())
    failed = {f["expectation"]: f for f in reason["failures"]}
    assert failed["text_min_length"]["unexpected_count"] == 1
    assert failed["expect_column_values_to_be_in_set"]["unexpected_count"] == 1
    blob = json.dumps(reason)
    assert not any(v in blob for v in [*bad["code"].to_list(), *bad["description"].to_list()[1:], "not_a_chapter"])


# -- the checks alone ------------------------------------------------------------------------------------------
def _frame(**columns) -> pl.DataFrame:
    base = {
        "code": ["a1", "a2", "a3"],
        "category": ["a", "a", "b"],
        "chapter": ["eye", "eye", "neoplasms"],
        "description": ["Cataract of the left eye", "Glaucoma, unspecified", "Neoplasm of the skin"],
    }
    return pl.DataFrame({**base, **columns})


def test_clean_texts_pass():
    assert validate_texts(_frame(), small_spec()) == []


@pytest.mark.parametrize(
    "texts",
    [
        ["", "Glaucoma", "Neoplasm"],
        ["   ", "Glaucoma", "Neoplasm"],
        [None, "Glaucoma", "Neoplasm"],
        ["ab", "Glaucoma", "Neoplasm"],
    ],
)
def test_empty_or_short_texts_fail(texts):
    failures = validate_texts(_frame(description=texts), small_spec())
    assert [f.expectation for f in failures] == ["text_min_length"] and failures[0].unexpected_count == 1
    assert failures[0].examples == []


def test_label_outside_the_domain_fails_and_unlabelled_rows_do_not():
    failures = validate_texts(_frame(chapter=["eye", "ophthalmology", "neoplasms"]), small_spec())
    assert [(f.expectation, f.unexpected_count, f.examples) for f in failures] == [
        ("expect_column_values_to_be_in_set", 1, [])
    ]
    assert "ophthalmology" not in failures[0].problem  # a value found in the data is never quoted (issue 24)
    assert validate_texts(_frame(chapter=["eye", None, "neoplasms"]), small_spec()) == []


def test_duplicate_ids_fail_without_showing_them():
    failures = validate_texts(_frame(code=["a1", "a1", "a3"]), small_spec())
    assert [f.expectation for f in failures] == ["expect_column_values_to_be_unique"] and failures[0].examples == []
    again = validate_texts(_frame(code=["z1", "z2", "a3"]), small_spec(), known_ids={"a3"})
    assert [f.expectation for f in again] == ["ids_unique_across_batches"]
    assert "a3" not in json.dumps([f.as_dict() for f in again])


def test_decoding_damage_fails():
    failures = validate_texts(_frame(description=["Cataract", "Glauc\ufffdma", "Neoplasm"]), small_spec())
    assert [f.expectation for f in failures] == ["text_decodes_cleanly"] and failures[0].examples == []


def test_identical_texts_across_splits_fail_within_one_split_pass():
    frame = _frame(description=["Cataract of the eye", "cataract  OF the eye ", "Neoplasm"])
    leaky = text_duplicates(
        frame.with_columns(pl.Series(SPLIT_COLUMN, ["train", "test", "val"])), small_spec()
    ).failures(small_spec())
    assert len(leaky) == 1 and leaky[0].unexpected_count == 1 and leaky[0].examples == []
    assert "Cataract" not in leaky[0].problem
    same = frame.with_columns(pl.Series(SPLIT_COLUMN, ["train", "train", "val"]))
    assert text_duplicates(same, small_spec()).failures(small_spec()) == []
    scored = frame.with_columns(pl.Series(SPLIT_COLUMN, ["train", "score", "val"]))  # scoring a seen text is fine
    assert text_duplicates(scored, small_spec()).failures(small_spec()) == []


def test_duplicates_and_conflicting_labels_are_counted_not_failed():
    frame = pl.DataFrame(
        {
            "code": [f"c{i}" for i in range(7)],
            "category": ["a"] * 7,
            "chapter": ["eye", "eye", "neoplasms", "eye", "eye", "eye", "eye"],
            "description": [
                "Cataract of the eye",
                "CATARACT of\tthe eye",
                "cataract of the eye ",  # 3 copies, 2 labels
                "\ufb01brosis of the lens",
                "fibrosis  of the LENS",  # NFKC: the ligature is "fi"
                "Glaucoma",
                "Glaucoma, unspecified",
            ],
            SPLIT_COLUMN: ["train", "train", "train", "val", "val", "test", "test"],
        }
    )
    duplicates = text_duplicates(frame, small_spec())
    assert duplicates == TextDuplicates(duplicated_texts=2, extra_copies=3, conflicting_texts=1, conflicting_rows=3)
    assert duplicates.failures(small_spec()) == []
    assert "conflicting labels" in duplicates.summary() and "Cataract" not in duplicates.summary()
    moved = frame.with_columns(pl.Series(SPLIT_COLUMN, ["train", "train", "test", "val", "val", "test", "test"]))
    leak = text_duplicates(moved, small_spec())
    assert (leak.texts_across_splits, leak.rows_across_splits) == (1, 3)
    assert [f.expectation for f in leak.failures(small_spec())] == ["texts_unique_across_splits"]


def test_text_content_key_folds_unicode_case_and_blanks_only():
    texts = [
        "Fibrosis of the lens",
        "  FIBROSIS\u00a0of\nthe lens ",
        "\ufb01brosis of the lens",
        "\uff26ibrosis of the lens",
        "Fibrosis of the lenses",
        "   ",
    ]
    keys = pl.DataFrame({"t": texts}).select(text_content_key("t")).to_series().to_list()
    assert keys[:4] == [keys[0]] * 4 and keys[4] != keys[0] and keys[5] is None


def test_rejected_files_must_be_quarantined(tmp_path):
    ledger = pl.DataFrame(
        {
            "batch_id": ["b1"],
            "status": ["validated"],
            "files": [json.dumps(["good.csv", "bad.csv"])],
            "reason": [json.dumps({"rejected_files": [{"batch": "b1", "file": "bad.csv", "problem": "not UTF-8"}]})],
        }
    )
    n, failures = unreadable_files(ledger, tmp_path)
    assert n == 1 and [f.expectation for f in failures] == ["rejected_files_quarantined"]
    file_reason(tmp_path / "b1", "bad.csv").parent.mkdir(parents=True)
    file_reason(tmp_path / "b1", "bad.csv").write_text("{}")
    assert unreadable_files(ledger, tmp_path) == (1, [])


@pytest.mark.slow
def test_odd_batch_name_and_label_forms_train_and_score(layout):
    """A batch name with spaces, accents and a dash (120 bytes), labels written 1.0 / true / 0 in a binary task
    across CSV and JSONL: trained, promoted and scored under that batch's name."""
    spec = small_spec("odd_notes", classes=None, positive="1")
    rows = icd_rows(60, seed=5).with_columns(
        (pl.col("chapter") == "neoplasms").cast(pl.Int8).cast(pl.String).alias("chapter")
    )
    forms = pl.when(pl.col("chapter") == "1").then(pl.lit("1.0")).otherwise(pl.lit("0"))
    batch = ("lot n°7 — notes d'été " * 6)[:60].strip()
    assert len(batch.encode()) > 60 and " " in batch
    folder = land(layout, spec.name, batch, rows.head(200).with_columns(forms.alias("chapter")))
    lines = [
        json.dumps(
            {
                "code": r["code"],
                "category": r["category"],
                "description": r["description"],
                "chapter": r["chapter"] == "1" if i < 30 else None,
            }
        )
        for i, r in enumerate(rows.tail(40).iter_rows(named=True))
    ]
    (folder / "more notes.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with dg.instance_for_test() as instance:
        result = materialize(spec, layout, instance)
    assert result.success and check_outcomes(result) == ALL_CHECKS_PASSED
    scored = pl.read_parquet(
        layout.predictions(spec.name) / batch / f"{ModelRegistry(layout).champion(spec.name)['version']}.parquet"
    )
    assert scored.height == 10
    metrics = json.loads((layout.reports(spec.name) / "latest" / "metrics.json").read_text())
    assert metrics["n_train"] + metrics["n_val"] + metrics["n_test"] == 230


def test_every_step_of_a_text_task_is_in_its_pool(tmp_path):
    """The features step too (issue 14 §9): one pool per task, so two runs never write a task's tables at once."""
    spec = small_spec("pooled_notes")
    defs = build_definitions([spec], tmp_path)
    for asset in TASK_ASSETS:
        assert defs.resolve_assets_def(dg.AssetKey([spec.name, asset])).op.pool == f"meddiag_{spec.name}", asset
