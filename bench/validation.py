"""Validation cost: the tabular GX suite on one SYNTHETIC batch (``bench/orchestration.py:wide_table``), three ways.

* ``polars``: a plain Polars pass written by hand, computing the same checks (the target's reference);
* ``gx_pandas``: the whole suite through GX's pandas engine on a pandas copy (the way before issue 14);
* ``gx_polars``: :func:`meddiag_pipelines.validation.suites.run_suite` on the Polars frame (one Polars pass for
  what it compiles, GX for the rest); ``gx_parquet``: the same on the Parquet file, read included.

Two suites: ``orchestration`` (the spec of ``bench orchestration``: keys, label domain, subgroup; 8 expectations)
and ``declared`` (the same with its 20 numeric and 3 categorical columns declared and ranged: 94). Building the
suite and importing GX are not timed (every way pays them alike); each way runs in a fresh process.
"""

from __future__ import annotations

import argparse
import importlib
import time

from bench import bench_dir, emit, measure, parse_rows

NAME = "validation"
SMOKE_ROWS = 2_000
IMPLS = ("polars", "gx_pandas", "gx_polars", "gx_parquet")


def _spec(suite: str):
    from bench.orchestration import N_CATEGORICAL, N_NUMERIC, SPEC
    from meddiag_pipelines.specs import TaskSpec

    numeric = [f"x{i}" for i in range(N_NUMERIC)]
    declared = {
        "numeric": numeric,
        "categorical": [f"c{k}" for k in range(N_CATEGORICAL)],
        "ranges": {c: [-10.0, 10.0] for c in numeric},
    }
    return TaskSpec.model_validate({**SPEC, **(declared if suite == "declared" else {})})


def _source(rows: int) -> str:
    from bench.orchestration import wide_table

    path = bench_dir() / f"wide_{rows}.parquet"
    if not path.exists():
        wide_table(rows).write_parquet(path)
    return str(path)


def plain_polars(frame, spec) -> list[str]:
    """The suite's checks as one hand-written Polars select: the names of the checks that fail."""
    import polars as pl

    schema, n = frame.schema, frame.height
    keys = [spec.id, spec.label, *spec.numeric, *spec.categorical, *spec.subgroups, spec.patient_id]
    declared = [c for c in dict.fromkeys([*spec.numeric, *spec.categorical, *spec.subgroups]) if c in schema]
    missing = {c: pl.col(c).is_null() | (pl.col(c).is_nan() if schema[c].is_float() else False) for c in schema}
    checks = {
        "id_nulls": missing[spec.id].sum() > 0,
        "id_repeated": pl.col(spec.id).drop_nulls().is_duplicated().any(),
        "label_outside": (~pl.col(spec.label).is_in(list(spec.classes)) & ~missing[spec.label]).sum() > 0,
        **{
            f"range_{c}": (~pl.col(c).is_between(*spec.ranges.get(c, (-1e300, 1e300))) & ~missing[c]).sum() > 0
            for c in spec.numeric
        },
        **{f"nulls_{c}": missing[c].sum() > spec.max_null_rate * n for c in declared},
    }
    failed = frame.select(**checks).row(0, named=True)
    absent = [f"missing_{c}" for c in dict.fromkeys(keys) if c not in schema]
    untyped = [f"type_{c}" for c in spec.numeric if not schema[c].is_numeric()]
    return absent + untyped + [k for k, v in failed.items() if v]


def validate(rows: int, suite: str, impl: str) -> dict:
    """Child: time one way of validating the batch."""
    import polars as pl

    from meddiag_pipelines.validation import suites

    path, spec = _source(rows), _spec(suite)
    importlib.import_module("great_expectations")  # imported before timing, as a run's validation step has it
    frame = None if impl == "gx_parquet" else pl.read_parquet(path)
    exps = suites.tabular_expectations(spec, pl.read_parquet_schema(path).keys())
    start = time.perf_counter()
    if impl == "polars":
        failures = plain_polars(frame, spec)
    elif impl == "gx_pandas":
        failures = suites._run_gx(frame, exps, spec.name)
    else:
        failures = suites.run_suite(path if impl == "gx_parquet" else frame, exps, spec.name)
    return {"seconds": time.perf_counter() - start, "expectations": len(exps), "failures": len(failures)}


def run(size: str = "1m", repeats: int = 3) -> list[dict]:
    rows = parse_rows(size, SMOKE_ROWS)
    _source(rows)
    out = []
    for suite in ("orchestration",) if size == "smoke" else ("orchestration", "declared"):  # smoke: CI time is tight
        best = {}
        for impl in IMPLS:
            runs = [
                measure("bench.validation:validate", {"rows": rows, "suite": suite, "impl": impl})
                for _ in range(1 if size == "smoke" or impl == "gx_pandas" else repeats)
            ]
            ok = [r for r in runs if r["ok"]]
            r = min(ok, key=lambda r: r["seconds"]) if ok else runs[0]
            best[impl] = r.get("seconds")
            rec = {
                "name": NAME,
                "impl": impl,
                "size": size,
                "suite": suite,
                "rows": rows,
                **{k: v for k, v in r.items() if k != "wall_s"},
            }
            if r["ok"]:
                rec["rows_per_s"] = rows / r["seconds"]
                if impl != "polars" and best.get("polars"):
                    rec["x_polars"] = round(r["seconds"] / best["polars"], 2)
            out.append(emit(rec))
    return out


def main(argv: list[str]) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m bench validation")
    parser.add_argument("--size", default="1m", help="rows in the batch (smoke = 2,000)")
    parser.add_argument("--repeats", type=int, default=3, help="best of N for the fast ways (GX on pandas: 1)")
    args = parser.parse_args(argv)
    return run(args.size, args.repeats)
