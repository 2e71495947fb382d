"""The target cohort and the study population of each outcome, as OHDSI PatientLevelPrediction builds them.

* **Index**: the person's first event of the target concept set (first exposure only), any date.
* **Prior observation**: an observation period contains the index and began at least
  ``prior_observation_days`` before it (PLP's ``washoutPeriod``: ``index - start >= days``).
* **Age** at index: index year minus birth year (FeatureExtraction's age), within ``age.min..age.max``.
* **Alive at index**: no death recorded before the index date.

Those persons are the target cohort. For each outcome, with ``tar_start = index + start`` and
``tar_end = min(index + end, observation period end, death)``:

* **Prior outcome** (``exclude_prior_outcome``): any outcome event, all time back, before ``tar_start``
  removes the person (PLP's ``removeSubjectsWithPriorOutcome`` with the look-back unbounded).
* **Time at risk**: ``tar_days = tar_end - tar_start + 1`` must reach ``max(min_days, 1)``, unless the
  outcome happened in it (PLP's ``requireTimeAtRisk`` with ``includeAllOutcomes``).
* **Outcome**: 1 when an outcome event falls in ``[tar_start, tar_end]``; ``days_to_<name>`` counts from index
  to the first such event.

Outcome and target events are used whether or not they fall inside an observation period (as a cohort table
holds them); covariates use only events inside one (:mod:`.covariates`).
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from meddiag_pipelines.omop.cdm import DOMAINS, Cdm, CdmRefused
from meddiag_pipelines.omop.spec import ConceptSet, StudySpec


@dataclass
class Study:
    """``population``: the target cohort, one row per person (``person_id``, ``index_date``, ``age_at_index``,
    ``gender_concept_id``, ``observation_start``, ``observation_end``) and per outcome ``<name>``:
    ``eligible_<name>`` (in that outcome's study population), ``outcome_<name>`` (0/1), ``tar_days_<name>``
    and ``days_to_<name>`` (null without the outcome). ``attrition``: persons after each criterion, in order
    (``outcome`` is None for the target cohort's criteria). ``outcome_counts``: outcomes per study population."""

    spec: StudySpec
    population: pl.DataFrame
    attrition: list[dict]
    outcome_counts: dict[str, int]

    def for_outcome(self, name: str) -> pl.DataFrame:
        """The study population of one outcome, with its columns under plain names (``outcome``, ``tar_days``,
        ``days_to_outcome``)."""
        if name not in self.outcome_counts:
            raise KeyError(f"no outcome named {name!r} in this study")
        return self.population.filter(pl.col(f"eligible_{name}")).select(
            "person_id",
            "index_date",
            "age_at_index",
            "gender_concept_id",
            pl.col(f"outcome_{name}").alias("outcome"),
            pl.col(f"tar_days_{name}").alias("tar_days"),
            pl.col(f"days_to_{name}").alias("days_to_outcome"),
        )

    @property
    def target_persons(self) -> int:
        return self.population.height


def concept_ids_sql(cdm: Cdm, concepts: ConceptSet, role: str) -> str:
    """A SQL subquery of the concept ids of a concept set; refuses when descendants are asked for and the
    batch has no ``concept_ancestor``."""
    ids = ", ".join(str(int(c)) for c in concepts.concepts)
    if not concepts.descendants:
        return f"SELECT unnest([{ids}]::BIGINT[])"
    cdm.require_ancestor(f"the {role} concept set asks for descendants")
    return (
        f"SELECT descendant_concept_id FROM concept_ancestor WHERE ancestor_concept_id IN ({ids}) "
        f"UNION SELECT unnest([{ids}]::BIGINT[])"
    )


def events_sql(cdm: Cdm, concepts: ConceptSet, role: str) -> str:
    """``person_id, event_date`` of the events of a concept set."""
    if concepts.domain not in cdm.domains:
        table = DOMAINS[concepts.domain].table
        raise CdmRefused(f"{cdm.source.name}: no {table} table, needed by the {role} concept set")
    return (
        f"SELECT person_id, event_date FROM ev_{concepts.domain} "
        f"WHERE concept_id IN ({concept_ids_sql(cdm, concepts, role)})"
    )


def _count(cdm: Cdm, table: str) -> int:
    return cdm.con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def _target_cohort(cdm: Cdm, spec: StudySpec) -> list[dict]:
    """Create the temp table ``_target``; returns the attrition of its criteria."""
    con, cohort = cdm.con, spec.cohort
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _first AS SELECT person_id, min(event_date) AS index_date "
        f"FROM ({events_sql(cdm, cohort.target, 'target')}) GROUP BY person_id"
    )
    attrition = [{"criterion": "first target event (index)", "persons": _count(cdm, "_first"), "outcome": None}]
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _observed AS SELECT f.person_id, f.index_date, o.start_date AS "
        "observation_start, o.end_date AS observation_end FROM _first f JOIN observation_period o "
        "ON o.person_id = f.person_id AND f.index_date BETWEEN o.start_date AND o.end_date "
        f"WHERE date_diff('day', o.start_date, f.index_date) >= {cohort.prior_observation_days} "
        "QUALIFY row_number() OVER (PARTITION BY f.person_id ORDER BY o.start_date, o.end_date DESC) = 1"
    )
    attrition.append(
        {
            "criterion": f"observed at index with at least {cohort.prior_observation_days} days before it",
            "persons": _count(cdm, "_observed"),
            "outcome": None,
        }
    )
    age = cohort.age
    age_filter = f"age_at_index BETWEEN {age.min} AND {age.max}" if age else "true"
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _aged AS SELECT b.*, year(b.index_date) - p.year_of_birth AS age_at_index, "
        "p.gender_concept_id, p.death_date FROM _observed b JOIN person p USING (person_id) "
        f"WHERE {age_filter}"
    )
    if age:
        attrition.append(
            {
                "criterion": f"aged {age.min} to {age.max} at index",
                "persons": _count(cdm, "_aged"),
                "outcome": None,
            }
        )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _target AS SELECT * FROM _aged "
        "WHERE death_date IS NULL OR death_date >= index_date"
    )
    attrition.append({"criterion": "alive at index", "persons": _count(cdm, "_target"), "outcome": None})
    return attrition


