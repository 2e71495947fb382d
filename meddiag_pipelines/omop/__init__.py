"""The OMOP Common Data Model (v5.3, v5.4) as a library: open a landed CDM batch (:mod:`.cdm`), build a
prediction study from a cohort spec (:mod:`.spec`, :mod:`.cohort`), write the MEDS event table (:mod:`.meds`)
and covariates from before the index date (:mod:`.covariates`). No Dagster here: plain functions over a DuckDB
connection returning Polars frames and dicts, for the ``omop`` modality to wrap."""

from meddiag_pipelines.omop.cdm import Cdm, CdmRefused, open_cdm
from meddiag_pipelines.omop.cohort import Study, build_study
from meddiag_pipelines.omop.covariates import Covariates, build_covariates, to_matrix
from meddiag_pipelines.omop.meds import write_meds
from meddiag_pipelines.omop.spec import CovariateSettings, StudySpec

__all__ = [
    "Cdm",
    "CdmRefused",
    "CovariateSettings",
    "Covariates",
    "Study",
    "StudySpec",
    "build_covariates",
    "build_study",
    "open_cdm",
    "to_matrix",
    "write_meds",
]
