"""The builders of the project's definitions: every task spec of the spec folders (bundled specs plus any in
``MEDDIAG_TASKS_DIR``), with the resources and the executor. Both entry points call :func:`build_definitions`:
``meddiag_pipelines.definitions`` (``dagster ... -m``, ``workspace.yaml``) and the task folder component that ``dg``
loads (:mod:`meddiag_pipelines.defs.components.task_folder`); importing this module builds nothing.

A spec that does not load, or whose task Dagster cannot build, leaves the other tasks in place: it becomes an
asset of the group ``spec_errors`` whose description is the error and whose materialization fails with it (so
``--select '*'`` ends failed and names it), and a WARNING at load. Every executor refuses a run that selects
nothing (:mod:`meddiag_pipelines.defs.selection_guard`)."""

import hashlib
import os
import re
import warnings
from pathlib import Path

import dagster as dg

from meddiag_pipelines.defs.assets.task_assets import build_task_assets
from meddiag_pipelines.defs.automation.landing import (
    build_automation_sensor,
    build_landing_sensor,
    downstream_condition,
    run_tags,
)
from meddiag_pipelines.defs.automation.monitoring import build_breach_sensor
from meddiag_pipelines.defs.partitions import ingestion_keys
from meddiag_pipelines.defs.resources.storage import build_resources
from meddiag_pipelines.defs.selection_guard import SelectionGuard
from meddiag_pipelines.specs import SPEC_ERRORS_GROUP, SpecError, TaskSpec, scan_specs


def build_definitions(specs: list[TaskSpec] | None = None, data_dir=None) -> dg.Definitions:
    """Every task of ``specs`` (default: every spec that loads from the spec folders, and an error asset for
    each one that does not load or cannot be built)."""
    errors: list[SpecError] = []
    if specs is None:
        scan = scan_specs()
        errors = scan.errors
        tasks = [isolated_task_definitions(spec, scan.files[spec.name]) for spec in scan.specs]
    else:  # the caller's own specs (tests, benchmarks): a task that cannot be built raises
        tasks = [build_task_definitions(task) for spec in specs for task in spec.tasks()]
    shared = dg.Definitions(
        assets=[spec_error_asset(e) for e in errors], resources=build_resources(data_dir), executor=executor()
    )
    return dg.Definitions.merge(shared, *tasks)


def build_task_definitions(spec: TaskSpec) -> dg.Definitions:
    """One task's assets, checks, batch job, landing, automation and breach sensors (no resources: the caller
    supplies them). The batch-level assets (partitioned) run from the landing sensor or ``update``; every
    other asset of the task carries :func:`downstream_condition`."""
    assets, checks = [], []
    with warnings.catch_warnings():  # only while building: the user's own filters stay as they are
        # Dagster 1.13 marks single-run backfills and partitioned asset checks beta or preview; the version is
        # pinned, so the warning tells a user of this project nothing they can act on.
        warnings.filterwarnings("ignore", category=dg.BetaWarning)
        warnings.filterwarnings("ignore", category=dg.PreviewWarning)
        items = build_task_assets(spec)
    for item in items:
        if isinstance(item, dg.AssetChecksDefinition):
            checks.append(item)
        elif item.partitions_def is None or item.key.path[-1] == "predictions":
            assets.append(
                item.map_asset_specs(lambda a: a.replace_attributes(automation_condition=downstream_condition(spec)))
            )
        else:
            assets.append(item)
    batch_level = dg.AssetSelection.assets(
        *sorted(
            ingestion_keys({key: a.asset_deps[key] for a in assets if a.partitions_def is not None for key in a.keys})
        )
    )
    # The tag lets dagster.yaml's run queue hold one run per task at a time.
    job = dg.define_asset_job(
        batch_job_name(spec),
        selection=batch_level,
        tags=run_tags(spec, "landing"),
        description=f"Register and ingest {spec.name}'s new batches (one partition each).",
    )
    return dg.Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=[job],
        sensors=[build_landing_sensor(spec, job), build_automation_sensor(spec), build_breach_sensor(spec)],
    )


def isolated_task_definitions(spec: TaskSpec, path: Path) -> dg.Definitions:
    """The task of the spec file ``path``, or, when Dagster refuses to build it for any reason, its error asset:
    one task that cannot be built never takes the code location, and every other task, down with it."""
    try:
        return build_task_definitions(spec)
    except Exception as exc:  # noqa: BLE001 - whatever a builder raises is this spec's problem only
        error = SpecError(path, f"task {spec.name!r} cannot be built: {type(exc).__name__}: {exc}")
        return dg.Definitions(assets=[spec_error_asset(error)])


def batch_job_name(spec: TaskSpec) -> str:
    return f"{spec.name}_batches_job"


def spec_error_asset(error: SpecError) -> dg.AssetsDefinition:
    """A spec file that did not load, kept in sight: a WARNING now, its error as the asset's description in the
    UI and ``dagster asset list``, and a failed materialization naming it whenever it is selected."""
    stem = re.sub(r"[^a-z0-9_]", "_", error.path.stem.lower())[:40]
    key = f"{stem}_{hashlib.sha256(str(error.path).encode()).hexdigest()[:6]}"  # two folders may hold a.yaml
    dg.get_dagster_logger().warning(
        f"task spec not loaded (asset {SPEC_ERRORS_GROUP}/{key}; the other tasks are loaded): {error}"
    )

    @dg.asset(
        key=[SPEC_ERRORS_GROUP, key],
        group_name=SPEC_ERRORS_GROUP,
        description=f"Spec not loaded: {error}",
        metadata={"spec_file": str(error.path), "error": str(error)},
    )
    def spec_error() -> None:
        raise dg.Failure(description=f"task spec not loaded: {error}")

    return spec_error


def executor() -> dg.ExecutorDefinition:
    """In-process by default: on a small machine each step's process start costs more than its work.
    ``MEDDIAG_EXECUTOR=multiprocess`` runs steps in parallel processes (the code keeps no in-process state);
    ``MEDDIAG_EXECUTOR=dask`` runs them on the workers of the Dask scheduler at ``MEDDIAG_DASK_ADDRESS``
    (:mod:`meddiag_pipelines.defs.dask_executor`: what each worker needs). Every one refuses an empty selection."""
    kind = os.environ.get("MEDDIAG_EXECUTOR")
    if kind == "dask":
        from meddiag_pipelines.defs.dask_executor import dask_executor  # the optional `scale` extra

        return dask_executor
    base = dg.multiprocess_executor if kind == "multiprocess" else dg.in_process_executor
    return dg.ExecutorDefinition(
        name=base.name,
        config_schema=base.config_schema,
        requirements=base.get_requirements,
        executor_creation_fn=lambda init: SelectionGuard(base.executor_creation_fn(init)),
        description=base.description,
    )
