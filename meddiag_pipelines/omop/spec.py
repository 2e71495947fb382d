"""The study spec of an OMOP task: target cohort, outcomes, time at risk and covariate settings.

Matches the ``cohort:``/``outcomes:``/``time_at_risk:``/``covariates:`` part of a task YAML (issue 27)::

    cohort:
      target: {domain: drug_era, concepts: [1118084, 1124300], descendants: true}  # index: first such event
      prior_observation_days: 364   # days of observation in the index's observation period before index
      age: {min: 18, max: 120}      # optional, age at index in years (index year - birth year, as PLP)
      exclude_prior_outcome: true   # drop persons with any outcome event before the time at risk starts
    outcomes:
      - {name: gi_bleed, domain: condition, concepts: [192671], descendants: true}
    time_at_risk: {start: 1, end: 365, min_days: 364}   # days from index, both ends included; start >= 0

Semantics follow OHDSI PatientLevelPrediction's ``createStudyPopulation`` (see :mod:`.cohort`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from meddiag_pipelines.omop.cdm import DOMAINS

Domain = Literal[tuple(DOMAINS)]  # type: ignore[valid-type]
ConceptId = Annotated[int, Field(ge=0, lt=2**63)]  # a CDM concept id is a (BIG)INT


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConceptSet(_Strict):
    """Events of ``domain`` whose concept is one of ``concepts`` (or, with ``descendants``, below one of them
    in ``concept_ancestor``)."""

    domain: Domain
    concepts: list[ConceptId] = Field(min_length=1)
    descendants: bool = False


class Outcome(ConceptSet):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,40}$")


class AgeRange(_Strict):
    min: int = Field(0, ge=0)
    max: int = Field(150, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> AgeRange:
        if self.min > self.max:
            raise ValueError("age.min is above age.max")
        return self


class CohortSpec(_Strict):
    target: ConceptSet
    prior_observation_days: int = Field(0, ge=0)
    age: AgeRange | None = None
    exclude_prior_outcome: bool = True


class TimeAtRisk(_Strict):
    """Days relative to index, both ends included; ``end`` is capped by the end of the index's observation
    period (and death). Persons with fewer than ``min_days`` days at risk are dropped unless they have the
    outcome in it (PLP's ``includeAllOutcomes``)."""

    start: int = 1
    end: int = 365
    min_days: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> TimeAtRisk:
        if self.start < 0:
            raise ValueError(
                "time_at_risk.start is before index: the outcome would be read from days the covariates also "
                "read (start at 0, the index day, or later)"
            )
        if self.end < self.start:
            raise ValueError("time_at_risk.end is before time_at_risk.start")
        if self.min_days > self.end - self.start + 1:
            raise ValueError("time_at_risk.min_days is longer than the time at risk")
        return self


class CovariateSettings(_Strict):
    """Windows end the day before index; ``windows`` are their lengths in days, ``None`` meaning any time
    prior (FeatureExtraction's long-term, short-term and any-time-prior windows by default)."""

    windows: list[int | None] = Field(default_factory=lambda: [365, 30, None], min_length=1)
    domains: list[Literal["condition", "drug", "procedure", "measurement", "observation", "visit"]] = Field(
        default_factory=lambda: ["condition", "drug", "procedure", "measurement", "observation", "visit"]
    )
    demographics: bool = True
    age_group_years: int = Field(5, ge=1)

    @field_validator("windows")
    @classmethod
    def _positive(cls, windows: list[int | None]) -> list[int | None]:
        if any(w is not None and w < 1 for w in windows) or len(set(windows)) != len(windows):
            raise ValueError("covariate windows are distinct positive day counts (or null for any time prior)")
        return windows

    @model_validator(mode="after")
    def _something(self) -> CovariateSettings:
        if not self.domains and not self.demographics:
            raise ValueError("covariates: no domain and no demographics leave nothing to learn from")
        return self


class StudySpec(_Strict):
    cohort: CohortSpec
    outcomes: list[Outcome] = Field(min_length=1)
    time_at_risk: TimeAtRisk = TimeAtRisk()
    covariates: CovariateSettings = CovariateSettings()

    @field_validator("outcomes")
    @classmethod
    def _unique(cls, outcomes: list[Outcome]) -> list[Outcome]:
        names = [o.name for o in outcomes]
        if len(set(names)) != len(names):
            raise ValueError("outcome names repeat")
        return outcomes
