"""The refusal of a run that selects nothing, shared by every executor (:func:`meddiag_pipelines.defs.build.executor`
and :mod:`meddiag_pipelines.defs.dask_executor`).

``dagster asset materialize --select <selection>`` hands an empty selection (``group:<typo>``) on as "no subset",
which runs the whole implicit asset job: every task retrained and promoted. The executors refuse such a run
before its first step."""

import sys

import dagster as dg

IMPLICIT_ASSET_JOB = "__ASSET_JOB"  # dagster's job behind `dagster asset materialize` and the UI's asset launches


class SelectionGuard(dg.Executor):
    """Refuses a run of the implicit asset job that selects nothing: Dagster's CLI turns a selection matching no
    asset into such a run, which would otherwise materialize (retrain, promote) every task. Runs that name their
    assets (``--select '*'``, the UI) and the task jobs (sensors, schedules) pass unchanged."""

    def __init__(self, inner: dg.Executor):
        self._inner = inner

    @property
    def retries(self):
        return self._inner.retries

    def execute(self, plan_context, execution_plan):
        refuse_empty_selection(plan_context.dagster_run)
        yield from self._inner.execute(plan_context, execution_plan)


def refuse_empty_selection(run) -> None:
    if run.job_name == IMPLICIT_ASSET_JOB and run.asset_selection is None and not run.op_selection:
        raise dg.DagsterInvalidSubsetError(
            f"{_cli_selection()} matches no asset, and Dagster would then "
            "materialize every task; nothing was run. `dagster asset list "
            "--select ...` shows what a selection matches."
        )


def _cli_selection() -> str:
    """The ``--select`` (``dagster asset materialize``) or ``--assets`` (``dg launch``) of the command line that
    started this run, to name it in the refusal."""
    argv = sys.argv
    for i, arg in enumerate(argv):
        for flag in ("--select", "--assets"):
            if arg == flag and i + 1 < len(argv):
                return f"the selection {argv[i + 1]!r}"
            if arg.startswith(f"{flag}="):
                return f"the selection {arg.split('=', 1)[1]!r}"
    return "this run's asset selection"
