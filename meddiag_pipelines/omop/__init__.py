"""The OMOP Common Data Model (v5.3, v5.4) as a library: open a landed CDM batch (:mod:`.cdm`), build a
prediction study from a cohort spec (:mod:`.spec`, :mod:`.cohort`), write the MEDS event table (:mod:`.meds`)
and covariates from before the index date (:mod:`.covariates`). No Dagster here: plain functions over a DuckDB
connection returning Polars frames and dicts, for the ``omop`` modality to wrap."""

