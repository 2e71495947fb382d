"""Tabular features in Polars: typing, median imputation with missing indicators, one-hot encoding.

Everything is fitted on the training rows only and recorded in a JSON-serialisable :class:`FeaturePlan`,
which is saved beside each model so that new cases are transformed exactly as the training rows were.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import polars as pl

from meddiag_pipelines.deid.rules import find_phi
from meddiag_pipelines.ingestion.warehouse import dtype_words
from meddiag_pipelines.specs import TaskSpec
from meddiag_pipelines.split import SPLIT_COLUMN
from meddiag_pipelines.validation.suites import feature_columns

OTHER = "__other__"
MISSING = "__missing__"
MIN_LEVEL_COUNT = 5  # rarer categories fold into OTHER so a one-off code cannot become a feature
MAX_LEVELS = 50
# An undeclared text column that looks like free text or an identifier (names, addresses, notes) is not a
# feature: its values would become feature names in the plan, the model and every explanation.
MAX_DISTINCT = 200
IDENTIFIER_SHARE = 0.5  # more distinct values than this share of the patients (or rows) it covers
FREE_TEXT_MEAN_CHARS = 40
MAX_LEVEL_CHARS = 200
# Words of a column name that say it holds a personal identifier (HIPAA Safe Harbor: names, contact details,
# record and account numbers, birth dates); names are split on separators and camelCase ("patientName").
IDENTIFIER_WORDS = frozenset(
    """
    name names firstname lastname surname forename fullname givenname familyname maidenname fname lname initials
    signature phone telephone tel mobile fax email mail address addr street zip zipcode postcode postal
    id ids uid uuid guid identifier mrn ssn nhs passport license licence account acct dob birthdate birthday
""".split()
)
_NAME_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[^\W\d_]+")
_XGBOOST_FORBIDDEN = str.maketrans({"[": "(", "]": ")", "<": "lt"})  # XGBoost refuses these in feature names


def model_column_names(names: list[str]) -> list[str]:
    """A deterministic model-side name per feature: XGBoost refuses '[', ']' and '<' (``dose[mg]``,
    ``flag=<0.01``) and DuckDB folds case, so each name is translated and made unique ignoring case."""
    taken: set[str] = set()
    out = []
    for name in names:
        base = candidate = name.translate(_XGBOOST_FORBIDDEN)
        n = 1
        while candidate.casefold() in taken:
            n += 1
            candidate = f"{base}~{n}"
        taken.add(candidate.casefold())
        out.append(candidate)
    return out


@dataclass
class FeaturePlan:
    numeric: list[str]
    medians: dict[str, float]
    indicators: list[str]
    categorical: dict[str, list[str]]
    dropped: dict[str, str] = field(default_factory=dict)  # column -> why it is not a feature
    model_names: list[str] = field(default_factory=list)  # the model's name of each of ``feature_names``

    def __post_init__(self) -> None:
        if not self.model_names:  # a fresh plan (fit_plan): derived from the feature names; a stored one keeps its own
            self.model_names = model_column_names(self.feature_names)

    def _features(self) -> list[tuple[str, pl.Expr]]:
        """(reported name, expression) per feature; categorical columns in sorted order, so that the order is
        the same for a plan read back from JSON with sorted keys."""
        out = [(c, pl.col(c).cast(pl.Float64).fill_nan(None).fill_null(self.medians[c])) for c in self.numeric]
        out += [(f"{c}__missing", pl.col(c).is_null()) for c in self.indicators]
        for column in sorted(self.categorical):
            levels = self.categorical[column]
            value = pl.col(column).cast(pl.String).fill_null(MISSING)
            value = pl.when(value.is_in(levels)).then(value).otherwise(pl.lit(OTHER))
            out += [(f"{column}={level}", value == level) for level in levels]
        return out

    @property
    def feature_names(self) -> list[str]:
        """Feature names as reported (original column names and levels)."""
        return [name for name, _ in self._features()]

    def reported_names(self) -> dict[str, str]:
        """Model name -> reported name."""
        return dict(zip(self.model_names, self.feature_names, strict=False))

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FeaturePlan:
        return cls(**data)


def _unusable_type(dtype: pl.DataType) -> str | None:
    """Why a column of this type cannot be a feature; None for numbers, text, true/false and all-null (all the
    reader lets through: durations, bytes and dates stored by an earlier reader are reported, not cast)."""
    if dtype.is_numeric() or dtype in (pl.String, pl.Boolean, pl.Null, pl.Categorical) or isinstance(dtype, pl.Enum):
        return None
    return f"holds {dtype_words(dtype)} ({dtype}); only numbers, text and true/false values are features"


def infer_columns(spec: TaskSpec, frame: pl.DataFrame) -> tuple[list[str], list[str], dict[str, str]]:
    """Declared columns first; any other feature column is numeric if its type is, else categorical; a column of
    a type no feature takes is neither (the third item: column -> why)."""
    numeric, categorical = (
        [c for c in spec.numeric if c in frame.columns],
        [c for c in spec.categorical if c in frame.columns],
    )
    for column in feature_columns(spec, frame.columns):
        if column not in numeric and column not in categorical and column != SPLIT_COLUMN:
            (numeric if frame.schema[column].is_numeric() else categorical).append(column)
    unusable = {c: why for c in [*numeric, *categorical] if (why := _unusable_type(frame.schema[c]))}
    return [c for c in numeric if c not in unusable], [c for c in categorical if c not in unusable], unusable


def _identifier_name(column: str) -> bool:
    """Whether a word of the column's name says it holds a personal identifier (:data:`IDENTIFIER_WORDS`)."""
    return any(
        word.lower() in IDENTIFIER_WORDS for part in re.split(r"[\W_]+", column) for word in _NAME_WORDS.findall(part)
    )


