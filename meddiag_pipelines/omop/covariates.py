"""Covariates from before the index date, in DuckDB, as a long sparse table and a reference of their names.

Never from an event on or after the index day: every window ends the day before index (``event_date <=
index_date - 1``), a window of ``w`` days starts ``w`` days before index, and ``None`` is any time prior. Only
events inside an observation period are used, and concept 0 (unmapped) is not a covariate.

Analyses (``covariate_id = concept_id * 1000 + analysis_id``, as FeatureExtraction numbers them):

* ``1`` gender (the gender concept, value 1), ``2`` age at index in years (concept 0, the age as value),
  ``3`` age group (concept = age // group width, value 1);
* per window ``i`` (its position in ``settings.windows``) and domain: ``100 + 10*k + i`` with ``k`` = 1 condition,
  2 drug (rolled up to RxNorm ingredients through ``concept_ancestor``; a drug with no ingredient counts as
  itself), 3 procedure, 4 measurement (presence), 5 measurement (the last value in the window, where one
  exists), 6 observation, 7 visits (concept 0, their number as value).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from meddiag_pipelines.omop.cdm import Cdm
from meddiag_pipelines.omop.spec import CovariateSettings

DOMAIN_CODES = {"condition": 1, "drug": 2, "procedure": 3, "measurement": 4, "observation": 6, "visit": 7}
MEASUREMENT_VALUE = 5
KINDS = {1: "presence", 2: "presence", 3: "presence", 4: "presence", 5: "last value", 6: "presence", 7: "count"}
# Analyses whose absence is unknown rather than zero in the feature matrix.
VALUE_ANALYSES = frozenset({2} | {100 + 10 * MEASUREMENT_VALUE + i for i in range(10)})


@dataclass
class Covariates:
    """``data``: person_id, covariate_id, value (one row per non-zero covariate of a person). ``ref``:
    covariate_id, analysis_id, domain, concept_id, window_days (null: any time prior), kind, name."""

    data: pl.DataFrame
    ref: pl.DataFrame
    notes: list[str] = field(default_factory=list)


def _window_table(settings: CovariateSettings) -> str:
    rows = ", ".join(f"({i}, {'NULL' if w is None else w})" for i, w in enumerate(settings.windows))
    return f"(SELECT * FROM (VALUES {rows}) AS w(window_index, days))"


def _concept_columns(cdm: Cdm) -> set[str]:
    """The columns the CDM's ``concept`` table holds (none without the table): an extract may leave some out."""
    if not cdm.has("concept"):
        return set()
    return {row[0] for row in cdm.con.execute("DESCRIBE typed_concept").fetchall()}


def _ingredients_sql(cdm: Cdm) -> str | None:
    """drug concept -> RxNorm ingredient, or None without the vocabulary tables (or the concept classes)."""
    if not (cdm.has("concept_ancestor") and {"concept_id", "concept_class_id"} <= _concept_columns(cdm)):
        return None
    return (
        "SELECT ca.descendant_concept_id AS drug, ca.ancestor_concept_id AS ingredient FROM concept_ancestor ca "
        "JOIN typed_concept c ON c.concept_id = ca.ancestor_concept_id WHERE c.concept_class_id = 'Ingredient' "
        "UNION SELECT concept_id, concept_id FROM typed_concept WHERE concept_class_id = 'Ingredient'"
    )


