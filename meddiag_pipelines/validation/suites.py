"""Great Expectations 1.x suites built from a task spec, run on Polars frames in an ephemeral context.

dagster-ge does not support GX 1.x, so the Dagster asset checks call :func:`run_suite` directly. Failures
never carry record content: only counts, and for the label domain the label values outside it (classes are
not PHI; any other column may hold names, codes or dates).

GX is imported inside the functions that build and run suites (here and in ``images.py``, ``texts.py``): it
takes ~1.3 s to import, which every process loading the Dagster code location would otherwise pay, including
each step process of the multiprocess executor that never validates anything.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import polars as pl

from meddiag_pipelines.ingestion.landing import INTERNAL_PREFIX
from meddiag_pipelines.specs import TaskSpec

if TYPE_CHECKING:
    import great_expectations.expectations as gxe

NUMERIC_TYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float32", "float64",
                 "Int8", "Int16", "Int32", "Int64", "Float32", "Float64"]  # fmt: skip
FINITE_LIMIT = 1e300  # a bound that only infinities exceed
MAX_EXAMPLES = 5
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
        exps.append(gxe.ExpectColumnValuesToBeBetween(
            column=c,
            min_value=-FINITE_LIMIT if low is None else low,
            max_value=FINITE_LIMIT if high is None else high,
        ))
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


def _describe(result, hidden: set[str], schema: pl.Schema) -> CheckFailure:
    cfg = result.expectation_config
    column = cfg.kwargs.get("column")
    info = result.result or {}
    if result.exception_info and result.exception_info.get("raised_exception"):
        problem = f"could not be evaluated: {str(result.exception_info.get('exception_message'))[:200]}"
    elif cfg.type == "expect_column_to_exist":
        problem = "required column is missing"
    elif cfg.type == "expect_column_values_to_be_in_type_list":
        problem = f"has type {schema.get(column)}, expected a numeric type"
    elif info.get("unexpected_count") is None:
        problem = f"could not be evaluated on this column's values ({cfg.type})"
    else:
        problem = f"{info['unexpected_count']} rows break {cfg.type}"
    shown = cfg.type == LABEL_DOMAIN and column not in hidden
    examples = [str(v) for v in (info.get("partial_unexpected_list") or [])[:MAX_EXAMPLES]] if shown else []
    return CheckFailure(cfg.type, column, problem, info.get("unexpected_count"), examples)


def run_suite(frame: pl.DataFrame, expectations: list[gxe.Expectation], hidden: set[str], name: str) -> list[CheckFailure]:
    """Validate ``frame`` (converted to pandas at this boundary); an empty list means it passed."""
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
    return [_describe(r, hidden, frame.schema) for r in result.results if not r.success]


def validate_tabular(frame: pl.DataFrame, spec: TaskSpec, known_ids: set[str] | None = None) -> list[CheckFailure]:
    """The spec's suite, plus ids already ingested from earlier batches (a re-export)."""
    failures = run_suite(frame, tabular_expectations(spec, frame.columns), identifier_columns(spec), spec.name)
    if known_ids and spec.id in frame.columns:
        repeated = frame.filter(pl.col(spec.id).is_in(list(known_ids))).height
        if repeated:
            failures.append(CheckFailure("ids_unique_across_batches", spec.id,
                                         f"{repeated} ids were already ingested from earlier batches", repeated))
    return failures
