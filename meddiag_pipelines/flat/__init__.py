"""Models of a flat feature table, shared by the modalities whose records become one row of features each (tabular
records; OMOP CDM covariates): the feature plan (``features``), XGBoost beside the logistic baseline and the rule
that chooses between them (``models``), and their fit on a Dask cluster (``distributed``)."""
