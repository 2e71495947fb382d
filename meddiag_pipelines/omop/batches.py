"""An omop task's landed CDM batches: the study rows the reader appends, and each batch's cache of derived files.

The reader opens a batch (:func:`~meddiag_pipelines.omop.cdm.open_cdm`) and builds its study
(:func:`~meddiag_pipelines.omop.cohort.build_study`): one row per person of the target cohort, ``person_id`` (the
id and the patient), ``outcome`` ("1"/"0"; null for a person whose time at risk has not run its course yet, a
case to score), ``age_at_index``, ``gender``, ``tar_days`` and ``index_date`` (kept for the covariates, never
shown). The features step fills ``cache/<task>/<batch>/`` once per batch: the MEDS events (``meds.parquet``),
the covariates before each person's index (``covariates.parquet``, long, and ``covariate_ref.parquet``) and the
study's aggregates (``study.json``: attrition, outcome count, untidy-data counts). A PostgreSQL batch's snapshot
(``cdm_snapshot.duckdb``) is taken there when the reader first opens it, and read by every later step."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from meddiag_pipelines.atomic import atomic_write, atomic_write_json
from meddiag_pipelines.ingestion.errors import BatchRejected
from meddiag_pipelines.ingestion.landing import LandedBatch, display_name
from meddiag_pipelines.omop.cdm import CdmRefused, open_cdm
from meddiag_pipelines.omop.cohort import Study, build_study
from meddiag_pipelines.omop.covariates import build_covariates
from meddiag_pipelines.omop.meds import write_meds
from meddiag_pipelines.omop.spec import CovariateSettings, Outcome, StudySpec, TimeAtRisk
from meddiag_pipelines.specs import TaskSpec

GENDERS = {8507: "male", 8532: "female"}  # OMOP gender concepts; others are "other or unknown"
CACHE_FILES = ("meds.parquet", "covariates.parquet", "covariate_ref.parquet", "study.json")
log = logging.getLogger(__name__)
SNAPSHOT = "cdm_snapshot.duckdb"  # a PostgreSQL batch's copy (omop/pgsource.py), taken on its first reading


def batch_cache(batch: LandedBatch) -> Path:
    """The batch's ``cache/<task>/<batch>/`` in the data root it landed in (``<root>/landing/<task>/<batch>``)."""
    return batch.path.parents[2] / "cache" / batch.task / batch.batch_id


def task_outcome(spec: TaskSpec) -> Outcome:
    """The one outcome of an omop task (a spec of several outcomes is one task per outcome: ``spec.tasks()``)."""
    if len(spec.outcomes) != 1:
        raise ValueError(
            f"{spec.name}: a task has one outcome; a spec of several is one task per outcome (TaskSpec.tasks())"
        )
    return spec.outcomes[0]


def study_spec(spec: TaskSpec) -> StudySpec:
    """The study part of an omop task spec: its target cohort and its one outcome."""
    return StudySpec(
        cohort=spec.cohort,
        outcomes=[task_outcome(spec)],
        time_at_risk=spec.time_at_risk or TimeAtRisk(),
        covariates=spec.covariates or CovariateSettings(),
    )


def study_rows(study: Study) -> pl.DataFrame:
    """The population of the (one) outcome, labelled, plus the target persons whose time at risk is shorter
    than the minimum and holds no outcome: their follow-up is not over, so they are unlabelled cases to score
    (build_study does not keep the prior-outcome flag, so one with an earlier outcome is scored too)."""
    name = study.spec.outcomes[0].name
    eligible = pl.col(f"eligible_{name}")
    short = (
        ~eligible
        & (pl.col(f"tar_days_{name}") < max(study.spec.time_at_risk.min_days, 1))
        & pl.col(f"days_to_{name}").is_null()
    )
    return study.population.filter(eligible | short).select(
        pl.col("person_id").cast(pl.Int64),
        pl.when(eligible).then(pl.col(f"outcome_{name}").cast(pl.String)).alias("outcome"),
        pl.col("age_at_index").cast(pl.Int32),
        pl.col("gender_concept_id")
        .replace_strict(GENDERS, default="other or unknown", return_dtype=pl.String)
        .alias("gender"),
        pl.col(f"tar_days_{name}").cast(pl.Int32).alias("tar_days"),
        pl.col("index_date").cast(pl.Date),
    )


