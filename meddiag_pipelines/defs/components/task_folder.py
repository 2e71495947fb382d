"""The spec folders as one Dagster Component: ``dg`` gets every task of ``meddiag_pipelines/tasks/*.yaml`` and
``MEDDIAG_TASKS_DIR``, with the resources and the executor, from the function ``dagster ... -m
meddiag_pipelines.definitions`` calls, so the two entry points give the same definitions and show a bad spec
the same way (the other tasks load; the spec file's error is an asset of ``spec_errors`` and a WARNING)."""

import dagster as dg

from meddiag_pipelines.defs.build import build_definitions


class TaskFolderComponent(dg.Component, dg.Model, dg.Resolvable):
    """Every task spec of the spec folders; a task is added by adding its spec file there (``meddiag init <task>
    <data> --out <folder>/<task>.yaml`` drafts one), never by editing the defs folder.

    ```yaml
    type: meddiag_pipelines.defs.components.task_folder.TaskFolderComponent
    ```"""

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        return build_definitions()
