"""Covariates before index: windows, roll-up, values, the wide matrix, and the no-leakage property."""

from __future__ import annotations

import tempfile
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meddiag_pipelines.omop.cdm import open_cdm
from meddiag_pipelines.omop.cohort import build_study
from meddiag_pipelines.omop.covariates import build_covariates, to_matrix
from meddiag_pipelines.omop.spec import CovariateSettings, StudySpec
from meddiag_pipelines_tests.omop_data import (
    CELECOXIB,
    DICLOFENAC,
    DICLOFENAC_TABLET,
    FEMALE,
    GI_BLEED,
    TODAY,
    tidy_tables,
    write_cdm,
)

PERSON2_INDEX = date(2012, 6, 1)


def _covariates(tmp_path: Path, tables: dict, population: pl.DataFrame, cov: CovariateSettings | None = None):
    with open_cdm(write_cdm(tmp_path, tables), today=TODAY) as cdm:
        return build_covariates(cdm, population, cov)


def _person2() -> pl.DataFrame:
    return pl.DataFrame({"person_id": [2], "index_date": [PERSON2_INDEX]})


def _values(covariates) -> dict[int, float]:
    return dict(covariates.data.select("covariate_id", "value").rows())


def test_windows_end_the_day_before_index(tmp_path: Path) -> None:
    found = _values(_covariates(tmp_path, tidy_tables(), _person2()))
    assert found == {
        FEMALE * 1000 + 1: 1.0,  # gender
        2: 42.0,  # age at index
        8 * 1000 + 3: 1.0,  # age group 40-44
        4001_000 + 110: 1.0,
        4001_000 + 111: 1.0,
        4001_000 + 112: 1.0,  # the day before index: every window
        4000_000 + 112: 1.0,  # 517 days before: any time prior only
        3000_000 + 140: 1.0,
        3000_000 + 142: 1.0,  # measured 31 and 152 days before: not in the 30-day window
        3000_000 + 150: 7.0,
        3000_000 + 152: 7.0,  # the last value
    }
    assert DICLOFENAC * 1000 + 120 not in found  # the index day's exposure is not a covariate