def _not_a_category(column: str, counts: pl.DataFrame, rows_per_key: float) -> str | None:
    """Why an undeclared text column looks like free text or an identifier; None if it looks like a category.
    ``counts``: its value counts on the training rows; ``rows_per_key``: training rows per patient (or id).
    Repeated values are no proof of a category (a patient's name on each of their visits): the column's name,
    and the values that would become features, are checked for identifiers too."""
    values = counts.filter(pl.col("value") != MISSING)
    n_distinct, n_rows = values.height, int(values["count"].sum())
    if not n_rows:
        return None
    if _identifier_name(column):
        return "its name says it holds personal identifiers (a name, contact detail, record number or birth date)"
    if n_distinct > MAX_DISTINCT:
        return f"{n_distinct} distinct values (over {MAX_DISTINCT}): free text or an identifier"
    if n_distinct > IDENTIFIER_SHARE * n_rows / rows_per_key:
        return (
            f"{n_distinct} distinct values in {n_rows} rows: nearly one per patient or record, so an "
            "identifier (a name, a code)"
        )
    mean_chars = float((values["value"].str.len_chars() * values["count"]).sum()) / n_rows
    if mean_chars > FREE_TEXT_MEAN_CHARS:
        return f"values of {mean_chars:.0f} characters on average (over {FREE_TEXT_MEAN_CHARS}): free text"
    levels = _levels(counts)
    longest = max(map(len, levels), default=0)
    if longest > MAX_LEVEL_CHARS:  # a rare long value amid short ones: free text, and no feature name
        return f"a value of {longest} characters would become a feature (over {MAX_LEVEL_CHARS}): free text"
    kinds = sorted({span.kind for level in levels for span in find_phi(level)})
    if kinds:
        return f"values that would become features look like personal identifiers ({', '.join(kinds)})"
    return None


def _levels(counts: pl.DataFrame) -> list[str]:
    """The values of a categorical column that become one-hot features: the most frequent, each frequent enough."""
    return [v for v, n in counts.iter_rows() if n >= MIN_LEVEL_COUNT][:MAX_LEVELS]


def fit_plan(train: pl.DataFrame, spec: TaskSpec) -> FeaturePlan:
    """Undeclared text columns that look like free text or identifiers are dropped (with the reason); declare a
    column in ``categorical`` to keep it. Columns of a type no feature takes are dropped too."""
    numeric, categorical, dropped = infer_columns(spec, train)
    medians = {c: float(train[c].cast(pl.Float64).median() or 0.0) for c in numeric}
    indicators = [c for c in numeric if train[c].null_count() > 0]
    key = spec.patient_id if spec.patient_id in train.columns else spec.id
    rows_per_key = train.height / max(train[key].n_unique(), 1) if key in train.columns else 1.0
    declared = {*spec.categorical, *spec.subgroups}
    levels = {}
    for column in categorical:
        counts = train[column].cast(pl.String).fill_null(MISSING).alias("value").value_counts(sort=True)
        why = None if column in declared else _not_a_category(column, counts, rows_per_key)
        if why:
            dropped[column] = f"{why}; declare it in 'categorical' to use it"
            continue
        levels[column] = sorted(_levels(counts)) + [OTHER]
    return FeaturePlan(numeric, medians, indicators, levels, dropped)


def transform(frame: pl.DataFrame, plan: FeaturePlan) -> pl.DataFrame:
    """The feature matrix (Float32, one column per ``plan.model_names``) for any rows of the task."""
    exprs = [expr.alias(name) for (_, expr), name in zip(plan._features(), plan.model_names, strict=False)]
    return frame.select(exprs).cast(pl.Float32)


def missing_data_table(train: pl.DataFrame, plan: FeaturePlan, max_null_rate: float = 1.0) -> list[dict]:
    """Per input column: how much was missing in training and how the pipeline handled it. Validation holds
    only declared columns to ``max_null_rate``; an undeclared column missing more often is kept and flagged
    here. Columns that are not features say why."""
    n = max(train.height, 1)

    def row(column: str, handling: str, feature: bool = True) -> dict:
        missing = train[column].null_count() if column in train.columns else train.height
        if feature and missing / n > max_null_rate:
            handling += f"; missing in more than max_null_rate ({max_null_rate:g}) of rows: kept (not declared)"
        return {"feature": column, "n_missing": missing, "rate": missing / n, "handling": handling}

    rows = [
        row(c, "median imputation + missing indicator" if c in plan.indicators else "none needed") for c in plan.numeric
    ]
    rows += [
        row(c, f"own category {MISSING}" if c in train.columns and train[c].null_count() else "none needed")
        for c in plan.categorical
    ]
    rows += [row(c, f"not a feature: {why}", feature=False) for c, why in plan.dropped.items()]
    return rows
