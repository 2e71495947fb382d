"""Sensors and schedules: a task retrains when a complete batch lands, and every night anyway."""

import json

import dagster as dg

from meddiag_pipelines.defs.resources.storage import MeddiagStorage
from meddiag_pipelines.ingestion.landing import changed_since_ingested, describe_batch, ready_batch_dirs
from meddiag_pipelines.specs import TaskSpec

SENSOR_INTERVAL_S = 10


def new_batches(spec: TaskSpec, storage: MeddiagStorage, seen: dict[str, str]) -> dict[str, str]:
    """Complete batches whose content the cursor has not seen, with content hashes: new names, a batch
    re-landed under a known name, or a known batch changed after it was ingested (ingestion sets it aside). A
    batch whose ``_INGESTED`` marker is newer than all its entries is skipped without being hashed."""
    found = {}
    for batch_dir in ready_batch_dirs(storage.layout.landing(spec.name), spec.landing):
        settled = batch_dir.name in seen if batch_dir.is_symlink() else not changed_since_ingested(batch_dir)
        if settled:
            continue
        digest = describe_batch(spec.name, batch_dir).content_hash
        if seen.get(batch_dir.name) != digest:
            found[batch_dir.name] = digest
    return found


def build_landing_sensor(spec: TaskSpec, job) -> dg.SensorDefinition:
    @dg.sensor(name=f"{spec.name}_landing_sensor", job=job, minimum_interval_seconds=SENSOR_INTERVAL_S,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"Runs {spec.name} end to end when a complete batch lands "
               f"({'a _READY marker' if spec.landing.ready == 'marker' else 'quiet files'}).")  # fmt: skip
    def landing_sensor(context: dg.SensorEvaluationContext, storage: MeddiagStorage):
        seen = json.loads(context.cursor) if context.cursor else {}
        found = new_batches(spec, storage, seen)
        if not found:
            return dg.SkipReason(f"no new complete batch in landing/{spec.name}")
        # One run takes every new batch; the key names them with their content, so a repeated tick, a
        # restart or a daemon replaying the cursor never launches the same work twice.
        run_key = f"{spec.name}:" + ",".join(f"{b}@{h[:16]}" for b, h in sorted(found.items()))
        context.update_cursor(json.dumps({**seen, **found}, sort_keys=True))
        return dg.RunRequest(run_key=run_key, tags={"meddiag/trigger": "landing", "meddiag/new_batches": str(len(found))})

    return landing_sensor


def build_schedule(spec: TaskSpec, job) -> dg.ScheduleDefinition:
    status = dg.DefaultScheduleStatus.RUNNING if spec.schedule.enabled else dg.DefaultScheduleStatus.STOPPED
    return dg.ScheduleDefinition(
        name=f"{spec.name}_nightly_retrain", job=job, cron_schedule=spec.schedule.cron,
        execution_timezone=spec.schedule.timezone, default_status=status, tags={"meddiag/trigger": "schedule"},
        description=f"Retrains {spec.name} on everything ingested so far (schedule.enabled: {spec.schedule.enabled}).",
    )  # fmt: skip
