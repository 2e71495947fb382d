"""Automation: the landing sensor registers each complete batch as a partition and runs its ingestion (and first
releases the task's runs whose process is gone: ``dead_runs``); the assets downstream update by declarative
automation (eager when new valid partitions land, and at the spec's nightly cron tick when something changed since)."""

import hashlib

import dagster as dg

from meddiag_pipelines.defs.dead_runs import TASK_TAG, host_tag, release_dead_runs
from meddiag_pipelines.defs.partitions import LandingScan, batch_partitions, run_ranges, scan_landing
from meddiag_pipelines.defs.resources.storage import MeddiagStorage
from meddiag_pipelines.modalities import registry
from meddiag_pipelines.specs import TaskSpec

SENSOR_INTERVAL_S = 10
TRIGGER_TAG = "meddiag/trigger"
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def run_tags(spec: TaskSpec, trigger: str) -> dict[str, str]:
    """The tags of every run of a task, whoever starts it (the run queue holds one run per task at a time), with
    the host that creates it (where a run of ``update`` or of the default run launcher runs: ``dead_runs``)."""
    return {
        TASK_TAG: spec.name,
        "dagster/priority": registry.get(spec.modality).run_priority,
        TRIGGER_TAG: trigger,
        **host_tag(),
    }


def range_tags(keys: list[str]) -> dict[str, str]:
    """The tags of a run over the partitions ``keys[0]`` to ``keys[-1]`` (in the order they were added)."""
    return {RANGE_START: keys[0], RANGE_END: keys[-1]}


def batch_run_requests(spec: TaskSpec, scan: LandingScan, tags: dict[str, str]) -> list[dg.RunRequest]:
    """One run per range of at most RUN_PARTITIONS new partitions (they are added in this order, after every
    known one) and one run per known partition to run again. Run keys name the content: the same content never
    runs twice."""
    requests = []
    for keys in run_ranges(sorted(scan.new)):
        content = hashlib.sha256("\n".join(f"{k}@{scan.new[k]}" for k in keys).encode()).hexdigest()[:16]
        requests.append(
            dg.RunRequest(
                run_key=f"{spec.name}:new:{keys[0]}..{len(keys)}@{content}",
                tags={**tags, **range_tags(keys), "meddiag/new_batches": str(len(keys))},
            )
        )
    for key, digest in sorted(scan.again.items()):
        requests.append(dg.RunRequest(run_key=f"{spec.name}:{key}@{digest[:16]}", partition_key=key, tags=dict(tags)))
    return requests


def build_landing_sensor(spec: TaskSpec, job) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"{spec.name}_landing_sensor",
        job=job,
        minimum_interval_seconds=SENSOR_INTERVAL_S,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Registers each complete batch of {spec.name} as a partition and ingests it "
        f"({'a _READY marker' if spec.landing.ready == 'marker' else 'quiet files'}).",
    )
    def landing_sensor(context: dg.SensorEvaluationContext, storage: MeddiagStorage):
        for message in release_dead_runs(context.instance, spec.name).released:
            context.log.info(message)
        partitions = batch_partitions(spec)
        known = set(context.instance.get_dynamic_partitions(partitions.name))
        scan = scan_landing(spec, storage.root, storage.warehouse, known, retry_unrecorded=False)
        for name in scan.refused:
            context.log.warning(f"{spec.name}: batch {name} quarantined: its name cannot be a partition key")
        if not scan.new and not scan.again:
            return dg.SkipReason(f"no new or changed complete batch in landing/{spec.landing_folder}")
        return dg.SensorResult(
            run_requests=batch_run_requests(spec, scan, run_tags(spec, "landing")),
            dynamic_partitions_requests=[partitions.build_add_request(sorted(scan.new))] if scan.new else [],
        )

    return landing_sensor


def downstream_condition(spec: TaskSpec) -> dg.AutomationCondition:
    """Eager: an asset updates once its parents did (new valid partitions landed). With the nightly retrain on,
    also at its cron tick, which requests nothing when no parent changed since the last tick."""
    eager = dg.AutomationCondition.eager()
    if not spec.schedule.enabled:
        return eager
    return eager | dg.AutomationCondition.on_cron(spec.schedule.cron, spec.schedule.timezone)


def build_automation_sensor(spec: TaskSpec) -> dg.AutomationConditionSensorDefinition:
    return dg.AutomationConditionSensorDefinition(
        name=f"{spec.name}_automation",
        target=dg.AssetSelection.groups(spec.name),
        default_status=dg.DefaultSensorStatus.RUNNING,
        run_tags=run_tags(spec, "automation"),
        description=f"Updates {spec.name}'s assets downstream of its batches by their automation conditions.",
    )
