"""The code location ``dg`` loads (``[tool.dg.project]`` in pyproject.toml): the defs folder, whose one component
(``defs/defs.yaml``, :class:`~meddiag_pipelines.defs.components.task_folder.TaskFolderComponent`) builds
what ``dagster ... -m meddiag_pipelines.definitions`` builds, resources and executor included. With a
``defs.yaml`` at its root, the defs folder is that one component: ``dg`` imports no other module of it."""

from pathlib import Path

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
