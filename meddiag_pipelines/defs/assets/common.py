"""Small helpers of the Dagster wiring shared by every modality: tags, pools, metadata tables, check results,
model handles."""

import base64
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

import dagster as dg
import polars as pl

from meddiag_pipelines.defs.dead_runs import task_pool
from meddiag_pipelines.defs.resources.storage import MeddiagStorage
from meddiag_pipelines.device import torch_device
from meddiag_pipelines.markup import escape_markdown
from meddiag_pipelines.modalities.base import CheckOutcome, FeaturesRefused, Table
from meddiag_pipelines.registry.store import STAGING
from meddiag_pipelines.registry.summary import clear_no_model, record_no_model
from meddiag_pipelines.specs import TaskSpec
from meddiag_pipelines.split import SplitError
from meddiag_pipelines.storage import DataRoot, open_plan, run_name
from meddiag_pipelines.validation.suites import CheckFailure

# predictor_factory(plan) -> predict(model_dir, rows) -> probabilities
NUMERIC_METRICS = (
    "auroc",
    "auprc",
    "brier",
    "scaled_brier",
    "accuracy",
    "macro_f1",
    "calibration_slope",
    "calibration_intercept",
)
METADATA_DIGITS = 4  # significant digits of a float shown in the UI, which otherwise shows all 16 or 17


# -- small helpers ------------------------------------------------------------------------------------------
def asset_tags(spec: TaskSpec) -> dict:
    return {"group_name": spec.name, "owners": [spec.owner], "tags": {"modality": spec.modality}}


# dagster-dask's op tag (dagster_dask.executor.DASK_RESOURCE_REQUIREMENTS_KEY), written out: the extra is optional
DASK_RESOURCES_TAG = "dagster-dask/resource_requirements"


def gpu_op_tags(spec: TaskSpec) -> dict:
    """``training.gpu``: the step becomes a Dask task that only a worker started with ``--resources GPU=1`` takes
    (no such worker: it waits for one). Only the Dask executor reads the tag."""
    return {DASK_RESOURCES_TAG: json.dumps({"GPU": 1})} if spec.training.gpu else {}


def pool(spec: TaskSpec) -> str:
    """One concurrency pool per task: a sensor run and the schedule never train or publish at once."""
    return task_pool(spec.name)


def rounded(metadata: dict) -> dict:
    """Materialization metadata with each float to ``METADATA_DIGITS`` significant digits (what is published, in
    the reports and the registry, keeps its full precision)."""
    return {k: float(f"{v:.{METADATA_DIGITS}g}") if isinstance(v, float) else v for k, v in metadata.items()}


def run_version(context: dg.AssetExecutionContext) -> str:
    """The model version of this run: its sortable name, which also names the run's asset values."""
    record = context.instance.get_run_record_by_id(context.run_id)
    return run_name(record.create_timestamp.timestamp() if record else time.time(), context.run_id)


def feature_outs(
    spec: TaskSpec, tags: dict, features: str, plan: str, kinds: frozenset = frozenset({"polars"})
) -> dict:
    """The two outputs of every modality's ``features`` step: the rows the models read (a table) and the plan
    that makes them (a value); ``features`` and ``plan`` describe them."""
    return {
        "features": dg.AssetOut(
            key=[spec.name, "features"],
            io_manager_key="warehouse_io_manager",
            kinds=set(kinds),
            description=f"{spec.name}: {features}",
            **tags,
        ),
        "feature_plan": dg.AssetOut(
            key=[spec.name, "feature_plan"], kinds={"python"}, description=f"{spec.name}: {plan}", **tags
        ),
    }


