"""The code location of ``dagster ... -m meddiag_pipelines.definitions`` (and ``workspace.yaml``): every task of
the spec folders, built when Dagster loads the location, never on import (:mod:`meddiag_pipelines.defs.build`).
``dg`` loads the same definitions through the task folder component (``meddiag_pipelines.dg_definitions``)."""

import dagster as dg

from meddiag_pipelines.defs.build import build_definitions


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
