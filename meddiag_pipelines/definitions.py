"""One Definitions object for every task spec: bundled specs plus any in ``MEDDIAG_TASKS_DIR``.

A spec that does not load leaves the other tasks in place: it becomes an asset of the group ``spec_errors``
whose description is the error and whose materialization fails with it (so ``--select '*'`` ends failed and
names it), and a WARNING at load."""


import hashlib
import os
import re

import dagster as dg

from meddiag_pipelines.defs.automation import build_landing_sensor, build_schedule
from meddiag_pipelines.defs.imaging import build_image_assets
from meddiag_pipelines.defs.resources import build_resources
from meddiag_pipelines.defs.tabular import build_tabular_assets
from meddiag_pipelines.defs.text import build_text_assets
from meddiag_pipelines.specs import SpecError, TaskSpec, scan_specs

# Cheap tasks first when runs queue (see dagster_home/dagster.yaml).
RUN_PRIORITY = {"tabular": "10", "text": "0", "image": "0"}
BUILDERS = {"tabular": build_tabular_assets, "image": build_image_assets, "text": build_text_assets}


SPEC_ERRORS_GROUP = "spec_errors"


def build_definitions(specs: list[TaskSpec] | None = None, data_dir=None,
                      spec_errors: list[SpecError] = ()) -> dg.Definitions:  # fmt: skip
    """Every task of ``specs`` (default: every spec that loads from the spec folders, and an error asset for
    each one that does not)."""
    if specs is None:
        scan = scan_specs()
        specs, spec_errors = scan.specs, scan.errors
    assets, checks = [spec_error_asset(e) for e in spec_errors], []
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


def spec_error_asset(error: SpecError) -> dg.AssetsDefinition:
    """A spec file that did not load, kept in sight: a WARNING now, its error as the asset's description in the
    UI and ``dagster asset list``, and a failed materialization naming it whenever it is selected."""
    stem = re.sub(r"[^a-z0-9_]", "_", error.path.stem.lower())[:40]
    key = f"{stem}_{hashlib.sha256(str(error.path).encode()).hexdigest()[:6]}"  # two folders may hold a.yaml
    dg.get_dagster_logger().warning(f"task spec not loaded (asset {SPEC_ERRORS_GROUP}/{key}; the other tasks "
                                    f"are loaded): {error}")  # fmt: skip

    @dg.asset(key=[SPEC_ERRORS_GROUP, key], group_name=SPEC_ERRORS_GROUP, description=f"Spec not loaded: {error}",
              metadata={"spec_file": str(error.path), "error": str(error)})  # fmt: skip
    def spec_error() -> None:
        raise dg.Failure(description=f"task spec not loaded: {error}")

    return spec_error


def executor() -> dg.ExecutorDefinition:
    """In-process by default: on a small machine each step's process start costs more than its work.
    ``MEDDIAG_EXECUTOR=multiprocess`` runs steps in parallel processes (the code keeps no in-process state)."""
    if os.environ.get("MEDDIAG_EXECUTOR") == "multiprocess":
        return dg.multiprocess_executor
    return dg.in_process_executor


defs = build_definitions()
