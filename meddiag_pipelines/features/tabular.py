"""Tabular features in Polars: typing, median imputation with missing indicators, one-hot encoding.

Everything is fitted on the training rows only and recorded in a JSON-serialisable :class:`FeaturePlan`,
which is saved beside each model so that new cases are transformed exactly as the training rows were.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import polars as pl

from meddiag_pipelines.features.split import SPLIT_COLUMN
from meddiag_pipelines.specs import TaskSpec
from meddiag_pipelines.validation.suites import feature_columns

OTHER = "__other__"
MISSING = "__missing__"
MIN_LEVEL_COUNT = 5  # rarer categories fold into OTHER so a one-off code cannot become a feature
MAX_LEVELS = 50


@dataclass
class FeaturePlan:
    numeric: list[str]
    medians: dict[str, float]
    indicators: list[str]
    categorical: dict[str, list[str]]

    @property
    def feature_names(self) -> list[str]:
        names = list(self.numeric) + [f"{c}__missing" for c in self.indicators]
        for column, levels in self.categorical.items():
            names += [f"{column}={level}" for level in levels]
        return names

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FeaturePlan:
        return cls(**data)


def infer_columns(spec: TaskSpec, frame: pl.DataFrame) -> tuple[list[str], list[str]]:
    """Declared columns first; any other feature column is numeric if its type is, else categorical."""
    numeric, categorical = list(spec.numeric), list(spec.categorical)
    for column in feature_columns(spec, frame.columns):
        if column in numeric or column in categorical or column == SPLIT_COLUMN:
            continue
        (numeric if frame.schema[column].is_numeric() else categorical).append(column)
    return numeric, categorical


def fit_plan(train: pl.DataFrame, spec: TaskSpec) -> FeaturePlan:
    numeric, categorical = infer_columns(spec, train)
    medians = {c: float(train[c].cast(pl.Float64).median() or 0.0) for c in numeric}
    indicators = [c for c in numeric if train[c].null_count() > 0]
    levels = {}
    for column in categorical:
        counts = train[column].cast(pl.String).fill_null(MISSING).value_counts(sort=True)
        kept = [v for v, n in counts.iter_rows() if n >= MIN_LEVEL_COUNT][:MAX_LEVELS]
        levels[column] = sorted(kept) + [OTHER]
    return FeaturePlan(numeric, medians, indicators, levels)


def transform(frame: pl.DataFrame, plan: FeaturePlan) -> pl.DataFrame:
    """The feature matrix (Float32, one column per ``plan.feature_names``) for any rows of the task."""
    exprs = [pl.col(c).cast(pl.Float64).fill_nan(None).fill_null(plan.medians[c]).alias(c) for c in plan.numeric]
    exprs += [pl.col(c).is_null().alias(f"{c}__missing") for c in plan.indicators]
    for column, levels in plan.categorical.items():
        value = pl.col(column).cast(pl.String).fill_null(MISSING)
        value = pl.when(value.is_in(levels)).then(value).otherwise(pl.lit(OTHER))
        exprs += [(value == level).alias(f"{column}={level}") for level in levels]
    return frame.select(exprs).cast(pl.Float32)


def missing_data_table(train: pl.DataFrame, plan: FeaturePlan) -> list[dict]:
    """Per input column: how much was missing in training and how the pipeline handled it."""
    rows = []
    n = max(train.height, 1)
    for column in plan.numeric:
        missing = train[column].null_count()
        handling = "median imputation + missing indicator" if column in plan.indicators else "none needed"
        rows.append({"feature": column, "n_missing": missing, "rate": missing / n, "handling": handling})
    for column in plan.categorical:
        missing = train[column].null_count()
        rows.append({"feature": column, "n_missing": missing, "rate": missing / n,
                     "handling": f"own category {MISSING}" if missing else "none needed"})  # fmt: skip
    return rows
