"""``MEDDIAG_EXECUTOR=dask``: dagster-dask's executor against an existing Dask distributed scheduler at
``MEDDIAG_DASK_ADDRESS`` (``tcp://host:port``), behind the same selection guard as the other executors.

Each step is a Dask task: a worker process rebuilds the code location itself (it imports
``meddiag_pipelines.update``, reconstructs the definitions from ITS environment and runs the one step against the
instance the run's process passed it). A worker therefore needs the package (the same version), the run's
working directory on its ``sys.path`` (or the package installed), the same ``MEDDIAG_*`` variables as the
process that launches the run (``MEDDIAG_DATA_DIR``, ``MEDDIAG_TASKS_DIR``, ``MEDDIAG_EXECUTOR``,
``MEDDIAG_DASK_ADDRESS``), the data root at the same path and the instance's storage (SQLite on one host,
PostgreSQL across hosts). Steps exchange values through the data root only (run-scoped files), never memory.

Workers should run one thread each (``--nthreads 1``): Dagster steps are not thread-safe, and the models set
their own thread counts. A step tagged ``dagster-dask/resource_requirements`` (JSON, e.g. ``{"GPU": 1}``: an
image task's ``candidate_model`` with ``training: {gpu: true}``) only runs on a worker started with those
``--resources``.

It needs the optional ``scale`` extra, so it is imported only when ``MEDDIAG_EXECUTOR=dask`` asks for it
(:func:`meddiag_pipelines.defs.build.executor`); ``dg`` loads the one component of ``defs/defs.yaml``, never every
module of ``defs/``."""

import os
from functools import partial

import dagster as dg
import distributed
from dagster_dask.executor import DaskExecutor, get_dask_resource_requirements, query_on_dask_worker

from meddiag_pipelines.defs.selection_guard import refuse_empty_selection

ADDRESS_VARIABLE = "MEDDIAG_DASK_ADDRESS"


class GuardedDaskExecutor(DaskExecutor):
    """dagster-dask's executor for an existing scheduler, behind the selection guard (a subclass: dagster-dask
    checks that the run's executor IS a DaskExecutor, so
    :class:`~meddiag_pipelines.defs.selection_guard.SelectionGuard` cannot wrap it).

    ``execute`` is dagster-dask 0.29.27's own, with one change: the step's arguments are bound in a
    ``functools.partial`` instead of being passed to ``Client.submit``. Dask >= 2024.12 walks every tuple among a
    task's arguments (``dask._task_spec.parse_input``), and Dagster's run and state records are tuples that
    refuse iteration: dagster-dask as published fails every run with "Iteration is not allowed on `@record`".
    (Its wait loop is written out, as Dagster's ``iterate_with_context`` it calls is private.)"""

    def execute(self, plan_context, execution_plan):
        refuse_empty_selection(plan_context.dagster_run)
        futures: dict[str, distributed.Future] = {}
        with distributed.Client(self.cluster_configuration["address"]) as client:
            for level in execution_plan.get_steps_to_execute_by_level():
                for step in level:
                    run_step = partial(
                        query_on_dask_worker,
                        recon_job=plan_context.reconstructable_job,
                        dagster_run=plan_context.dagster_run,
                        run_config=plan_context.run_config,
                        step_keys=[step.key],
                        instance_ref=plan_context.instance.get_ref(),
                        known_state=execution_plan.known_state,
                    )
                    # the upstream futures as an argument: Dask starts a step after the steps it reads from
                    upstream = [futures[key] for step_input in step.step_inputs for key in step_input.dependency_keys]
                    futures[step.key] = client.submit(
                        run_step,
                        upstream,
                        key=f"{plan_context.job_name}.{step.key}",
                        resources=get_dask_resource_requirements(step.tags),
                    )
            done = distributed.as_completed(list(futures.values()), with_results=True)
            while True:
                with dg.raise_execution_interrupts():  # a termination stops the wait, not only a step
                    finished = next(done, None)
                if finished is None:
                    return
                yield from finished[1]  # the step's events


@dg.executor(name="dask", requirements=dg.multiple_process_executor_requirements(), config_schema={})
def dask_executor(init_context) -> GuardedDaskExecutor:
    """Steps as tasks of the Dask scheduler at ``MEDDIAG_DASK_ADDRESS`` (read when a run starts)."""
    address = os.environ.get(ADDRESS_VARIABLE, "").strip()
    if not address:
        raise dg.DagsterInvariantViolationError(
            f"MEDDIAG_EXECUTOR=dask needs {ADDRESS_VARIABLE}, the Dask "
            "scheduler's address (tcp://host:port); nothing was run"
        )
    return GuardedDaskExecutor("existing", {"address": address})
