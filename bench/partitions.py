"""A task with N landed (tiny) batches as dynamic partitions: what it costs to plan and start its runs.

* ``sensor_tick_s``: one landing-sensor evaluation that finds the N new batches (hashes them) and returns the
  add request and one run request per range of at most ``RUN_PARTITIONS`` of them (``batch_runs``);
  ``add_partitions_s``: the instance adding the N keys.
* ``batch_run_plan_s``: creating (planning, not executing) the first of those runs as the sensor's batch job has it
  (raw_records, validated_records and its check): the planned events the backlog's first run waits for.
* ``batch_run_start_s``: from launching the first of those runs (raw_records, in-process executor) to its first
  step starting (planning the run); ``batch_runs_s``: every one of them, whole (reading N batches once).
* validated_records is not run per batch here (GX costs ~0.5-1 s per batch on 2 shared cores, the figure of
  bench orchestration): each partition's file is written from its raw records and its materialization
  recorded, so the downstream figures see N validated partitions.
* ``downstream_start_s`` / ``split_load_s``: the unpartitioned split run over the N partitions: to its first
  step, and the IO manager loading the N partition files as one frame.
* ``idle_tick_s``: a sensor tick afterwards, nothing new (steady state: no hashing); ``next_batch_tick_s`` /
  ``next_batch_run_start_s``: then one more batch lands: the tick that finds it, and its run to its first step.
* Dagster's OSS event logs write one "materialization planned" event per partition of a run (only Dagster+
  storage takes a subset): planning ONE run over N new partitions costs N event writes, hence the ranges.
"""

from __future__ import annotations

import argparse
import shutil
import time

from bench import bench_dir, emit, measure, parse_rows

NAME = "partitions"
SMOKE_BATCHES = 50
TASK = "bench_partitions"
SPEC = {
    "name": TASK,
    "modality": "tabular",
    "label": "outcome",
    "positive": "yes",
    "classes": ["no", "yes"],
    "id": "rid",
    "patient_id": "pid",
    "numeric": ["x1"],
}


def _land(root, n: int, start: int = 0) -> None:
    landing = root / "landing" / TASK
    landing.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        folder = landing / f"batch_{i:06d}"
        folder.mkdir()
        rows = "".join(
            f"r{i}_{j},p{i}_{j},{(i * 7 + j) % 10 / 10},{'yes' if (i + j) % 2 else 'no'}\n" for j in range(3)
        )
        (folder / "records.csv").write_text("rid,pid,x1,outcome\n" + rows)
        (folder / "_READY").touch()


def _first_step_after(instance, run_id: str) -> float:
    import dagster as dg

    starts = [e.timestamp for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)]
    return min(starts)


def _plan_seconds(job, instance, tags: dict) -> float:
    """Creating a run of ``job`` (its planned events written), cancelled at once: it never executes."""
    t0 = time.perf_counter()
    run = instance.create_run_for_job(job, tags={**job.tags, **tags})
    seconds = time.perf_counter() - t0
    instance.report_run_canceled(run)
    return seconds


def _step_seconds(instance, run_id: str, step: str) -> float:
    return next(s.end_time - s.start_time for s in instance.get_run_step_stats(run_id) if s.step_key == step)


def _record_validated(defs, instance, keys: list[str]) -> None:
    """Every partition validated, as a validated_records run would leave it (its file and materialization)."""
    import dagster as dg

    from meddiag_pipelines.atomic import atomic_write
    from meddiag_pipelines.ingestion.batches import RAW_TABLE
    from meddiag_pipelines.storage import run_name

    storage = defs.resources["storage"]
    folder = storage.root.table(TASK, "validated_records")
    raw = storage.warehouse.read(TASK, RAW_TABLE).partition_by("_meddiag_batch", as_dict=True)
    name = run_name(time.time(), "bench000") + ".parquet"  # as a validated_records run names its files
    for (key,), frame in raw.items():
        atomic_write(folder / key / name, frame.write_parquet)
    asset = dg.AssetKey([TASK, "validated_records"])
    for key in keys:
        instance.report_runless_asset_event(dg.AssetMaterialization(asset, partition=key))


