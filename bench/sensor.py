"""Landing sensor latency: from a batch's _READY marker to its RunRequest, with 10,000 batches already in
landing (and registered as partitions). The sensor is evaluated with dagster.build_sensor_context; the figure is one
evaluation (what a tick costs). In service, add up to the sensor's minimum interval (SENSOR_INTERVAL_S)."""

from __future__ import annotations

import argparse
import shutil
import statistics
import time

from bench import bench_dir, emit, measure, parse_rows

NAME = "sensor"
SMOKE_BATCHES = 200
TASK = "bench_sensor"


def _prepare(n: int):
    root = bench_dir() / f"sensor_{n}"
    landing = root / "landing" / TASK
    if not (root / "_DONE").exists():
        shutil.rmtree(root, ignore_errors=True)
        landing.mkdir(parents=True)
        for i in range(n):
            folder = landing / f"batch_{i:06d}"
            folder.mkdir()
            (folder / "records.csv").write_text(f"rid,pid,x1,outcome\nr{i},p{i},0.5,yes\n")
            (folder / "_READY").touch()
        (root / "_DONE").write_text("ok")
    return root, landing


def tick_latency(n: int, repeats: int) -> dict:
    """Child: the n landed batches are partitions; each repeat lands one new batch, marks it ready and ticks."""
    import dagster as dg

    from meddiag_pipelines.defs.automation.landing import build_landing_sensor
    from meddiag_pipelines.defs.partitions import batch_partitions
    from meddiag_pipelines.defs.resources.storage import MeddiagStorage
    from meddiag_pipelines.specs import TaskSpec

    root, landing = _prepare(n)
    spec = TaskSpec.model_validate({"name": TASK, "modality": "tabular", "label": "outcome", "id": "rid"})
    storage = MeddiagStorage(data_dir=str(root))
    for extra in landing.glob("new_*"):
        shutil.rmtree(extra)
    job = dg.define_asset_job(f"{TASK}_batches_job")
    sensor = build_landing_sensor(spec, job)
    latencies, skip_s = [], []
    with dg.instance_for_test() as instance:
        start = time.perf_counter()
        instance.add_dynamic_partitions(batch_partitions(spec).name, sorted(d.name for d in landing.iterdir()))
        cold_scan_s = time.perf_counter() - start  # registering the n partitions
        for i in range(repeats):
            t0 = time.perf_counter()  # an idle tick: nothing new
            assert isinstance(
                sensor(dg.build_sensor_context(instance=instance, resources={"storage": storage})), dg.SkipReason
            )
            skip_s.append(time.perf_counter() - t0)
            folder = landing / f"new_{i:03d}"
            folder.mkdir()
            (folder / "records.csv").write_text(f"rid,pid,x1,outcome\nn{i},q{i},0.5,no\n")
            (folder / "_READY").touch()
            marker = time.perf_counter()
            result = sensor(dg.build_sensor_context(instance=instance, resources={"storage": storage}))
            latencies.append(time.perf_counter() - marker)
            [request] = result.run_requests
            assert f"new_{i:03d}" in request.run_key
            instance.add_dynamic_partitions(batch_partitions(spec).name, [f"new_{i:03d}"])
    for extra in landing.glob("new_*"):
        shutil.rmtree(extra)
    return {
        "seconds": statistics.median(latencies),
        "all_s": [round(x, 4) for x in latencies],
        "idle_tick_s": statistics.median(skip_s),
        "register_partitions_s": cold_scan_s,
    }


def run(size: str = "10k", repeats: int = 5) -> list[dict]:
    from meddiag_pipelines.defs.automation.landing import SENSOR_INTERVAL_S

    n = parse_rows(size, SMOKE_BATCHES)
    r = measure("bench.sensor:tick_latency", {"n": n, "repeats": repeats if size != "smoke" else 2})
    rec = {
        "name": NAME,
        "impl": "landing_sensor",
        "size": size,
        "batches_in_landing": n,
        **{k: v for k, v in r.items() if k != "wall_s"},
        "sensor_interval_s": SENSOR_INTERVAL_S,
    }
    if r["ok"]:
        rec["batches_per_s"] = n / r["idle_tick_s"]  # landing folders checked per second by an idle tick
    return [emit(rec)]


def main(argv: list[str]) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m bench sensor")
    parser.add_argument("--size", default="10k", help="batches already in landing (smoke = 200)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    return run(args.size, args.repeats)
