"""The omop modality (:class:`~meddiag_pipelines.modalities.base.Modality`): patient records over time in the
OMOP CDM, a PatientLevelPrediction-style study (target cohort, outcome, time at risk) and covariates from before
each person's index date; L1 logistic regression (the baseline) beside XGBoost.

Each landed batch is a CDM (one DuckDB file or one CSV/Parquet file per table; :mod:`.batches`). A batch the
CDM reader refuses (no ``person`` table, a ``concept_ancestor`` cycle...) is quarantined with its reason. The
split is by person (``patient_id`` = ``person_id``). The features step builds each batch's MEDS events and
covariates once (``cache/<task>/<batch>/``), keeps the covariates held by at least :data:`MIN_PERSONS` training
persons, and records their names in the plan, so the report and the explanations of a risk use words.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from meddiag_pipelines import labels
from meddiag_pipelines.evaluation.metrics.bootstrap import bootstrap_auroc_ci
from meddiag_pipelines.flat.models import predict_tabular, read_meta, top_contributions, validation_score
from meddiag_pipelines.ingestion.batches import Validator
from meddiag_pipelines.modalities.base import (
    BuiltFeatures,
    Descriptions,
    Explainer,
    FeaturesRefused,
    Modality,
    PredictorFactory,
    Storage,
    TrainedModel,
    TrainingRun,
)
from meddiag_pipelines.omop.batches import OmopReader, prepare_batch, task_outcome
from meddiag_pipelines.omop.models import train_omop_models
from meddiag_pipelines.omop.report import (
    attrition_html,
    outcome_comparison,
    study_html,
    top_covariates,
    top_covariates_html,
    write_comparison,
)
from meddiag_pipelines.specs import BATCH_COLUMN, TaskSpec
from meddiag_pipelines.split import SPLIT_COLUMN, key_columns_in
from meddiag_pipelines.validation.suites import CheckFailure, ids_already_ingested

FEATURE_PREFIX = "f__"
MIN_PERSONS = 10  # a covariate held by fewer training persons is left out (too rare to learn from)


def row_failures(rows: pl.DataFrame, spec: TaskSpec, known_ids: set[str] | None = None) -> list[CheckFailure]:
    """One row per person with a usable id, a 0/1 (or no) outcome; a person already in an earlier batch is
    refused (a later CDM batch brings new persons)."""
    failures = []
    ids = rows[spec.id]
    if ids.null_count():
        failures.append(
            CheckFailure("ids_present", spec.id, f"{ids.null_count()} rows without a person id", ids.null_count())
        )
    repeated = rows.height - ids.n_unique()
    if repeated:
        failures.append(CheckFailure("ids_unique", spec.id, f"{repeated} repeated person ids", repeated))
    bad = rows.filter(pl.col(spec.label).is_not_null() & ~pl.col(spec.label).is_in(["0", "1"])).height
    if bad:
        failures.append(CheckFailure("label_domain", spec.label, f"{bad} outcomes other than 0 or 1", bad))
    failures += ids_already_ingested(
        rows,
        spec,
        known_ids,
        "persons were already ingested from an earlier batch; a later CDM batch brings new persons",
    )
    return failures


def _validate(rows: pl.DataFrame, spec: TaskSpec, known_ids: set[str]) -> list[CheckFailure]:
    return row_failures(rows, spec, known_ids)


def covariate_matrix(rows: pl.DataFrame, plan: dict, cache_dir: Path) -> np.ndarray:
    """The plan's covariates of ``rows`` (``person_id``, batch column), in the plan's order, from each batch's
    cached covariates; a covariate a person lacks is 0 (a value covariate with no value too: its presence
    covariate says it is missing)."""
    columns = plan["columns"]
    ids = [int(c[1:]) for c in columns]
    keyed = rows.select(pl.col("person_id").cast(pl.Int64), pl.col(BATCH_COLUMN)).with_row_index("_row")
    parts = []
    for (batch,), people in keyed.group_by(BATCH_COLUMN):
        data = pl.read_parquet(cache_dir / batch / "covariates.parquet")
        data = data.filter(pl.col("covariate_id").is_in(ids) & pl.col("person_id").is_in(people["person_id"].implode()))
        parts.append(people.join(data, on="person_id").select("_row", "covariate_id", "value"))
    X = np.zeros((rows.height, len(columns)), dtype=np.float32)
    if parts:
        long = pl.concat(parts)
        position = {c: i for i, c in enumerate(ids)}
        cols = long["covariate_id"].replace_strict(position, return_dtype=pl.Int64).to_numpy()
        X[long["_row"].to_numpy(), cols] = long["value"].fill_null(0.0).to_numpy()
    return X


def _predictor(plan: dict):
    cache_dir = Path(plan["cache_dir"])

    def predict(model_dir, rows: pl.DataFrame) -> np.ndarray:
        return predict_tabular(model_dir, covariate_matrix(rows, plan, cache_dir))

    return predict


def explain_rows(model_dir, rows: pl.DataFrame, plan: dict) -> list[list[tuple[str, float]]]:
    """Per person, the covariates that pushed the risk up most, by name."""
    names = plan["names"]
    top = top_contributions(model_dir, covariate_matrix(rows, plan, Path(plan["cache_dir"])))
    return [[(names.get(n, n), v) for n, v in row] for row in top]


def _summary(values: pl.Series) -> dict:
    """Summary numbers of a distribution (days): never a single person's value alone."""
    if values.is_empty():
        return {"n": 0}
    q = [float(values.quantile(p, "nearest")) for p in (0.25, 0.5, 0.75)]
    return {
        "n": values.len(),
        "mean": round(float(values.mean()), 1),
        "min": int(values.min()),
        "p25": q[0],
        "median": q[1],
        "p75": q[2],
        "max": int(values.max()),
    }


