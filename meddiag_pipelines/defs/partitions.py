"""Each landed batch of a task is one partition of that task's batch-level assets."""

import dagster as dg

from meddiag_pipelines.specs import TaskSpec


def batch_partitions(spec: TaskSpec) -> dg.DynamicPartitionsDefinition:
    """The task's batches, registered by its landing sensor or the ``update`` command."""
    return dg.DynamicPartitionsDefinition(name=f"{spec.name}__batches")
