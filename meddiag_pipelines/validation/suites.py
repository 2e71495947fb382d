"""Great Expectations 1.x suites built from a task spec, run where the data is: a Polars frame or a Parquet file.

The suite is GX's (its expectations, their names and result vocabulary). Expectations whose verdict on GX's
pandas engine is exactly a Polars expression (existence, nulls, uniqueness, the label domain, numeric types and
ranges on plain number columns) are computed in one Polars pass over the columns they name, which is 13-30x
faster than GX on a pandas copy at 1M rows (``python -m bench validation``); GX's pandas engine, in an ephemeral
context, evaluates the rest on those columns only. GX's SQL execution was tried first: over DuckDB (through
``duckdb_engine``) it fetches a query's rows after closing its connection, which DuckDB has discarded by then.

dagster-ge does not support GX 1.x, so the Dagster asset checks call :func:`run_suite` directly. Failures
never carry record content, only counts: any column, the label too, may hold names, codes or dates (a label
outside the task's domain may be a value shifted in from another column).

GX is imported inside the functions that build and run suites (here and in ``images.py``, ``texts.py``): it
takes ~1.3 s to import, which every process loading the Dagster code location would otherwise pay, including
each step process of the multiprocess executor that never validates anything.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from meddiag_pipelines.specs import INTERNAL_PREFIX, TaskSpec

if TYPE_CHECKING:
    import great_expectations.expectations as gxe

NUMERIC_TYPES = [
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float32",
    "float64",
    "Int8",
    "Int16",
    "Int32",
    "Int64",
    "Float32",
    "Float64",
]
FINITE_LIMIT = 1e300  # a bound that only infinities exceed
LABEL_DOMAIN = "expect_column_values_to_be_in_set"  # suites check only the label against a value set


@dataclass
class CheckFailure:
    expectation: str
    column: str | None
    problem: str
    unexpected_count: int | None = None
    examples: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def identifier_columns(spec: TaskSpec) -> set[str]:
    return {c for c in (spec.id, spec.patient_id, spec.text) if c}


def feature_columns(spec: TaskSpec, columns: list[str]) -> list[str]:
    """Columns used as model inputs: everything but keys, internal columns and explicit exclusions."""
    skip = identifier_columns(spec) | {spec.label, *spec.exclude}
    return [c for c in columns if c not in skip and not c.startswith(INTERNAL_PREFIX)]


def record_expectations(spec: TaskSpec, required: list[str]) -> list[gxe.Expectation]:
    import great_expectations.expectations as gxe

    """What the records of every modality must satisfy: the key and ``required`` columns exist, ids are
    present and unique, labels lie in the spec's domain (null labels are cases to score; GX skips them)."""
    columns = [spec.id, spec.label, *required, *spec.subgroups, *([spec.patient_id] if spec.patient_id else [])]
    exps: list[gxe.Expectation] = [gxe.ExpectColumnToExist(column=c) for c in dict.fromkeys(columns)]
    exps += [gxe.ExpectColumnValuesToNotBeNull(column=spec.id), gxe.ExpectColumnValuesToBeUnique(column=spec.id)]
    if spec.classes:
        exps.append(gxe.ExpectColumnValuesToBeInSet(column=spec.label, value_set=list(spec.classes)))
    return exps


def tabular_expectations(spec: TaskSpec, columns: list[str]) -> list[gxe.Expectation]:
    """The declared columns are held to ``max_null_rate`` (a batch missing them more often is quarantined);
    undeclared columns are not: the feature step keeps them with missing handling and reports their rate.
    ``columns``: the frame's columns (a missing declared column fails once, as missing)."""
    import great_expectations.expectations as gxe

    exps = record_expectations(spec, [*spec.numeric, *spec.categorical])
    for c in spec.numeric:
        exps.append(gxe.ExpectColumnValuesToBeInTypeList(column=c, type_list=NUMERIC_TYPES))
        low, high = spec.ranges.get(c, (None, None))
        exps.append(
            gxe.ExpectColumnValuesToBeBetween(
                column=c,
                min_value=-FINITE_LIMIT if low is None else low,
                max_value=FINITE_LIMIT if high is None else high,
            )
        )
    declared = [*spec.numeric, *spec.categorical, *spec.subgroups]
    for c in dict.fromkeys(c for c in declared if c in columns and c not in spec.exclude):
        exps.append(gxe.ExpectColumnValuesToNotBeNull(column=c, mostly=round(1.0 - spec.max_null_rate, 6)))
    return exps


