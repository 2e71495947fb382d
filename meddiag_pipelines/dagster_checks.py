"""The spec values Dagster itself must accept (a schedule's cron and time zone, an asset owner), checked by
Dagster's public constructors when a spec is read, so that a bad value is an error of its spec, not of the code
location that would otherwise fail to build it. The one module outside the Dagster wiring that imports Dagster
for the specs (the layer contracts in pyproject.toml name it)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from types import ModuleType


def dagster_accepts(build: Callable[[ModuleType], object]) -> bool:
    """Whether Dagster's public constructor ``build(dagster)`` takes a value (the rules the code location will
    apply), silently: a cron interval over its field's range only draws Dagster's warning, and still runs.
    Dagster is imported here, when a spec gives such a value, not when specs.py is."""
    import dagster as dg

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            build(dg)
    except dg.DagsterInvalidDefinitionError:
        return False
    return True