def _domain_sql(cdm: Cdm, domain: str, settings: CovariateSettings, ingredients: str | None) -> str:
    """One scan of a domain's events before index, fanned out over the windows."""
    k = DOMAIN_CODES[domain]
    windows = _window_table(settings)
    concept = "e.concept_id"
    join = ""
    if domain == "drug" and ingredients is not None:
        join = f"LEFT JOIN ({ingredients}) ing ON ing.drug = e.concept_id"
        concept = "coalesce(ing.ingredient, e.concept_id)"
    before = (
        f"SELECT e.person_id, {concept} AS concept_id, e.event_date, e.value, "
        "date_diff('day', e.event_date, p.index_date) AS days_before "
        f"FROM ev_{domain} e JOIN _pop p ON p.person_id = e.person_id {join} "
        "WHERE e.in_observation AND e.concept_id <> 0 AND e.event_date <= p.index_date - 1"
    )
    windowed = (
        f"SELECT b.*, w.window_index FROM ({before}) b JOIN {windows} w ON w.days IS NULL OR b.days_before <= w.days"
    )
    if domain == "visit":
        return (
            f"SELECT person_id, {100 + 10 * k} + window_index AS covariate_id, CAST(count(*) AS DOUBLE) AS value "
            f"FROM ({windowed}) GROUP BY person_id, window_index"
        )
    presence = (
        f"SELECT DISTINCT person_id, concept_id * 1000 + {100 + 10 * k} + window_index AS covariate_id, 1.0 AS value "
        f"FROM ({windowed})"
    )
    if domain != "measurement":
        return presence
    last = (
        f"SELECT person_id, concept_id * 1000 + {100 + 10 * MEASUREMENT_VALUE} + window_index AS covariate_id, "
        f"arg_max(value, (event_date, value)) AS value FROM ({windowed}) WHERE value IS NOT NULL "
        "GROUP BY person_id, concept_id, window_index"
    )
    return f"{presence} UNION ALL {last}"


def _demographics_sql(settings: CovariateSettings) -> str:
    age = "year(p.index_date) - q.year_of_birth"
    return (
        "SELECT p.person_id, q.gender_concept_id * 1000 + 1 AS covariate_id, 1.0 AS value FROM _pop p "
        "JOIN person q USING (person_id) WHERE q.gender_concept_id IS NOT NULL AND q.gender_concept_id <> 0 "
        f"UNION ALL SELECT p.person_id, 2, CAST({age} AS DOUBLE) FROM _pop p JOIN person q USING (person_id) "
        f"UNION ALL SELECT p.person_id, ({age}) // {settings.age_group_years} * 1000 + 3, 1.0 "
        "FROM _pop p JOIN person q USING (person_id)"
    )


def _reference(cdm: Cdm, settings: CovariateSettings) -> pl.DataFrame:
    """Names of the covariates in ``_covariates``."""
    analyses = [
        (1, "demographics", None, "gender"),
        (2, "demographics", None, "age"),
        (3, "demographics", None, "age group"),
    ]
    for domain, k in DOMAIN_CODES.items():
        codes = [(k, domain)] + ([(MEASUREMENT_VALUE, "measurement")] if domain == "measurement" else [])
        for code, dom in codes:
            for i, w in enumerate(settings.windows):
                analyses.append((100 + 10 * code + i, dom, w, KINDS[code]))
    values = ", ".join(f"({a}, '{d}', {'NULL' if w is None else w}, '{kind}')" for a, d, w, kind in analyses)
    named = {"concept_id", "concept_name"} <= _concept_columns(cdm)
    names = "typed_concept" if named else "(SELECT NULL::BIGINT AS concept_id, NULL AS concept_name)"
    g = settings.age_group_years
    return cdm.con.execute(
        f"""
        WITH a AS (SELECT * FROM (VALUES {values}) AS a(analysis_id, domain, window_days, kind)),
        ids AS (SELECT DISTINCT covariate_id, covariate_id % 1000 AS analysis_id, covariate_id // 1000 AS concept_id
                FROM _covariates)
        SELECT ids.covariate_id, ids.analysis_id, a.domain, ids.concept_id, a.window_days, a.kind,
          CASE
            WHEN ids.analysis_id = 2 THEN 'age at index (years)'
            WHEN ids.analysis_id = 3
                THEN 'age group ' || (ids.concept_id * {g}) || '-' || (ids.concept_id * {g} + {g - 1})
            WHEN ids.analysis_id = 1 THEN 'gender: ' || coalesce(c.concept_name, 'concept ' || ids.concept_id)
            ELSE a.domain || ' ' || a.kind || ': '
                 || CASE WHEN ids.concept_id = 0 THEN 'all'
                         ELSE coalesce(c.concept_name, 'concept ' || ids.concept_id) END
                 || CASE WHEN a.window_days IS NULL THEN ', any time prior'
                         ELSE ', ' || a.window_days || ' days before index' END
          END AS name
        FROM ids JOIN a USING (analysis_id) LEFT JOIN {names} c ON c.concept_id = ids.concept_id
        ORDER BY ids.covariate_id
        """
    ).pl()