def _context():
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def _describe(
    kind: str, column: str | None, schema: pl.Schema, unexpected_count: int | None, raised: bool = False
) -> CheckFailure:
    if raised:  # GX's message may quote the values it stopped on
        problem = f"could not be evaluated ({kind} raised an error; its message is not kept, as it may quote the data)"
    elif kind == "expect_column_to_exist":
        problem = "required column is missing"
    elif kind == "expect_column_values_to_be_in_type_list":
        problem = f"has type {schema.get(column)}, expected a numeric type"
    elif unexpected_count is None:
        problem = f"could not be evaluated on this column's values ({kind})"
    else:
        problem = f"{unexpected_count} rows break {kind}"
    return CheckFailure(kind, column, problem, unexpected_count)


def _describe_gx(result, schema: pl.Schema) -> CheckFailure:
    cfg = result.expectation_config
    info = result.result or {}
    raised = bool(result.exception_info and result.exception_info.get("raised_exception"))
    return _describe(cfg.type, cfg.kwargs.get("column"), schema, info.get("unexpected_count"), raised)


def _run_gx(frame: pl.DataFrame, expectations: list[gxe.Expectation], name: str) -> list[CheckFailure]:
    """GX's pandas engine on ``frame`` (converted to pandas at this boundary)."""
    import great_expectations as gx

    context = _context()
    batches = (
        context.data_sources.add_pandas("polars_frames")
        .add_dataframe_asset(name=name)
        .add_batch_definition_whole_dataframe("whole")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
    # A validation definition builds the batch once; Batch.validate builds (copies and hashes) it a second time.
    result = gx.ValidationDefinition(data=batches, suite=suite, name=name).run(
        batch_parameters={"dataframe": frame.to_pandas()}, result_format="SUMMARY"
    )
    return [_describe_gx(r, frame.schema) for r in result.results if not r.success]


# Polars dtypes that pandas receives as numpy numbers (the dtypes in NUMERIC_TYPES); GX's verdict on any other
# dtype depends on the values of an object column, so those expectations stay with GX.
PLAIN_NUMBERS = (
    pl.Int8,
    pl.Int16,
    pl.Int32,
    pl.Int64,
    pl.UInt8,
    pl.UInt16,
    pl.UInt32,
    pl.UInt64,
    pl.Float32,
    pl.Float64,
)


@dataclass
class _Compiled:
    """One expectation as Polars expressions: the rows it finds unexpected, out of the rows GX considers."""

    expectation: gxe.Expectation
    rows: pl.Expr | None = None  # None: decided by the schema alone (``passed``)
    considered: pl.Expr | None = None
    mostly: float = 1.0
    passed: bool = True
    unexpected_count: int | None = None


def _missing(column: str, dtype: pl.DataType) -> pl.Expr:
    """What pandas (hence GX) counts as missing: null, and NaN in a float column."""
    col = pl.col(column)
    return col.is_null() | col.is_nan() if dtype.is_float() else col.is_null()


def _pandas_dtypes(dtype: pl.DataType) -> set[str]:
    """The numpy dtype names a plain Polars number column becomes in pandas (an integer one with nulls: float64)."""
    name = str(dtype).lower()
    return {name, "float64"} if dtype.is_integer() else {name}


def _compile(exp: gxe.Expectation, schema: pl.Schema) -> _Compiled | None:
    """The expectation as Polars expressions with GX's pandas semantics, or None where that mapping is not exact
    (an unknown expectation, an option not mapped here, a dtype GX would see as Python objects): GX runs those."""
    kwargs = dict(exp.configuration.kwargs)
    kind, column = exp.expectation_type, kwargs.pop("column", None)
    mostly = kwargs.pop("mostly", 1.0)
    if kind == "expect_column_to_exist":
        return None if kwargs else _Compiled(exp, passed=column in schema)
    dtype = schema.get(column)
    if dtype is None:
        return None  # GX's own reason why it cannot evaluate an absent column
    missing, col, plain = _missing(column, dtype), pl.col(column), dtype in PLAIN_NUMBERS
    if kind == "expect_column_values_to_not_be_null" and not kwargs:
        return _Compiled(exp, missing, pl.len(), mostly)
    if kind == "expect_column_values_to_be_in_type_list" and set(kwargs) == {"type_list"} and plain:
        return _Compiled(exp, passed=_pandas_dtypes(dtype) <= set(kwargs["type_list"]))
    if kind == "expect_column_values_to_be_unique" and not kwargs and (plain or dtype == pl.String):
        rows = col.is_duplicated()
    elif (
        kind == LABEL_DOMAIN
        and set(kwargs) == {"value_set"}
        and dtype == pl.String
        and all(isinstance(v, str) for v in kwargs["value_set"])
    ):
        rows = ~col.is_in(list(kwargs["value_set"]))
    elif (
        kind == "expect_column_values_to_be_between"
        and plain
        and set(kwargs) in ({"min_value"}, {"max_value"}, {"min_value", "max_value"})
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in kwargs.values())
    ):
        bounds = [
            *([col < kwargs["min_value"]] if "min_value" in kwargs else []),
            *([col > kwargs["max_value"]] if "max_value" in kwargs else []),
        ]
        rows = pl.any_horizontal(bounds)
    else:
        return None
    return _Compiled(exp, rows & ~missing, ~missing, mostly)


