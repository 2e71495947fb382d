"""Cohorts and study populations: the Book of OHDSI's exercise on Eunomia, and each criterion's boundary."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pydantic
import pytest
import yaml

from meddiag_pipelines.omop.cdm import open_cdm
from meddiag_pipelines.omop.cohort import build_study
from meddiag_pipelines.omop.spec import StudySpec
from meddiag_pipelines_tests.omop_data import (
    CELECOXIB,
    DICLOFENAC,
    GI_BLEED,
    NSAID_SPEC,
    TODAY,
    eunomia_path,
    tidy_tables,
    write_cdm,
)

INDEX = date(2010, 1, 1)


@pytest.mark.parametrize("domain", ["drug_era", "drug"])
def test_book_of_ohdsi_nsaid_gi_bleed_counts_on_eunomia(domain: str) -> None:
    """The Book's patient-level prediction exercise: 2,630 in the target cohort, 2,578 in the study population,
    479 outcomes (drug eras and drug exposures give the same first exposures in Eunomia)."""
    spec = StudySpec.model_validate(
        NSAID_SPEC | {"cohort": NSAID_SPEC["cohort"] | {"target": NSAID_SPEC["cohort"]["target"] | {"domain": domain}}}
    )
    with open_cdm(eunomia_path()) as cdm:
        study = build_study(cdm, spec)
    assert study.target_persons == 2630
    population = study.for_outcome("gi_bleed")
    assert population.height == 2578
    assert study.outcome_counts == {"gi_bleed": 479}
    assert int(population["outcome"].sum()) == 479
    assert [a["persons"] for a in study.attrition] == [2694, 2630, 2630, 2630, 2578]


def _person(
    pid: int,
    *,
    obs_start: date,
    obs_end: date = date(2020, 12, 31),
    birth: int = 1960,
    drugs: tuple = ((CELECOXIB, INDEX),),
    bleeds: tuple = (),
    death: date | None = None,
) -> dict:
    return {"id": pid, "obs": (obs_start, obs_end), "birth": birth, "drugs": drugs, "bleeds": bleeds, "death": death}


def _study(tmp_path: Path, people: list[dict], spec: dict = NSAID_SPEC):
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
            "observation_period_start_date": [p["obs"][0] for p in people],
            "observation_period_end_date": [p["obs"][1] for p in people],
        }
    )
    drugs = [(p["id"], c, d) for p in people for c, d in p["drugs"]]
    tables["drug_exposure"] = pl.DataFrame(
        drugs, schema=["person_id", "drug_concept_id", "drug_exposure_start_date"], orient="row"
    )
    bleeds = [(p["id"], GI_BLEED, d) for p in people for d in p["bleeds"]] or [(p["id"], 1, INDEX) for p in people]
    tables["condition_occurrence"] = pl.DataFrame(
        bleeds, schema=["person_id", "condition_concept_id", "condition_start_date"], orient="row"
    )
    deaths = [(p["id"], p["death"]) for p in people if p["death"]]
    if deaths:
        tables["death"] = pl.DataFrame(deaths, schema=["person_id", "death_date"], orient="row")
    with open_cdm(write_cdm(tmp_path / "batch", tables), today=TODAY) as cdm:
        return build_study(cdm, StudySpec.model_validate(spec))


def _days(n: int) -> date:
    return INDEX + timedelta(days=n)


def test_prior_observation_boundary(tmp_path: Path) -> None:
    study = _study(tmp_path, [_person(1, obs_start=_days(-364)), _person(2, obs_start=_days(-363))])
    assert study.population["person_id"].to_list() == [1]


def test_index_is_the_first_exposure_inside_an_observation_period(tmp_path: Path) -> None:
    """A first exposure outside any observation period is not replaced by a later one inside."""
    first_outside = ((CELECOXIB, date(1999, 1, 1)), (CELECOXIB, INDEX))
    study = _study(
        tmp_path, [_person(1, obs_start=date(2000, 1, 1), drugs=first_outside), _person(2, obs_start=date(2000, 1, 1))]
    )
    assert study.population["person_id"].to_list() == [2]
    assert study.population["index_date"].to_list() == [INDEX]


def test_prior_outcome_includes_the_index_day_when_risk_starts_the_day_after(tmp_path: Path) -> None:
    people = [
        _person(1, obs_start=date(2000, 1, 1), bleeds=(_days(0),)),
        _person(2, obs_start=date(2000, 1, 1), bleeds=(_days(1),)),
        _person(3, obs_start=date(2000, 1, 1), bleeds=(date(2001, 1, 1),)),
    ]
    population = _study(tmp_path, people).for_outcome("gi_bleed")
    assert population.select("person_id", "outcome").rows() == [(2, 1)]


def test_prior_outcome_kept_when_exclusion_is_off(tmp_path: Path) -> None:
    spec = NSAID_SPEC | {"cohort": NSAID_SPEC["cohort"] | {"exclude_prior_outcome": False}}
    people = [_person(1, obs_start=date(2000, 1, 1), bleeds=(date(2001, 1, 1), _days(30)))]
    population = _study(tmp_path, people, spec).for_outcome("gi_bleed")
    assert population.select("person_id", "outcome", "days_to_outcome").rows() == [(1, 1, 30)]


def test_time_at_risk_window_ends(tmp_path: Path) -> None:
    people = [
        _person(1, obs_start=date(2000, 1, 1), bleeds=(_days(365),)),
        _person(2, obs_start=date(2000, 1, 1), bleeds=(_days(366),)),
    ]
    population = _study(tmp_path, people).for_outcome("gi_bleed")
    assert population.select("person_id", "outcome", "tar_days").rows() == [(1, 1, 365), (2, 0, 365)]


def test_time_at_risk_capped_by_observation_end_and_minimum_days(tmp_path: Path) -> None:
    people = [
        _person(1, obs_start=date(2000, 1, 1), obs_end=_days(364)),  # 364 days at risk: kept
        _person(2, obs_start=date(2000, 1, 1), obs_end=_days(363)),  # 363: dropped
        _person(3, obs_start=date(2000, 1, 1), obs_end=_days(100), bleeds=(_days(50),)),  # short, with outcome
        _person(4, obs_start=date(2000, 1, 1), obs_end=_days(100), bleeds=(_days(101),)),  # outcome after obs end
    ]
    study = _study(tmp_path, people)
    population = study.for_outcome("gi_bleed")
    assert population.select("person_id", "outcome", "tar_days").rows() == [(1, 0, 364), (3, 1, 100)]
    assert study.attrition[-1] == {
        "criterion": "at least 364 days at risk, or gi_bleed in them",
        "persons": 2,
        "outcome": "gi_bleed",
    }


def test_death_before_index_excludes_and_death_caps_time_at_risk(tmp_path: Path) -> None:
    spec = NSAID_SPEC | {"time_at_risk": {"start": 1, "end": 365, "min_days": 0}}
    people = [
        _person(1, obs_start=date(2000, 1, 1), death=_days(-10)),
        _person(2, obs_start=date(2000, 1, 1), death=_days(40)),
    ]
    study = _study(tmp_path, people, spec)
    assert study.population["person_id"].to_list() == [2]
    assert {"criterion": "alive at index", "persons": 1, "outcome": None} in study.attrition
    assert study.for_outcome("gi_bleed")["tar_days"].to_list() == [40]


def test_age_range(tmp_path: Path) -> None:
    spec = NSAID_SPEC | {"cohort": NSAID_SPEC["cohort"] | {"age": {"min": 18, "max": 40}}}
    people = [
        _person(1, obs_start=date(2000, 1, 1), birth=1970),
        _person(2, obs_start=date(2000, 1, 1), birth=1969),
        _person(3, obs_start=date(2000, 1, 1), birth=1992),
        _person(4, obs_start=date(2000, 1, 1), birth=1993),
    ]
    study = _study(tmp_path, people, spec)
    assert study.population.select("person_id", "age_at_index").rows() == [(1, 40), (3, 18)]


def test_descendants_reach_the_tablet(tmp_path: Path) -> None:
    tablet = ((40000001, INDEX),)
    people = [_person(1, obs_start=date(2000, 1, 1), drugs=tablet)]
    assert _study(tmp_path / "d", people).target_persons == 1
    plain = NSAID_SPEC | {"cohort": NSAID_SPEC["cohort"] | {"target": {"domain": "drug", "concepts": [DICLOFENAC]}}}
    assert _study(tmp_path / "p", people, plain).target_persons == 0


def test_several_outcomes_get_their_own_populations(tmp_path: Path) -> None:
    spec = NSAID_SPEC | {
        "outcomes": [
            {"name": "gi_bleed", "domain": "condition", "concepts": [GI_BLEED]},
            {"name": "other", "domain": "condition", "concepts": [1]},
        ]
    }
    people = [
        _person(1, obs_start=date(2000, 1, 1), bleeds=(_days(0),)),
        _person(2, obs_start=date(2000, 1, 1), bleeds=(_days(10),)),
    ]
    study = _study(tmp_path, people, spec)
    assert study.for_outcome("gi_bleed").select("person_id", "outcome").rows() == [(2, 1)]
    assert study.for_outcome("other").select("person_id", "outcome").rows() == [(1, 0), (2, 0)]
    with pytest.raises(KeyError, match="no outcome named 'missing'"):
        study.for_outcome("missing")


ISSUE_YAML = """
name: gi_bleed
modality: omop
cohort:
  target: {domain: drug, concepts: [1118084, 1124300], descendants: true}
  prior_observation_days: 364
  age: {min: 18, max: 120}
  exclude_prior_outcome: true