def _one_more_batch(root, n: int, sensor, job, instance, defs) -> dict:
    """Steady state: with n partitions known, one new batch lands: the tick, and its run to its first step."""
    import dagster as dg

    _land(root, 1, start=n)
    t0 = time.perf_counter()
    result = sensor(dg.build_sensor_context(instance=instance, resources={"storage": defs.resources["storage"]}))
    tick = time.perf_counter() - t0
    [add], [request] = result.dynamic_partitions_requests, result.run_requests
    instance.add_dynamic_partitions(add.partitions_def_name, list(add.partition_keys))
    launched = time.time()
    run = job.execute_in_process(
        instance=instance, tags=request.tags, asset_selection=[dg.AssetKey([TASK, "raw_records"])]
    )
    return {"next_batch_tick_s": tick, "next_batch_run_start_s": _first_step_after(instance, run.run_id) - launched}


def plan_and_start(n: int) -> dict:
    """Child: land n batches in a fresh data root, tick the sensor, run their ingestion, then split."""
    import dagster as dg

    from meddiag_pipelines.defs.automation.landing import RANGE_END, RANGE_START, run_tags
    from meddiag_pipelines.defs.build import build_definitions
    from meddiag_pipelines.specs import TaskSpec

    root = bench_dir() / f"partitions_{n}"
    shutil.rmtree(root, ignore_errors=True)
    _land(root, n)
    spec = TaskSpec.model_validate(SPEC)
    defs = build_definitions([spec], root)
    sensor = defs.resolve_sensor_def(f"{TASK}_landing_sensor")
    job = defs.resolve_implicit_global_asset_job_def()
    out = {}
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources={"storage": defs.resources["storage"]})
        t0 = time.perf_counter()
        result = sensor(context)
        out["sensor_tick_s"] = time.perf_counter() - t0
        [add], requests = result.dynamic_partitions_requests, result.run_requests
        t0 = time.perf_counter()
        instance.add_dynamic_partitions(add.partitions_def_name, list(add.partition_keys))
        out["add_partitions_s"] = time.perf_counter() - t0
        assert (requests[0].tags[RANGE_START], requests[-1].tags[RANGE_END]) == ("batch_000000", f"batch_{n - 1:06d}")
        out["batch_runs"] = len(requests)
        out["batch_run_plan_s"] = _plan_seconds(defs.resolve_job_def(f"{TASK}_batches_job"), instance, requests[0].tags)
        launched = time.time()
        for i, request in enumerate(requests):
            run = job.execute_in_process(
                instance=instance, tags=request.tags, asset_selection=[dg.AssetKey([TASK, "raw_records"])]
            )
            if i == 0:
                out["batch_run_start_s"] = _first_step_after(instance, run.run_id) - launched
        out["batch_runs_s"] = time.time() - launched
        _record_validated(defs, instance, list(add.partition_keys))
        launched = time.time()
        split = job.execute_in_process(
            instance=instance,
            tags=run_tags(spec, "bench"),
            asset_selection=[dg.AssetKey([TASK, "split"])],
            raise_on_error=False,
        )
        out["downstream_start_s"] = _first_step_after(instance, split.run_id) - launched
        out["split_step_s"] = _step_seconds(instance, split.run_id, f"{TASK}__split")
        out["split_ok"] = split.success
        t0 = time.perf_counter()
        idle = sensor(dg.build_sensor_context(instance=instance, resources={"storage": defs.resources["storage"]}))
        out["idle_tick_s"] = time.perf_counter() - t0
        assert isinstance(idle, dg.SkipReason)
        out.update(_one_more_batch(root, n, sensor, job, instance, defs))
    from meddiag_pipelines.storage import DataRoot

    folder = DataRoot(root).table(TASK, "validated_records")
    t0 = time.perf_counter()
    import polars as pl

    frame = pl.concat([pl.read_parquet(p) for p in sorted(folder.glob("*/*.parquet"))], how="diagonal_relaxed")
    out["split_load_s"] = time.perf_counter() - t0
    out["rows"] = frame.height
    shutil.rmtree(root, ignore_errors=True)
    return out


def run(size: str = "1000") -> list[dict]:
    n = parse_rows(size, SMOKE_BATCHES)
    r = measure("bench.partitions:plan_and_start", {"n": n})
    return [emit({"name": NAME, "impl": "dynamic_partitions", "size": size, "batches": n, **r})]


def main(argv: list[str]) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m bench partitions")
    parser.add_argument("--size", default="1000", help="landed batches (smoke = 50)")
    args = parser.parse_args(argv)
    return run(args.size)