def _source(data: pl.DataFrame | pl.LazyFrame | str | Path) -> pl.LazyFrame:
    if isinstance(data, pl.DataFrame):
        return data.lazy()
    return pl.scan_parquet(data) if isinstance(data, str | Path) else data


def run_suite(
    data: pl.DataFrame | pl.LazyFrame | str | Path, expectations: list[gxe.Expectation], name: str
) -> list[CheckFailure]:
    """Validate one frame, or a Parquet file read where it lies (only the columns the suite names are read);
    an empty list means it passed. Failures: the compiled ones in the suite's order, then GX's.

    The suite is GX's: expectations GX's pandas engine would decide exactly as a Polars expression does (see
    :func:`_compile`) are computed in one Polars pass; GX evaluates the others on the columns they name."""
    frame = _source(data)
    schema = frame.collect_schema()
    compiled = [(e, _compile(e, schema)) for e in expectations]
    _count(frame, [c for _, c in compiled if c is not None and c.rows is not None])
    failures = [
        _describe(
            c.expectation.expectation_type, c.expectation.configuration.kwargs.get("column"), schema, c.unexpected_count
        )
        for _, c in compiled
        if c is not None and not c.passed
    ]
    left = [e for e, c in compiled if c is None]
    if left:
        needed = [c for c in dict.fromkeys(e.configuration.kwargs.get("column") for e in left) if c in schema]
        failures += _run_gx(frame.select(needed).collect(), left, name)
    return failures


def _count(frame: pl.LazyFrame, counted: list[_Compiled]) -> None:
    """One pass over ``frame`` for every counted expectation; sets its count and verdict (GX's ``mostly``
    rule: the share of considered rows that are expected, vacuously true when none is considered)."""
    if not counted:
        return
    sums = frame.select(
        *(c.rows.sum().alias(f"u{i}") for i, c in enumerate(counted)),
        *(c.considered.sum().alias(f"n{i}") for i, c in enumerate(counted)),
    )
    sums = sums.collect().row(0)
    for c, unexpected, considered in zip(counted, sums[: len(counted)], sums[len(counted) :], strict=True):
        c.unexpected_count = unexpected
        c.passed = considered == 0 or (considered - unexpected) / considered >= c.mostly


PLACEHOLDER_MIN_ROWS = 20  # a batch this large with a single patient id holds a placeholder, not patients


def placeholder_patient_id(frame: pl.LazyFrame, spec: TaskSpec, columns: list[str]) -> list[CheckFailure]:
    """A patient id that every row of a large batch shares is a placeholder (``0``, ``unknown``): kept, it would
    make the batch one patient, and the split, which keeps a patient's rows and their copies together, could then
    find no rows left to train or judge on for the whole task."""
    if not spec.patient_id or spec.patient_id not in columns:
        return []
    n, distinct = frame.select(pl.len(), pl.col(spec.patient_id).drop_nulls().n_unique()).collect().row(0)
    if n < PLACEHOLDER_MIN_ROWS or distinct != 1:
        return []
    return [
        CheckFailure(
            "patient_id_not_placeholder",
            spec.patient_id,
            f"every one of the {n} rows has the same patient id: a placeholder, not patient ids "
            "(the split keeps a patient's rows together)",
            n,
        )
    ]


def validate_tabular(
    data: pl.DataFrame | pl.LazyFrame | str | Path, spec: TaskSpec, known_ids: set[str] | None = None
) -> list[CheckFailure]:
    """The spec's suite on one batch (a frame or a Parquet path), plus ids already ingested from earlier batches
    (a re-export)."""
    frame = _source(data)
    columns = frame.collect_schema().names()
    failures = run_suite(frame, tabular_expectations(spec, columns), spec.name)
    failures += placeholder_patient_id(frame, spec, columns)
    failures += ids_already_ingested(frame, spec, known_ids)
    return failures


def ids_already_ingested(
    frame: pl.DataFrame | pl.LazyFrame,
    spec: TaskSpec,
    known_ids: set[str] | None,
    problem: str = "ids were already ingested from earlier batches",
) -> list[CheckFailure]:
    """Rows whose id an earlier batch already brought (a re-export): every modality's per-batch check."""
    if not known_ids or spec.id not in frame.collect_schema().names():
        return []
    hits = frame.lazy().filter(pl.col(spec.id).cast(pl.String).is_in(list(known_ids)))
    repeated = hits.select(pl.len()).collect().item()
    return [CheckFailure("ids_unique_across_batches", spec.id, f"{repeated} {problem}", repeated)] if repeated else []
