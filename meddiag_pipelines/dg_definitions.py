"""The code location ``dg`` loads (``[tool.dg.project]`` in pyproject.toml): every task component of the defs
folder (one ``defs.yaml`` per task under ``defs/tasks/``) plus the project-level resources and executor that
``meddiag_pipelines.definitions`` gives its tasks. ``dagster ... -m meddiag_pipelines.definitions`` never
loads this module, so no task is built twice."""

from pathlib import Path

import dagster as dg

from meddiag_pipelines.definitions import executor
from meddiag_pipelines.defs.resources.storage import build_resources


@dg.definitions
def defs() -> dg.Definitions:
    tasks = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
    return dg.Definitions.merge(dg.Definitions(resources=build_resources(), executor=executor()), tasks)
