"""The omop modality through the generic Dagster assets: the bundled SYNTHETIC Eunomia task end to end (the Book
of OHDSI's counts in metrics.json, no date or person id in metadata or report), hostile CDM batches quarantined
with their reason while a good batch trains, and a later batch's new persons scored with their covariates."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from meddiag_pipelines.defs.build import build_definitions
from meddiag_pipelines.omop.batches import study_spec
from meddiag_pipelines.omop.cdm import open_cdm
from meddiag_pipelines.omop.cohort import build_study
from meddiag_pipelines.specs import BUNDLED_TASKS_DIR, SpecError, load_spec
from meddiag_pipelines.update import run_task_in_process
from meddiag_pipelines_tests.conftest import fast

REPO = Path(__file__).resolve().parents[1]
BATCH = REPO / "data" / "landing" / "eunomia_gi_bleed" / "batch_0001"
SPEC_FILE = BUNDLED_TASKS_DIR / "eunomia_gi_bleed.yaml"
# Person ids shifted far from any count or figure, so a search of the metadata and report cannot miss one.
OFFSET, LATER_OFFSET = 7_310_000_000, 7_320_000_000
PERSON_ID = re.compile(r"(?<![\d.])73[12]\d{7}(?!\d)")


def copy_batch(dest: Path, offset: int, *, drop: tuple[str, ...] = (), edit: dict | None = None) -> Path:
    """The bundled Eunomia batch (column names lower-cased) with person ids shifted by ``offset``, tables in
    ``drop`` left out and ``edit`` (table -> frame -> frame) applied."""
    dest.mkdir(parents=True)
    for path in BATCH.glob("*.parquet"):
        if path.stem in drop:
            continue
        frame = pl.read_parquet(path).rename(str.lower)
        if "person_id" in frame.columns:
            frame = frame.with_columns(pl.col("person_id").cast(pl.Int64) + offset)
        if edit and path.stem in edit:
            frame = edit[path.stem](frame)
        frame.write_parquet(dest / path.name)
    (dest / "_READY").touch()
    return dest


def materialize(spec, root: Path):
    with dg.instance_for_test() as instance:
        result = run_task_in_process(build_definitions([spec], root), spec, instance, raise_on_error=False)
        texts = [str(e.materialization.metadata) for e in result.get_asset_materialization_events()]
        texts += [
            str(e.event_specific_data)
            for e in result.all_events
            if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION
        ]
    return result, "\n".join(texts)


def test_bundled_spec_is_the_books_exercise():
    spec = load_spec(SPEC_FILE)
    assert (spec.modality, spec.label, spec.id, spec.patient_id) == ("omop", "outcome", "person_id", "person_id")
    assert spec.cohort.target.concepts == [1118084, 1124300] and spec.cohort.prior_observation_days == 364
    assert (spec.time_at_risk.start, spec.time_at_risk.end, spec.time_at_risk.min_days) == (1, 365, 364)
    assert spec.split.test == 0.25  # the Book's 75/25 split
    assert sum(p.stat().st_size for p in BATCH.iterdir()) < 10 * 2**20


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {
                "outcomes": [
                    {"name": "a", "domain": "condition", "concepts": [1]},
                    {"name": "a", "domain": "condition", "concepts": [2]},
                ]
            },
            "key 'outcomes': .*each under its own name",
        ),
        ({"cohort": None}, "omop tasks need 'cohort'"),
        ({"cohort": {"target": {"domain": "lab", "concepts": [1]}}}, r"key 'cohort\.target\.domain'"),
        ({"time_at_risk": {"start": 10, "end": 1}}, "key 'time_at_risk'.*end is before"),
        ({"modality": "tabular", "label": "y"}, "cohort, outcomes, time_at_risk: for omop tasks only"),
    ],
)
def test_bad_study_keys_are_spec_errors_naming_file_and_key(tmp_path: Path, change: dict, message: str):
    import yaml

    raw = yaml.safe_load(SPEC_FILE.read_text()) | change
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in raw.items() if v is not None}))
    with pytest.raises(SpecError, match=f"study.yaml: .*{message}"):
        load_spec(path)


def _later_batch(dest: Path) -> tuple[Path, int]:
    """New persons (ids shifted again) whose observation ends 100 days after their index: still at risk, so
    unlabelled unless the outcome came within those days. Returns the folder and the number of such persons."""
    with open_cdm(BATCH) as cdm:
        population = build_study(cdm, study_spec(load_spec(SPEC_FILE))).population
    chosen = population.filter(pl.col("outcome_gi_bleed") == 0).head(40)
    ends = chosen.select(
        (pl.col("person_id") + LATER_OFFSET).alias("person_id"),
        (pl.col("index_date") + timedelta(days=100)).alias("cut"),
    )

    def keep_chosen(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.filter(pl.col("person_id").is_in(ends["person_id"].implode()))

    def cut(frame: pl.DataFrame) -> pl.DataFrame:
        frame = keep_chosen(frame).join(ends, on="person_id")
        return frame.with_columns(
            pl.min_horizontal("observation_period_end_date", "cut").alias("observation_period_end_date")
        ).drop("cut")

    tables = [p.stem for p in BATCH.glob("*.parquet")]
    edits = {t: keep_chosen for t in tables if "PERSON_ID" in pl.read_parquet_schema(BATCH / f"{t}.parquet")}
    return copy_batch(dest, LATER_OFFSET, edit={**edits, "observation_period": cut}), chosen.height


@pytest.mark.slow
def test_eunomia_end_to_end_hostile_batches_and_scoring(tmp_path: Path):
    spec = fast(load_spec(SPEC_FILE))
    root = tmp_path / "data"
    landing = root / "landing" / spec.name
    copy_batch(landing / "batch_0001", OFFSET)
    copy_batch(landing / "batch_0002", OFFSET, drop=("person",))

    def with_cycle(frame: pl.DataFrame) -> pl.DataFrame:  # a concept's child made its parent too
        edge = frame.filter(pl.col("min_levels_of_separation") == 1)
        reverse = edge.head(1).with_columns(
            ancestor_concept_id=pl.col("descendant_concept_id"), descendant_concept_id=pl.col("ancestor_concept_id")
        )
        return pl.concat([frame, reverse.select(frame.columns).cast(frame.schema)])

    cycle = {"concept_ancestor": with_cycle}
    copy_batch(landing / "batch_0003", OFFSET, edit=cycle)

    result, metadata = materialize(spec, root)
    assert result.success
    reasons = {
        b: json.loads((root / "quarantine" / spec.name / b / "reason.json").read_text())["problem"]
        for b in ("batch_0002", "batch_0003")
    }
    assert "no person table" in reasons["batch_0002"]
    assert "concept_ancestor has a cycle" in reasons["batch_0003"]
    latest = root / "reports" / spec.name / "latest"
    metrics = json.loads((latest / "metrics.json").read_text())
    omop = metrics["omop"]
    assert [a["persons"] for a in omop["attrition"]] == [2694, 2630, 2630, 2630, 2578]
    assert (omop["persons"], omop["outcome_count"], omop["persons_to_score"]) == (2578, 479, 52)
    assert metrics["n_train"] + metrics["n_val"] + metrics["n_test"] == 2578
    assert 0.55 < omop["test_auroc"]["l1_logistic_regression"]["auroc"] < 0.8
    assert omop["test_auroc"]["xgboost"]["auroc_ci"][0] < omop["test_auroc"]["xgboost"]["auroc"]
    assert metrics["baseline"]["name"] == "l1_logistic_regression"
    cache = root / "cache" / spec.name / "batch_0001"
    assert {p.name for p in cache.iterdir()} >= {"meds.parquet", "covariates.parquet", "study.json"}
    report = (latest / "report.html").read_text() + (latest / "model_card.md").read_text()
    assert "Cohort attrition" in report and "Top covariates by effect" in report and "2,578" in report

    with open_cdm(landing / "batch_0001") as cdm:
        dates = build_study(cdm, study_spec(spec)).population["index_date"].cast(pl.String).unique().to_list()
    shown = metadata + report + json.dumps(metrics)
    found = PERSON_ID.search(shown)
    assert not found, f"a person id in metadata or the report: {shown[max(found.start() - 300, 0) : found.end() + 50]}"
    assert not [d for d in dates if d in shown], "an index date in metadata or the report"

    _, n_later = _later_batch(landing / "batch_0004")
    result, _ = materialize(spec, root)
    assert result.success
    [scored] = (root / "predictions" / spec.name / "batch_0004").glob("*.parquet")
    risks = pl.read_parquet(scored)
    assert 0 < risks.height <= n_later
    assert risks["id"].cast(pl.Int64).min() > LATER_OFFSET and risks["probability"].is_between(0, 1).all()
    assert (
        risks["top_features"]
        .str.contains(
            r"(condition|drug|procedure|measurement|observation|visit|age|gender)"
            r"[^;]* [+-]\d\.\d{3}"
        )
        .all()
    )


def test_study_rows_label_the_population_and_leave_persons_still_at_risk_unlabelled(tmp_path: Path):
    from datetime import date

    from meddiag_pipelines.omop.batches import study_rows
    from meddiag_pipelines.omop.spec import StudySpec
    from meddiag_pipelines_tests.omop_data import NSAID_SPEC, TODAY, tidy_tables, write_cdm

    tables = tidy_tables()  # person 1 bleeds 2 months after index; person 2 starts 2012-06-01; person 3 no NSAID
    tables["observation_period"] = tables["observation_period"].with_columns(
        pl.when(pl.col("person_id") == 2)
        .then(date(2012, 8, 1))
        .otherwise(pl.col("observation_period_end_date"))
        .alias("observation_period_end_date")
    )
    with open_cdm(write_cdm(tmp_path / "cdm", tables), today=TODAY) as cdm:
        rows = study_rows(build_study(cdm, StudySpec.model_validate(NSAID_SPEC)))
    assert rows.select("person_id", "outcome", "tar_days").to_dicts() == [
        {"person_id": 1, "outcome": "1", "tar_days": 365},
        {"person_id": 2, "outcome": None, "tar_days": 61},
    ]
    assert rows["gender"].to_list() == ["male", "female"]


def test_row_checks_name_each_problem():
    from meddiag_pipelines.omop.modality import row_failures

    spec = load_spec(SPEC_FILE)
    rows = pl.DataFrame({"person_id": [1, 1, 2, None], "outcome": ["1", "0", "2", None]})
    failures = {f.expectation: f.unexpected_count for f in row_failures(rows, spec, {"2"})}
    assert failures == {"ids_present": 1, "ids_unique": 1, "label_domain": 1, "ids_unique_across_batches": 1}
    assert row_failures(rows.slice(0, 1), spec, {"3"}) == []


def test_covariate_matrix_takes_each_persons_own_batch(tmp_path: Path):
    """The same person id in two batches is two persons: each row reads its own batch's covariates."""
    from meddiag_pipelines.omop.modality import covariate_matrix
    from meddiag_pipelines.specs import BATCH_COLUMN

    for batch, values in (("a", [1.0, 5.0]), ("b", [0.0, 7.0])):
        (tmp_path / batch).mkdir()
        pl.DataFrame({"person_id": [1, 1], "covariate_id": [1003, 2], "value": values}).filter(
            pl.col("value") != 0
        ).write_parquet(tmp_path / batch / "covariates.parquet")
    rows = pl.DataFrame({"person_id": [1, 1, 2], BATCH_COLUMN: ["b", "a", "a"]})
    X = covariate_matrix(rows, {"columns": ["c2", "c1003", "c9"]}, tmp_path)
    assert X.tolist() == [[7.0, 0.0, 0.0], [5.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