def summed_attrition(studies: list[dict]) -> list[dict]:
    """Persons after each criterion over the batches (each person is in one batch)."""
    rows = [dict(r) for r in studies[0]["attrition"]]
    for study in studies[1:]:
        for row, other in zip(rows, study["attrition"], strict=False):
            row["persons"] += other["persons"]
    return rows


class OmopModality(Modality):
    name = "omop"
    run_priority = "10"
    feature_kinds = frozenset({"duckdb", "polars"})
    candidate_kinds = frozenset({"xgboost", "optuna", "scikitlearn"})
    baseline_trained_by_candidate = True

    def descriptions(self, spec: TaskSpec) -> Descriptions:
        outcome = task_outcome(spec).name
        return Descriptions(
            raw_records="new landed OMOP CDM batches (one DuckDB file, or CSV/Parquet files named by their tables): the "
            f"study population of {outcome!r}, one row per person; untidy data repaired and counted, a CDM that "
            "would corrupt the cohort quarantined with its reason.",
            validated_records="persons of every batch that passed the checks (one row per person, 0/1 outcome, "
            "persons new to the task).",
            suite="One row per person across batches, outcomes 0 or 1.",
            features=f"covariates from before each person's index date (prefixed {FEATURE_PREFIX}; demographics, "
            "conditions, drugs as ingredients, procedures, measurements, observations, visits) beside the keys and "
            "split; each batch's MEDS events and covariates cached once under cache/<task>/<batch>/.",
            feature_plan=f"the covariates held by at least {MIN_PERSONS} training persons, with their names, and "
            "the cohort's attrition.",
            candidate_model="trains L1 logistic regression (LASSO, C cross-validated on the training rows) and "
            "XGBoost once and keeps the LASSO unless XGBoost's AUROC advantage exceeds its uncertainty "
            "(cross-validated); both saved in safe formats (JSON, UBJ).",
            baseline_model="the L1 logistic regression (PatientLevelPrediction's default) trained by "
            "candidate_model in the same call; this asset points at it.",
        )

    def reader(self, spec: TaskSpec) -> OmopReader:
        return OmopReader()

    def validator(self, spec: TaskSpec, storage: Storage) -> Validator:
        return _validate

    def suite(self, spec: TaskSpec, records: pl.DataFrame) -> list[CheckFailure]:
        return row_failures(records, spec)

    def features(self, spec: TaskSpec, split: pl.DataFrame, storage: Storage) -> BuiltFeatures:
        cache_dir = storage.root.cache(spec.name)
        studies = {}
        for (batch,), rows in split.group_by(BATCH_COLUMN):
            studies[batch] = prepare_batch(
                storage.root.landing(spec.landing_folder) / batch, cache_dir / batch, spec, rows
            )
        train = split.filter(pl.col(SPLIT_COLUMN) == "train")
        held = pl.concat(
            [
                pl.read_parquet(cache_dir / b / "covariates.parquet").join(
                    rows.select(pl.col("person_id").cast(pl.Int64)), on="person_id"
                )
                for (b,), rows in train.group_by(BATCH_COLUMN)
            ]
        )
        counts = held.group_by("covariate_id").len().filter(pl.col("len") >= MIN_PERSONS)
        ids = sorted(counts["covariate_id"].to_list())
        if not ids:
            raise FeaturesRefused(
                f"{spec.name}: no covariate is held by {MIN_PERSONS} or more of the {train.height} training persons; "
                "nothing to learn from (a larger cohort, or more covariate domains)"
            )
        refs = pl.concat([pl.read_parquet(cache_dir / b / "covariate_ref.parquet") for b in studies]).unique(
            "covariate_id", keep="first"
        )
        names = dict(zip(refs["covariate_id"].to_list(), refs["name"].to_list(), strict=False))
        labelled = [studies[b] for b in sorted(studies)]
        plan = {
            "modality": "omop",
            "cache_dir": storage.root.relative(cache_dir),
            "columns": [f"c{i}" for i in ids],
            "names": {f"c{i}": names.get(i, f"covariate {i}") for i in ids},
            "study": {"attrition": summed_attrition(labelled), "batches": len(labelled)},
        }
        X = covariate_matrix(split, {**plan, "cache_dir": str(cache_dir)}, cache_dir)
        inputs = pl.DataFrame(X, schema=[FEATURE_PREFIX + c for c in plan["columns"]])
        frame = pl.concat([split.select(key_columns_in(split, spec)), inputs], how="horizontal")
        meta = {
            "n_rows": frame.height,
            "n_covariates": len(ids),
            "n_covariates_seen": held["covariate_id"].n_unique(),
            "batches": len(studies),
        }
        return BuiltFeatures(frame, plan, meta, {"n_covariates": len(ids), "min_persons": MIN_PERSONS})

    def train_candidate(self, spec: TaskSpec, features: pl.DataFrame, plan: dict, run: TrainingRun) -> TrainedModel:
        classes = labels.class_list(spec, features)
        columns = [FEATURE_PREFIX + c for c in plan["columns"]]
        parts = {}
        for part in ("train", "val"):
            rows = features.filter(pl.col(SPLIT_COLUMN) == part)
            parts[part] = (rows.select(columns).to_numpy(), labels.encode_labels(rows[spec.label], classes))
        meta = train_omop_models(*parts["train"], *parts["val"], spec.training, run.out_dir, plan["columns"])
        run.log.info(f"{spec.name}: {meta['selection']['reason']}")
        return TrainedModel(
            run.out_dir,
            {**meta, "classes": classes},
            plan,
            {"chosen": meta["params"]["chosen"], "selection": meta["selection"]["reason"]},
        )

    def baseline_of_candidate(self, spec: TaskSpec, candidate_dir, candidate: dict) -> TrainedModel:
        out = Path(candidate_dir) / "logistic"
        return TrainedModel(out, {**read_meta(out), "classes": candidate["classes"]}, candidate["plan"])

    def predictor_factory(self, spec: TaskSpec) -> PredictorFactory:
        return _predictor

    def explainer(self, spec: TaskSpec) -> Explainer:
        return explain_rows

    def extra_metrics(self, spec: TaskSpec, candidate: dict, split: pl.DataFrame) -> dict:
        """The cohort's attrition, the outcome's incidence, the time at risk, and both models' test AUROC."""
        plan = candidate["plan"]
        labelled = split.filter(pl.col(SPLIT_COLUMN) != "score")
        n, cases = labelled.height, int((labelled[spec.label] == "1").sum())
        test = split.filter(pl.col(SPLIT_COLUMN) == "test")
        y = (test[spec.label] == "1").to_numpy().astype(int)
        X = covariate_matrix(test, plan, Path(plan["cache_dir"]))
        models = {}
        for folder, shown in (("logistic", "l1_logistic_regression"), ("xgboost", "xgboost")):
            proba = predict_tabular(Path(candidate["dir"]) / folder, X)
            auroc = validation_score(y, proba)
            models[shown] = {
                "auroc": auroc,
                "auroc_ci": bootstrap_auroc_ci(y, proba, spec.evaluation.n_bootstrap, spec.evaluation.seed),
            }
        return {
            "omop": {
                "outcome": task_outcome(spec).name,
                "attrition": plan["study"]["attrition"],
                "persons": n,
                "outcome_count": cases,
                "incidence": cases / n if n else None,
                "time_at_risk_days": _summary(labelled["tar_days"].drop_nulls()),
                "persons_to_score": split.height - n,
                "n_covariates": len(plan["columns"]),
                "test_auroc": models,
            }
        }

    def card_extras(self, spec: TaskSpec, candidate: dict) -> list[tuple[str, str]]:
        top = top_covariates(Path(candidate["dir"]), candidate["plan"])
        return [("Top covariates by effect", top_covariates_html(top))]

    def test_sections(
        self, spec: TaskSpec, candidate: dict, test: pl.DataFrame, proba: np.ndarray, metrics: dict
    ) -> list[tuple[str, str]]:
        omop = metrics.get("omop") or {}
        return [
            ("Cohort attrition", attrition_html(omop.get("attrition") or [])),
            ("Outcome, time at risk and both models", study_html(omop)),
        ]

    def family_report(self, spec: TaskSpec, storage: Storage) -> None:
        """``reports/<spec>/outcomes.json`` and ``outcomes.html``: the outcomes of the spec side by side."""
        write_comparison(storage.root, spec.family.name, outcome_comparison(storage, spec.family))


MODALITY = OmopModality()