def test_drugs_roll_up_to_ingredients(tmp_path: Path) -> None:
    tables = tidy_tables()
    before = pl.DataFrame(
        {
            "drug_exposure_id": [9],
            "person_id": [2],
            "drug_concept_id": [DICLOFENAC_TABLET],
            "drug_exposure_start_date": [date(2012, 1, 15)],
        }
    )
    tables["drug_exposure"] = pl.concat([tables["drug_exposure"], before])
    found = _values(_covariates(tmp_path, tables, _person2()))
    assert {DICLOFENAC * 1000 + 120, DICLOFENAC * 1000 + 122} <= set(found)
    assert not any(cid // 1000 == DICLOFENAC_TABLET for cid in found)


def test_a_concept_table_without_classes_or_names_uses_drugs_as_recorded(tmp_path: Path) -> None:
    tables = tidy_tables()
    tables["concept"] = tables["concept"].select("concept_id")  # an extract that kept the ids only
    with open_cdm(write_cdm(tmp_path, tables), today=TODAY) as cdm:
        covariates = build_covariates(cdm, _person2())
    assert DICLOFENAC * 1000 + 120 not in _values(covariates)  # not rolled up: the recorded drug is kept
    assert any("no concept_class_id" in note for note in covariates.notes)


def test_events_outside_observation_are_not_covariates(tmp_path: Path) -> None:
    tables = tidy_tables()
    outside = pl.DataFrame(
        {
            "condition_occurrence_id": [9],
            "person_id": [2],
            "condition_concept_id": [4002],
            "condition_start_date": [date(1999, 6, 1)],
        }
    )
    tables["condition_occurrence"] = pl.concat([tables["condition_occurrence"], outside])
    assert not any(cid // 1000 == 4002 for cid in _values(_covariates(tmp_path, tables, _person2())))


def test_configured_window_and_names(tmp_path: Path) -> None:
    cov = CovariateSettings(windows=[7], domains=["condition"], demographics=False)
    covariates = _covariates(tmp_path, tidy_tables(), _person2(), cov)
    assert _values(covariates) == {4001_000 + 110: 1.0}
    assert covariates.ref.select("covariate_id", "name").rows() == [
        (4001_000 + 110, "condition presence: condition B, 7 days before index")
    ]


def test_an_event_the_day_before_index_changes_covariates(tmp_path: Path) -> None:
    """The counterpart of the property below: the comparison it makes does see a change before index."""
    tables = tidy_tables()
    base = _values(_covariates(tmp_path / "a", tables, _person2()))
    day_before = pl.DataFrame(
        {
            "condition_occurrence_id": [9],
            "person_id": [2],
            "condition_concept_id": [GI_BLEED],
            "condition_start_date": [PERSON2_INDEX - timedelta(days=1)],
        }
    )
    tables["condition_occurrence"] = pl.concat([tables["condition_occurrence"], day_before])
    changed = _values(_covariates(tmp_path / "b", tables, _person2()))
    assert set(changed) - set(base) == {GI_BLEED * 1000 + 110, GI_BLEED * 1000 + 111, GI_BLEED * 1000 + 112}


def test_to_matrix_fills_presence_with_zero_and_values_with_null(tmp_path: Path) -> None:
    population = pl.DataFrame({"person_id": [1, 2], "index_date": [date(2010, 1, 1), PERSON2_INDEX]})
    covariates = _covariates(tmp_path, tidy_tables(), population)
    wide = to_matrix(covariates, population["person_id"])
    assert wide["person_id"].to_list() == [1, 2]
    assert wide["c4001110"].to_list() == [0.0, 1.0]
    assert wide["c3000150"].to_list() == [None, 7.0]
    assert wide["c2"].to_list() == [50.0, 42.0]
    assert to_matrix(covariates, population["person_id"], min_persons=2).columns == ["person_id", "c2"]


def test_population_with_repeated_persons_is_refused(tmp_path: Path) -> None:
    twice = pl.concat([_person2(), _person2()])
    with pytest.raises(ValueError, match="repeats a person_id"):
        _covariates(tmp_path, tidy_tables(), twice)


# --- the property: nothing on or after index ever contributes -------------------------------------------------

EPOCH = date(2000, 1, 1)
POOL = [CELECOXIB, DICLOFENAC, DICLOFENAC_TABLET, GI_BLEED, 4000, 4001, 3000, 0]
EVENT_TABLES = {
    "condition": ("condition_occurrence", "condition_concept_id", "condition_start_date"),
    "drug": ("drug_exposure", "drug_concept_id", "drug_exposure_start_date"),
    "procedure": ("procedure_occurrence", "procedure_concept_id", "procedure_date"),
    "measurement": ("measurement", "measurement_concept_id", "measurement_date"),
    "observation": ("observation", "observation_concept_id", "observation_date"),
    "visit": ("visit_occurrence", "visit_concept_id", "visit_start_date"),
}
event = st.tuples(
    st.sampled_from(sorted(EVENT_TABLES)),
    st.sampled_from(POOL),
    st.integers(-500, 8000),
    st.one_of(st.none(), st.floats(-50, 50, allow_nan=False)),
)


@st.composite
def cases(draw):
    """A small random CDM, a random spec whose target person 1 always meets, and events on or after index."""
    target_domain = draw(st.sampled_from(["condition", "drug", "measurement", "procedure"]))
    target = draw(st.sampled_from(POOL[:-1]))
    prior = draw(st.integers(0, 400))
    people = []
    for pid in range(1, draw(st.integers(1, 4)) + 1):
        start = draw(st.integers(0, 3000))
        length = draw(st.integers(prior + 1, 8000 - start))
        events = [e for e in draw(st.lists(event, max_size=12)) if e[1] != target]
        people.append(
            {"id": pid, "birth": draw(st.integers(1930, 1999)), "start": start, "length": length, "events": events}
        )
    first = people[0]
    first["events"].append((target_domain, target, first["start"] + draw(st.integers(prior, first["length"])), None))
    spec = StudySpec.model_validate(
        {
            "cohort": {
                "target": {"domain": target_domain, "concepts": [target], "descendants": draw(st.booleans())},
                "prior_observation_days": prior,
                "exclude_prior_outcome": draw(st.booleans()),
            },
            "outcomes": [{"name": "o", "domain": "condition", "concepts": [GI_BLEED]}],
            "time_at_risk": {"start": draw(st.integers(0, 30)), "end": draw(st.integers(31, 400))},
            "covariates": {
                "windows": draw(
                    st.lists(st.one_of(st.none(), st.integers(1, 800)), min_size=1, max_size=3, unique=True)
                )
            },
        }
    )
    later = draw(st.lists(st.tuples(st.integers(0, 10), event, st.integers(0, 3000)), min_size=1, max_size=10))
    return people, spec, later


def _tables(people: list[dict], extra: list[tuple[int, tuple]] = ()) -> dict[str, pl.DataFrame]:
    tables = tidy_tables()
    tables["person"] = pl.DataFrame(
        {
            "person_id": [p["id"] for p in people],
            "gender_concept_id": [8507] * len(people),
            "year_of_birth": [p["birth"] for p in people],
        }
    )
    tables["observation_period"] = pl.DataFrame(
        {
            "person_id": [p["id"] for p in people],
            "observation_period_start_date": [EPOCH + timedelta(days=p["start"]) for p in people],
            "observation_period_end_date": [EPOCH + timedelta(days=p["start"] + p["length"]) for p in people],
        }
    )
    rows = {name: [] for name in EVENT_TABLES}
    for pid, (domain, concept, day, value) in [(p["id"], e) for p in people for e in p["events"]] + list(extra):
        rows[domain].append((pid, concept, EPOCH + timedelta(days=day), value))
    for domain, (table, concept, day) in EVENT_TABLES.items():
        tables[table] = pl.DataFrame(
            rows[domain],
            schema={"person_id": pl.Int64, concept: pl.Int64, day: pl.Date, "value_as_number": pl.Float64},
            orient="row",
        )
    return tables


@settings(max_examples=30, deadline=None)
@given(cases())
def test_no_event_on_or_after_index_contributes(case) -> None:
    people, spec, later = case
    with tempfile.TemporaryDirectory() as tmp:
        with open_cdm(write_cdm(Path(tmp) / "a", _tables(people)), today=TODAY) as cdm:
            study = build_study(cdm, spec)
            population = study.population.select("person_id", "index_date")
            before = build_covariates(cdm, population, spec.covariates)
        assert population.height >= 1  # person 1 always enters: the property is never vacuous
        extra = []
        for pick, (domain, concept, _, value), offset in later:
            pid, index = population.row(pick % population.height)
            day = (index - EPOCH).days + offset
            if EPOCH + timedelta(days=day) <= TODAY:
                extra.append((pid, (domain, concept, day, value)))
        with open_cdm(write_cdm(Path(tmp) / "b", _tables(people, extra)), today=TODAY) as cdm:
            after = build_covariates(cdm, population, spec.covariates)
    assert after.data.equals(before.data)
    assert after.ref.equals(before.ref)


def test_to_matrix_with_a_trained_models_columns(tmp_path: Path) -> None:
    covariates = _covariates(tmp_path, tidy_tables(), _person2())
    wide = to_matrix(covariates, pl.Series([2, 7]), covariate_ids=[4001_000 + 110, 99_000 + 110, 99_000 + 150])
    assert wide.columns == ["person_id", "c4001110", "c99110", "c99150"]
    assert wide.rows() == [(2, 1.0, 0.0, None), (7, 0.0, 0.0, None)]