def markdown_table(rows: list[dict], limit: int = 40) -> str:
    """Rows as a Markdown table for Dagster metadata; every cell (batch and file names, problems) is escaped."""
    if not rows:
        return "_none_"
    columns = list(rows[0])
    lines = ["| " + " | ".join(map(escape_markdown, columns)) + " |", "|" + "---|" * len(columns)]
    for row in rows[:limit]:
        cells = [f"{v:.3f}" if isinstance(v, float) else escape_markdown(v) for v in (row.get(c) for c in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def png_markdown(png: bytes, title: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(f"![{escape_markdown(title)}](data:image/png;base64,{base64.b64encode(png).decode()})")


def ui_metadata(metadata: dict) -> dict:
    """A modality's plain metadata for Dagster: a :class:`Table` becomes a Markdown table, floats are
    :func:`rounded`, the rest stays."""
    return rounded(
        {k: dg.MetadataValue.md(markdown_table(v.rows)) if isinstance(v, Table) else v for k, v in metadata.items()}
    )


def outcome_result(outcome: CheckOutcome) -> dg.AssetCheckResult:
    """A modality's check outcome as a check result (the failures' table as :func:`failures_result` shows it)."""
    table = failures_result(outcome.failures).metadata if outcome.table else {}
    severity = dg.AssetCheckSeverity.WARN if outcome.warn_only else dg.AssetCheckSeverity.ERROR
    return dg.AssetCheckResult(
        passed=not outcome.failures,
        severity=severity,
        description=outcome.description,
        metadata={**table, **ui_metadata(outcome.metadata)},
    )


def failures_result(failures: list[CheckFailure]) -> dg.AssetCheckResult:
    """A check's result; the reasons are also its description, so the CLI output shows them at INFO."""
    rows = [{"column": f.column, "problem": f.problem} for f in failures]
    description = "; ".join(f"{f.column or f.expectation}: {f.problem}" for f in failures[:20]) or None
    return dg.AssetCheckResult(
        passed=not failures,
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata={"n_failures": len(failures), "failures": dg.MetadataValue.md(markdown_table(rows))},
    )


# -- a task of a family that cannot be modelled --------------------------------------------------------------------
@contextmanager
def no_model_recorded(
    spec: TaskSpec,
    storage: MeddiagStorage,
    step: str,
    rows: pl.DataFrame,
    family_report: Callable[[MeddiagStorage], None] | None,
) -> Iterator[None]:
    """For a task of a family (``family_report`` set; e.g. one outcome of an omop spec of several): when ``step``
    cannot model the data (a split short of a class, features with nothing to learn from), its error, as the run
    logs it, and the labelled ``rows`` per class are recorded (``reports/<task>/no_model.json``) and the family's
    comparison is written again (this run reaches no champion step to do it); then the step fails with that error.
    A run that gets past the step clears an earlier reason."""
    if family_report is None:
        yield
        return
    try:
        yield
    except (SplitError, FeaturesRefused) as exc:
        classes = rows[spec.label].drop_nulls().cast(pl.String).value_counts(sort=True).iter_rows()
        record_no_model(storage.root, spec.name, step, str(exc), dict(classes))
        family_report(storage)
        raise
    clear_no_model(storage.root, spec.name)


# -- model handles ------------------------------------------------------------------------------------------------
# A handle and its plan name folders relative to the data root (stored values and published plan.json must not
# name the root: it may move); a step resolves them against its storage's root when it uses them.
def handle_dir(handle: dict, root: DataRoot) -> Path:
    """Where a handle's model lives now: its (local) staging folder until the champion asset publishes the
    version, then the same sub-folder of ``models/<task>/<version>/`` (so re-materialising evaluation alone still
    works), fetched into a local copy when the data root is an object store."""
    staged = PurePosixPath(handle["dir"])
    if STAGING not in staged.parts:
        return root.local_dir(str(staged))
    if root.path(str(staged)).exists():
        return root.path(str(staged))
    cut = staged.parts.index(STAGING)
    return root.local_dir(str(PurePosixPath(*staged.parts[:cut], *staged.parts[cut + 1 :])))


def open_handle(handle: dict, root: DataRoot) -> dict:
    """The handle with its folders resolved against the data root: for this step only, never stored."""
    return {**handle, "dir": str(handle_dir(handle, root)), "plan": open_plan(handle["plan"], root)}


def handle_of(spec: TaskSpec, version: str, model_dir: str, meta: dict, plan: dict) -> dict:
    """What a model asset passes on: where the weights are (relative to the data root) and how to use them."""
    return {
        "task": spec.name,
        "version": version,
        "dir": model_dir,
        "name": meta["name"],
        "framework": meta["framework"],
        "params": meta.get("params", {}),
        "val_score": meta.get("val_score"),
        "plan": plan,
        "classes": meta.get("classes"),
        "device": meta.get("device", torch_device()),
        "selection": meta.get("selection"),
    }


def model_handle(
    context, storage: MeddiagStorage, spec: TaskSpec, version: str, model_dir: Path, meta: dict, plan: dict
) -> dict:
    """:func:`handle_of` of ``model_dir`` (under the data root), with its version and parameters as metadata."""
    handle = handle_of(spec, version, storage.root.relative(model_dir), meta, plan)
    context.add_output_metadata(
        rounded(
            {
                "version": version,
                "model": meta["name"],
                "val_score": float(meta.get("val_score") or 0),
                "params": dg.MetadataValue.json(meta.get("params", {})),
            }
        )
    )
    return handle