def build_covariates(cdm: Cdm, population: pl.DataFrame, settings: CovariateSettings | None = None) -> Covariates:
    """Covariates of the persons of ``population`` (``person_id``, ``index_date``; one row per person)."""
    settings = settings or CovariateSettings()
    pop = population.select(pl.col("person_id").cast(pl.Int64), pl.col("index_date").cast(pl.Date))
    if pop["person_id"].n_unique() != pop.height:
        raise ValueError("the population repeats a person_id: covariates are per person and index date")
    con = cdm.con
    con.register("_pop_arrow", pop.to_arrow())
    con.execute("CREATE OR REPLACE TEMP TABLE _pop AS SELECT * FROM _pop_arrow")
    con.unregister("_pop_arrow")
    notes = []
    ingredients = _ingredients_sql(cdm)
    if ingredients is None and "drug" in settings.domains:
        notes.append(
            "no concept/concept_ancestor (or no concept_class_id): drugs are used as recorded, not rolled up to "
            "ingredients"
        )
    parts = [_demographics_sql(settings)] if settings.demographics else []
    parts += [_domain_sql(cdm, d, settings, ingredients) for d in settings.domains if d in cdm.domains]
    if not parts:
        parts = ["SELECT NULL::BIGINT AS person_id, NULL::BIGINT AS covariate_id, NULL::DOUBLE AS value WHERE false"]
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _covariates AS SELECT CAST(person_id AS BIGINT) AS person_id, "
        "CAST(covariate_id AS BIGINT) AS covariate_id, CAST(value AS DOUBLE) AS value "
        f"FROM ({' UNION ALL '.join(parts)}) ORDER BY person_id, covariate_id"
    )
    data = con.execute("SELECT * FROM _covariates").pl()
    return Covariates(data, _reference(cdm, settings), notes)


def to_matrix(
    covariates: Covariates,
    persons: pl.Series | None = None,
    min_persons: int = 1,
    covariate_ids: list[int] | None = None,
) -> pl.DataFrame:
    """One row per person (``persons`` in that order, else every person with a covariate, sorted), one column
    ``c<covariate_id>`` per covariate held by at least ``min_persons`` persons, or exactly ``covariate_ids``
    (a trained model's columns, for scoring a later batch): 0 where a person lacks a presence or count
    covariate, null where a value covariate (age, last measurement) is unknown."""
    data = covariates.data
    if covariate_ids is not None:
        ids = list(covariate_ids)
        data = data.filter(pl.col("covariate_id").is_in(ids))
    else:
        if min_persons > 1:
            held = data.group_by("covariate_id").len().filter(pl.col("len") >= min_persons)["covariate_id"]
            data = data.filter(pl.col("covariate_id").is_in(held.implode()))
        ids = sorted(data["covariate_id"].unique().to_list())
    rows = pl.DataFrame({"person_id": persons if persons is not None else data["person_id"].unique().sort()})
    wide = data.with_columns(pl.format("c{}", "covariate_id").alias("column")).pivot(
        on="column", index="person_id", values="value"
    )
    out = rows.with_columns(pl.col("person_id").cast(pl.Int64)).join(wide, on="person_id", how="left")
    absent = [pl.lit(None, pl.Float64).alias(f"c{i}") for i in ids if f"c{i}" not in out.columns]
    out = out.with_columns(absent) if absent else out
    zero_fill = [f"c{i}" for i in ids if i % 1000 not in VALUE_ANALYSES]
    out = out.with_columns(pl.col(zero_fill).fill_null(0.0)) if zero_fill else out
    return out.select("person_id", *[f"c{i}" for i in ids])