def _outcome_columns(cdm: Cdm, spec: StudySpec, index: int) -> pl.DataFrame:
    """One outcome's columns for every person of ``_target``."""
    out, tar = spec.outcomes[index], spec.time_at_risk
    name = out.name
    frame = cdm.con.execute(
        f"""
        WITH t AS (
            SELECT person_id, index_date + INTERVAL ({tar.start}) DAY AS tar_start,
                   least(index_date + INTERVAL ({tar.end}) DAY, observation_end,
                         coalesce(death_date, DATE '9999-12-31'))
                       AS tar_end, index_date
            FROM _target
        ), o AS ({events_sql(cdm, out, f"outcome {name}")}),
        scored AS (
            SELECT t.person_id, t.index_date, CAST(t.tar_start AS DATE) AS tar_start,
                   CAST(t.tar_end AS DATE) AS tar_end,
                   count(o.person_id) FILTER (WHERE o.event_date < t.tar_start) AS prior_events,
                   min(o.event_date) FILTER (WHERE o.event_date BETWEEN t.tar_start AND t.tar_end) AS first_event
            FROM t LEFT JOIN o ON o.person_id = t.person_id
            GROUP BY ALL
        )
        SELECT person_id, prior_events > 0 AS prior_outcome,
               date_diff('day', tar_start, tar_end) + 1 AS tar_days,
               date_diff('day', index_date, first_event) AS days_to
        FROM scored
        """
    ).pl()
    min_days = max(tar.min_days, 1)
    has = pl.col("days_to").is_not_null()
    no_prior = ~pl.col("prior_outcome") if spec.cohort.exclude_prior_outcome else pl.lit(True)
    return frame.select(
        "person_id",
        pl.col("prior_outcome").alias(f"_prior_{name}"),
        (no_prior & ((pl.col("tar_days") >= min_days) | has)).alias(f"eligible_{name}"),
        has.cast(pl.Int8).alias(f"outcome_{name}"),
        pl.col("tar_days").cast(pl.Int32).alias(f"tar_days_{name}"),
        pl.col("days_to").cast(pl.Int32).alias(f"days_to_{name}"),
    )


def build_study(cdm: Cdm, spec: StudySpec) -> Study:
    """The target cohort and each outcome's study population (see the module docstring)."""
    attrition = _target_cohort(cdm, spec)
    population = cdm.con.execute(
        "SELECT person_id, CAST(index_date AS DATE) AS index_date, CAST(age_at_index AS INTEGER) AS age_at_index, "
        "gender_concept_id, observation_start, observation_end FROM _target ORDER BY person_id"
    ).pl()
    counts = {}
    min_days = max(spec.time_at_risk.min_days, 1)
    for i, out in enumerate(spec.outcomes):
        cols = _outcome_columns(cdm, spec, i)
        population = population.join(cols, on="person_id", how="left")
        name = out.name
        if spec.cohort.exclude_prior_outcome:
            attrition.append(
                {
                    "criterion": f"no {name} before the time at risk",
                    "persons": population.filter(~pl.col(f"_prior_{name}")).height,
                    "outcome": name,
                }
            )
        eligible = population.filter(pl.col(f"eligible_{name}"))
        attrition.append(
            {
                "criterion": f"at least {min_days} days at risk, or {name} in them",
                "persons": eligible.height,
                "outcome": name,
            }
        )
        counts[name] = int(eligible[f"outcome_{name}"].sum())
        population = population.drop(f"_prior_{name}")
    return Study(spec, population, attrition, counts)