def empty_study_reason(study: Study) -> str:
    """Why a batch gives no person to learn from or to score: the first criterion that leaves no one."""
    spec = study.spec
    emptied = next((a for a in study.attrition if a["persons"] == 0), study.attrition[-1])
    reason = f"no person in the study population: '{emptied['criterion']}' leaves none"
    if emptied is study.attrition[0]:
        target = spec.cohort.target
        concepts = ", ".join(str(c) for c in target.concepts)
        below = " or their descendants" if target.descendants else ""
        reason += f" (the CDM holds no {target.domain} event of concept(s) {concepts}{below})"
    return reason


@dataclass
class OmopReader:
    """Reads one run's CDM batches into study rows, summing the untidy-data counts (never values)."""

    counts: dict[str, int] = field(default_factory=dict)

    def __call__(self, batch: LandedBatch, spec: TaskSpec) -> pl.DataFrame:
        try:
            with open_cdm(batch.path, snapshot=batch_cache(batch) / SNAPSHOT) as cdm:
                study = build_study(cdm, study_spec(spec))
                for key, n in cdm.counts.items():
                    if n and not key.endswith(".persons"):
                        self.counts[key] = self.counts.get(key, 0) + n
                repairs = f"{len(cdm.notes)} untidy part(s) repaired or set aside: " + "; ".join(cdm.notes)
                log.info(f"{spec.name}: batch {batch.batch_id}: CDM {cdm.version}, {repairs if cdm.notes else 'tidy'}")
        except CdmRefused as exc:
            # display_name: a file or schema name it quotes may hold control characters or bytes that are not text
            raise BatchRejected(batch.batch_id, f"CDM refused: {display_name(str(exc))}") from None
        rows = study_rows(study)
        if rows.is_empty():
            raise BatchRejected(batch.batch_id, empty_study_reason(study))
        return rows

    def metadata(self) -> dict:
        return {"cdm_repairs": sum(self.counts.values()), **{f"cdm.{k}": n for k, n in sorted(self.counts.items())}}


def _write_parquet(path: Path, frame: pl.DataFrame) -> None:
    atomic_write(path, lambda tmp: frame.write_parquet(tmp))


def prepare_batch(landed: Path, cache: Path, spec: TaskSpec, persons: pl.DataFrame) -> dict:
    """Fill ``cache`` (a batch's folder) once from the landed CDM at ``landed``: MEDS events, the covariates of
    ``persons`` (``person_id``, ``index_date``) and the study's aggregates. Returns ``study.json``'s content."""
    if all((cache / f).is_file() for f in CACHE_FILES):
        return json.loads((cache / "study.json").read_text(encoding="utf-8"))
    study = study_spec(spec)
    cache.mkdir(parents=True, exist_ok=True)
    with open_cdm(landed, snapshot=cache / SNAPSHOT) as cdm:
        built = build_study(cdm, study)
        write_meds(cdm, cache / "meds.parquet")
        covariates = build_covariates(cdm, persons.select("person_id", "index_date"), study.covariates)
        summary = {
            "attrition": built.attrition,
            "outcome_counts": built.outcome_counts,
            "cdm_version": cdm.version,
            "notes": {k: n for k, n in cdm.counts.items() if n},
            "covariate_notes": covariates.notes,
        }
    _write_parquet(cache / "covariates.parquet", covariates.data)
    _write_parquet(cache / "covariate_ref.parquet", covariates.ref)
    atomic_write_json(cache / "study.json", summary)
    return summary