outcomes:
  - {name: gi_bleed, domain: condition, concepts: [192671], descendants: true}
time_at_risk: {start: 1, end: 365, min_days: 364}
"""


def test_the_issue_contract_parses() -> None:
    raw = yaml.safe_load(ISSUE_YAML)
    spec = StudySpec.model_validate({k: v for k, v in raw.items() if k not in ("name", "modality")})
    assert spec.cohort.target.concepts == [CELECOXIB, DICLOFENAC]
    assert spec.time_at_risk.min_days == 364
    assert spec.covariates.windows == [365, 30, None]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"time_at_risk": {"start": 10, "end": 5}}, "end is before"),
        ({"time_at_risk": {"start": 1, "end": 30, "min_days": 31}}, "min_days is longer"),
        ({"outcomes": [NSAID_SPEC["outcomes"][0]] * 2}, "outcome names repeat"),
        ({"cohort": NSAID_SPEC["cohort"] | {"age": {"min": 50, "max": 40}}}, "age.min is above"),
        ({"cohort": NSAID_SPEC["cohort"] | {"target": {"domain": "lab", "concepts": [1]}}}, "domain"),
        ({"covariates": {"windows": [30, 30]}}, "distinct positive"),
    ],
)
def test_invalid_specs_are_refused(change: dict, message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        StudySpec.model_validate(NSAID_SPEC | change)
