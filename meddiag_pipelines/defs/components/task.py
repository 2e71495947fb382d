"""A task spec as a Dagster Component: a ``defs.yaml`` naming a spec file gives ``dg`` that task's assets, checks,
job, sensor and schedule, built exactly as ``meddiag_pipelines.definitions`` builds them. Resources and the
executor come from the project-level entry (``meddiag_pipelines.dg_definitions``)."""

import os
from pathlib import Path

import dagster as dg
from pydantic import BaseModel

from meddiag_pipelines.definitions import isolated_task_definitions, spec_error_asset
from meddiag_pipelines.specs import SpecError, load_spec


class TaskScaffoldParams(BaseModel):
    spec: str  # the spec file, absolute or relative to the working directory of `dg scaffold`


class TaskScaffolder(dg.Scaffolder[TaskScaffoldParams]):
    """``dg scaffold defs meddiag_pipelines.defs.components.task.TaskComponent tasks/<task> --spec FILE`` writes
    ``defs/tasks/<task>/defs.yaml`` naming FILE relative to it, once FILE loads as a spec."""

    @classmethod
    def get_scaffold_params(cls) -> type[TaskScaffoldParams]:
        return TaskScaffoldParams

    def scaffold(self, request: dg.ScaffoldRequest[TaskScaffoldParams]) -> None:
        spec = Path(request.params.spec).resolve()
        load_spec(spec)  # a bad spec is refused now, naming the file, rather than at the next load
        dg.scaffold_component(request, {"spec": os.path.relpath(spec, request.target_path.resolve())})


@dg.scaffold_with(TaskScaffolder)
class TaskComponent(dg.Component, dg.Model, dg.Resolvable):
    """One diagnostic task from its YAML spec (the spec file stays the one source: the defs.yaml only names it).

    ```yaml
    type: meddiag_pipelines.defs.components.task.TaskComponent
    attributes:
      spec: ../../../tasks/heart_disease.yaml   # relative to this defs.yaml (or absolute)
    ```"""

    spec: str

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        """The task, or, for a spec that does not load or a task that cannot be built, its ``spec_errors`` asset
        (a WARNING naming the spec file): the other components' tasks load as under ``-m
        meddiag_pipelines.definitions``."""
        path = (context.path / self.spec).resolve()
        try:
            spec = load_spec(path)
        except SpecError as exc:
            named_by = SpecError(exc.path, f"{exc.problem} (the spec of {context.path / 'defs.yaml'})")
            return dg.Definitions(assets=[spec_error_asset(named_by)])
        return isolated_task_definitions(spec, path)
