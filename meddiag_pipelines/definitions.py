"""One Definitions object for every task spec: bundled specs plus any in ``MEDDIAG_TASKS_DIR``."""


import os

import dagster as dg

from meddiag_pipelines.defs.automation import build_landing_sensor, build_schedule
from meddiag_pipelines.defs.imaging import build_image_assets
from meddiag_pipelines.defs.resources import build_resources
from meddiag_pipelines.defs.tabular import build_tabular_assets
from meddiag_pipelines.defs.text import build_text_assets
from meddiag_pipelines.specs import TaskSpec, load_specs

# Cheap tasks first when runs queue (see dagster_home/dagster.yaml).
RUN_PRIORITY = {"tabular": "10", "text": "0", "image": "0"}
BUILDERS = {"tabular": build_tabular_assets, "image": build_image_assets, "text": build_text_assets}


def build_definitions(specs: list[TaskSpec] | None = None, data_dir=None) -> dg.Definitions:
    specs = load_specs() if specs is None else specs
    assets, checks = [], []
    for spec in specs:
        builder = BUILDERS.get(spec.modality)
        if builder is None:
            continue
        for item in builder(spec):
            (checks if isinstance(item, dg.AssetChecksDefinition) else assets).append(item)
    jobs, sensors, schedules = [], [], []
    for spec in specs:
        if spec.modality not in BUILDERS:
            continue
        # The tag lets dagster.yaml's run queue hold one run per task at a time.
        job = dg.define_asset_job(f"{spec.name}_job", selection=dg.AssetSelection.groups(spec.name),
                                  tags={"meddiag/task": spec.name, "dagster/priority": RUN_PRIORITY[spec.modality]},
                                  description=f"Bring {spec.name} fully up to date from its landing folder.")  # fmt: skip
        jobs.append(job)
        sensors.append(build_landing_sensor(spec, job))
        schedules.append(build_schedule(spec, job))
    return dg.Definitions(assets=assets, asset_checks=checks, jobs=jobs, sensors=sensors, schedules=schedules,
                          resources=build_resources(data_dir), executor=executor())


def executor() -> dg.ExecutorDefinition:
    """In-process by default: on a small machine each step's process start costs more than its work.
    ``MEDDIAG_EXECUTOR=multiprocess`` runs steps in parallel processes (the code keeps no in-process state)."""
    if os.environ.get("MEDDIAG_EXECUTOR") == "multiprocess":
        return dg.multiprocess_executor
    return dg.in_process_executor


defs = build_definitions()
