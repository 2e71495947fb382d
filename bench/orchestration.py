"""Orchestration overhead: the tabular task materialized through Dagster against the same pure functions
called directly, on the same SYNTHETIC wide table; and the per-step cost of the multiprocess executor.

Both paths do the same work: ingest (read + Warehouse.append), validate (GX per batch), the blocking GX check
over all validated rows, the patient hash split, fit_plan/transform, XGBoost (``trials=1``, small
``max_rounds``), the logistic baseline, evaluation (metrics with a small bootstrap, plots, HTML report), the
promotion decision and publishing the version to the registry. What Dagster adds: the run and event log in its
instance, ``validated_records``, ``split`` and ``features`` written as Parquet tables (with their DuckDB views)
and read back where not kept in memory, asset checks, metadata; and, not counted as overhead but done only
there, the report folder written to disk with its model card, and the predictions step.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from bench import bench_dir, emit, measure, parse_rows

NAME = "orchestration"
SMOKE_ROWS = 2_000
TINY_ROWS = 2_000
N_NUMERIC, N_CATEGORICAL = 20, 3

SPEC = {
    "name": "bench_wide",
    "modality": "tabular",
    "description": "SYNTHETIC wide table for benchmarks",
    "label": "outcome",
    "positive": "yes",
    "classes": ["no", "yes"],
    "id": "rid",
    "patient_id": "pid",
    "subgroups": ["group"],
    "promotion": {"auroc_floor": 0.55},
    "training": {"trials": 1, "timeout_s": 120, "max_rounds": 30, "early_stopping_rounds": 10},
    "evaluation": {"n_bootstrap": 100},
}


def wide_table(n: int, seed: int = 0):
    """SYNTHETIC: ``n`` records of ~n/3 patients, 20 numeric (5% missing) and 3 categorical columns,
    a subgroup and a learnable binary outcome."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_NUMERIC))
    cats = [rng.integers(0, 4 + 3 * k, n) for k in range(N_CATEGORICAL)]
    group = rng.integers(0, 2, n)
    logit = X[:, :5] @ np.array([1.0, -0.8, 0.6, 0.5, -0.4]) + 0.3 * (cats[0] == 1) + 0.2 * group
    y = rng.random(n) < 1 / (1 + np.exp(-logit))
    X[rng.random(X.shape) < 0.05] = np.nan
    cols = {
        "rid": pl.Series(np.arange(n)).cast(pl.String),
        "pid": pl.Series(rng.integers(0, max(1, n // 3), n)).cast(pl.String),
    }
    cols |= {f"x{i}": X[:, i] for i in range(N_NUMERIC)}
    cols |= {f"c{k}": pl.Series(cats[k]).cast(pl.String).str.replace(r"^", f"L{k}_") for k in range(N_CATEGORICAL)}
    cols |= {"group": np.where(group == 1, "A", "B"), "outcome": np.where(y, "yes", "no")}
    return pl.DataFrame(cols).with_columns(pl.col(f"x{i}").fill_nan(None) for i in range(N_NUMERIC))


def _spec():
    from meddiag_pipelines.specs import TaskSpec

    return TaskSpec.model_validate(json.loads(os.environ.get("MEDDIAG_BENCH_SPEC", json.dumps(SPEC))))


def _land(root: Path, frame) -> None:
    folder = root / "landing" / SPEC["name"] / "batch_0001"
    folder.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(folder / "records.parquet")
    (folder / "_READY").touch()


def _fresh_root(tag: str, rows: int) -> Path:
    import polars as pl

    source = bench_dir() / f"wide_{rows}.parquet"
    if not source.exists():
        wide_table(rows).write_parquet(source)
    root = bench_dir() / f"orch_{tag}_{rows}"
    shutil.rmtree(root, ignore_errors=True)
    _land(root, pl.read_parquet(source))
    return root


SMOKE_STEPS = ["raw_records", "validated_records"]  # the smoke run stops here, to stay quick


def run_dagster(rows: int, selection: list[str] | None = None) -> dict:
    """Child: the whole task job through Dagster (execute_in_process, in-process executor)."""
    import dagster as dg

    from meddiag_pipelines.defs.build import build_definitions
    from meddiag_pipelines.update import run_task_in_process

    root = _fresh_root("dagster", rows)
    spec = _spec()
    with dg.instance_for_test() as instance:  # not timed: a deployment's instance exists before its runs
        start = time.perf_counter()
        defs = build_definitions([spec], root)
        result = run_task_in_process(defs, spec, instance, selection, raise_on_error=False)
        seconds = time.perf_counter() - start
        stats = instance.get_run_step_stats(result.run_id)
    steps = {s.step_key: round((s.end_time or 0) - (s.start_time or 0), 3) for s in stats}
    return {"seconds": seconds, "success": result.success, "steps": steps, "step_sum_s": sum(steps.values())}


def run_direct(rows: int, selection: list[str] | None = None) -> dict:
    """Child: the same pure functions the assets call, in the same order, no Dagster run."""
    import numpy as np
    import polars as pl

    from meddiag_pipelines.defs.assets import common, lifecycle
    from meddiag_pipelines.defs.resources.storage import MeddiagStorage
    from meddiag_pipelines.flat.features import missing_data_table
    from meddiag_pipelines.flat.models import read_meta
    from meddiag_pipelines.ingestion.batches import ingest_new_batches, reconcile, validate_pending_batches
    from meddiag_pipelines.split import SPLIT_COLUMN, check_split, split_by_content
    from meddiag_pipelines.tabular import modality as assets
    from meddiag_pipelines.tabular.readers import read_tabular_batch
    from meddiag_pipelines.validation.suites import run_suite, tabular_expectations, validate_tabular

    root = _fresh_root("direct", rows)
    spec = _spec()
    timings = {}
    start = t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        timings[name] = round(now - t, 3)
        t = now

    storage = MeddiagStorage(data_dir=str(root))
    data, warehouse = storage.root, storage.warehouse
    ingest_new_batches(spec, data, warehouse, read_tabular_batch)
    reconcile(spec, warehouse)
    lap("raw_records")
    records, _ = validate_pending_batches(spec, data, warehouse, validate_tabular)
    lap("validated_records")
    if selection:
        return {"seconds": time.perf_counter() - start, "steps": timings}
    failures = run_suite(records, tabular_expectations(spec, records.columns), spec.name)
    assert not failures, failures
    lap("validated_records_suite")
    split, _ = split_by_content(records, spec)
    check_split(split, spec)
    lap("split")
    features, plan = assets.feature_table(split, spec)
    missing_data_table(split.filter(pl.col(SPLIT_COLUMN) == "train"), plan, spec.max_null_rate)
    lap("features")
    version = "direct"
    out = storage.registry.staging_dir(spec.name, version) / "model"
    meta = assets.fit_model(spec, assets.tabular_trainer(spec), features, out)
    lap("candidate_model")
    handle = common.handle_of(spec, version, storage.root.relative(out), meta, plan.as_dict())
    base = {**read_meta(out / "logistic"), "classes": meta["classes"]}
    base_handle = common.handle_of(spec, version, storage.root.relative(out / "logistic"), base, plan.as_dict())
    predict_rows = lifecycle.row_predictor(assets._tabular_predictor)
    tabular = assets.MODALITY
    metrics, _ = lifecycle.evaluate_candidate(
        spec,
        storage,
        split,
        handle,
        base_handle,
        predict_rows,
        lambda rows, plan: tabular.missing_data(spec, rows, plan),
        lambda candidate: tabular.card_extras(spec, candidate),
    )
    lap("evaluation")
    value, _ = lifecycle.decide_champion(spec, storage, split, handle, base_handle, metrics, predict_rows)
    lap("champion")
    assert np.isfinite(metrics["auroc"]) and value["published"]
    return {"seconds": time.perf_counter() - start, "steps": timings}


def bench_definitions():
    """The bench task's definitions (spec and data root from the environment), rebuilt by each step process."""
    from meddiag_pipelines.defs.build import build_definitions

    return build_definitions([_spec()], Path(os.environ["MEDDIAG_DATA_DIR"]))


def run_executor(rows: int, executor: str, selection: list[str] | None = None) -> dict:
    """Child: the tiny task through execute_job with the chosen executor (MEDDIAG_EXECUTOR)."""
    import dagster as dg

    from meddiag_pipelines.defs.build import build_definitions
    from meddiag_pipelines.update import reconstructable_asset_job, whole_task_run

    root = _fresh_root(f"exec_{executor}", rows)
    os.environ["MEDDIAG_DATA_DIR"] = str(root)
    if executor == "multiprocess":
        os.environ["MEDDIAG_EXECUTOR"] = "multiprocess"
    else:
        os.environ.pop("MEDDIAG_EXECUTOR", None)
    with dg.instance_for_test() as instance:
        start = time.perf_counter()
        keys, tags = whole_task_run(build_definitions([_spec()], root), _spec(), instance, selection)
        job = reconstructable_asset_job(__name__, bench_definitions.__name__)
        result = dg.execute_job(job, instance=instance, asset_selection=keys, tags=tags, raise_on_error=False)
        seconds = time.perf_counter() - start
        n_steps = len(instance.get_run_step_stats(result.run_id))
    return {"seconds": seconds, "success": result.success, "n_steps": n_steps}


def run(size: str = "smoke", repeats: int = 1) -> list[dict]:
    rows = parse_rows(size, SMOKE_ROWS)
    env = {"MEDDIAG_FORCE_CPU": "1"}
    out = []
    best = {}
    selection = SMOKE_STEPS if size == "smoke" else None
    for impl, target in (("direct", "bench.orchestration:run_direct"), ("dagster", "bench.orchestration:run_dagster")):
        runs = [measure(target, {"rows": rows, "selection": selection}, env=env) for _ in range(repeats)]
        ok = [r for r in runs if r["ok"] and r.get("success", True)]
        rec = {"name": NAME, "impl": impl, "size": size, "rows": rows, "ok": bool(ok)}
        if ok:
            r = min(ok, key=lambda r: r["seconds"])
            best[impl] = r["seconds"]
            rec.update(
                seconds=r["seconds"],
                peak_rss_mb=r["peak_rss_mb"],
                rows_per_s=rows / r["seconds"],
                steps=r["steps"],
                all_s=[round(x["seconds"], 2) for x in ok],
            )
        else:
            rec["error"] = runs[-1].get("error")
        out.append(rec)
    if len(best) == 2:
        out[1]["overhead_pct"] = round(100 * (best["dagster"] - best["direct"]) / best["direct"], 1)
    # multiprocess executor: per-step cost on a tiny task (not in the smoke run: process starts take minutes)
    executors = () if size == "smoke" else ("in_process", "multiprocess")
    res = {
        ex: measure("bench.orchestration:run_executor", {"rows": TINY_ROWS, "executor": ex}, env=env)
        for ex in executors
    }
    for ex, r in res.items():
        rec = {
            "name": NAME,
            "impl": f"executor_{ex}",
            "size": size,
            "rows": TINY_ROWS,
            "ok": r["ok"] and r.get("success", False),
            "seconds": r.get("seconds"),
            "peak_rss_mb": r.get("peak_rss_mb"),
            "n_steps": r.get("n_steps"),
        }
        if ex == "multiprocess" and rec["ok"] and res["in_process"]["ok"]:
            rec["per_step_overhead_s"] = round((r["seconds"] - res["in_process"]["seconds"]) / max(1, r["n_steps"]), 3)
            rec["steps_per_s"] = r["n_steps"] / r["seconds"]
        if not r["ok"]:
            rec["error"] = r.get("error")
        out.append(rec)
    for rec in out:
        emit(rec)
    return out


def main(argv: list[str]) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m bench orchestration")
    parser.add_argument("--size", default="smoke", help="rows of the wide table (smoke = 2000; 1m)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    return run(args.size, args.repeats)
