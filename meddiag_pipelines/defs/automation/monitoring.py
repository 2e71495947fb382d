"""Automation of monitoring: when labels that arrived later show the champion breaching the promotion gate's
criteria (``reports/<task>/monitoring.json``; the predictions asset's ERROR check), request a retrain: one run of
the task's training steps per breached champion, visible in the UI as this sensor's run. The new candidate faces
the same gate; a retrain from the same data, spec and code publishes nothing, so the champion stays stopped until
new labelled batches land or a person pins another version."""

import dagster as dg

from meddiag_pipelines.defs.assets.monitoring import breached_versions
from meddiag_pipelines.defs.automation.landing import run_tags
from meddiag_pipelines.defs.resources.storage import MeddiagStorage
from meddiag_pipelines.specs import TaskSpec

TRAINING_STEPS = ("candidate_model", "baseline_model", "evaluation", "champion")


def build_breach_sensor(spec: TaskSpec) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"{spec.name}_retrain_on_breach",
        minimum_interval_seconds=60,
        target=dg.AssetSelection.assets(*(dg.AssetKey([spec.name, step]) for step in TRAINING_STEPS)),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Requests a retrain of {spec.name} when the realised performance of its champion, once "
        "labels landed, breaches the promotion gate's criteria.",
    )
    def retrain_on_breach(context: dg.SensorEvaluationContext, storage: MeddiagStorage):
        pointer = storage.registry.champion(spec.name)
        reason = breached_versions(storage, spec.name).get(pointer["version"]) if pointer else None
        if reason is None:
            return dg.SkipReason(f"no breach by {spec.name}'s champion")
        context.log.info(f"{spec.name}: champion {pointer['version']} breached ({reason}): retrain requested")
        return dg.RunRequest(
            run_key=f"{spec.name}:breach:{pointer['version']}",
            tags={**run_tags(spec, "breach"), "meddiag/breached_version": pointer["version"]},
        )

    return retrain_on_breach
