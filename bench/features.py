"""Patient-level EHR features: the pipeline's Polars and DuckDB code against a straightforward pandas version.

``python -m bench features --size {smoke,1m,10m,50m}`` times each engine on the same SYNTHETIC lab rows
(bench/ehr.py), each in its own process, writing the same Parquet output. ``--budget-mb`` runs every engine
under the same address-space limit (RLIMIT_AS) with DuckDB told to spill past ``--duckdb-memory``: the
larger-than-memory run. On the smoke size the three outputs are compared value by value.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from bench import bench_dir, emit, measure, parse_rows

NAME = "features"
SMOKE_ROWS = 20_000
IMPLS = ("pandas", "polars", "duckdb")


def pandas_features(root: str, codes: list[str]):
    """The obvious pandas: read everything, sort, group, unstack. Same definitions as ehr_features.py."""
    import pandas as pd

    root = Path(root)
    labs = pd.read_parquet(root / "labs", columns=["patient_id", "lab_code", "charttime", "value"])
    labs = labs[labs["lab_code"].isin(codes)]
    # last = recorded value at the latest charttime, ties to the larger value: sort, then take the last non-null
    labs = labs.sort_values(["patient_id", "lab_code", "charttime", "value"], na_position="first")
    grouped = labs.groupby(["patient_id", "lab_code"])["value"]
    stats = grouped.agg(["size", "count", "mean", "min", "max", "last"])
    stats["missing_rate"] = 1 - stats["count"] / stats["size"]
    stats = stats.rename(columns={"size": "n"}).drop(columns="count")
    wide = stats.unstack("lab_code")
    wide.columns = [f"{code}__{'count' if stat == 'n' else stat}" for stat, code in wide.columns]
    patients = pd.read_parquet(root / "patients", columns=["patient_id"]).drop_duplicates().set_index("patient_id")
    enc = (
        pd.read_parquet(root / "encounters", columns=["patient_id"]).groupby("patient_id").size().rename("n_encounters")
    )
    dx = pd.read_parquet(root / "diagnoses", columns=["patient_id"]).groupby("patient_id").size().rename("n_diagnoses")
    out = patients.join(enc).join(dx).join(wide)
    counts = ["n_encounters", "n_diagnoses"] + [f"{c}__count" for c in codes]
    for c in codes:  # a code no patient has would be absent from the unstacked columns
        for s in ("count", "mean", "min", "max", "last", "missing_rate"):
            out[f"{c}__{s}"] = out[f"{c}__{s}"] if f"{c}__{s}" in out else float("nan")
    out[counts] = out[counts].fillna(0).astype("int64")
    from bench.ehr_features import feature_names

    return out.reset_index().sort_values("patient_id")[feature_names(codes)]


def run_impl(
    impl: str, root: str, codes: list[str], out: str, memory_limit: str | None = None, temp_directory: str | None = None
) -> dict:
    """Child process: build the features with one engine and write them to ``out``."""
    from bench import ehr_features as ehr

    root_p = Path(root)
    paths = [str(root_p / t / "*.parquet") for t in ("labs", "encounters", "diagnoses", "patients")]
    start = time.perf_counter()
    if impl == "pandas":
        pandas_features(root, codes).to_parquet(out, index=False)
    elif impl == "polars":
        ehr.patient_features_polars(*paths, codes=codes, out=Path(out))
    elif impl == "duckdb":
        ehr.patient_features_duckdb(
            *paths, codes=codes, out=Path(out), memory_limit=memory_limit, temp_directory=temp_directory
        )
    else:
        raise ValueError(impl)
    return {"seconds": time.perf_counter() - start}


def compare(outputs: dict[str, Path]) -> dict[str, bool]:
    import polars as pl
    from polars.testing import assert_frame_equal

    reference = pl.read_parquet(outputs["pandas"])
    result = {}
    for impl in ("polars", "duckdb"):
        try:
            assert_frame_equal(pl.read_parquet(outputs[impl]), reference, rel_tol=1e-9, abs_tol=1e-12)
            result[impl] = True
        except AssertionError as exc:
            print(f"# {impl} differs from pandas: {str(exc)[:300]}", flush=True)
            result[impl] = False
    return result


def run(
    size: str = "smoke",
    impls: tuple[str, ...] = IMPLS,
    budget_mb: int | None = None,
    pandas_rlimit_mb: int = 14_000,
    duckdb_memory: str | None = None,
    seed: int = 0,
) -> list[dict]:
    from bench.ehr import LAB_CODES, generate

    rows = parse_rows(size, SMOKE_ROWS)
    t0 = time.perf_counter()
    ds = generate(bench_dir() / f"ehr_{rows}_seed{seed}", rows, seed)
    gen_s = time.perf_counter() - t0
    work = bench_dir() / f"features_out_{rows}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    spill = work / "spill"
    records, outputs = [], {}
    for impl in impls:
        out = work / f"{impl}.parquet"
        limit = budget_mb or (pandas_rlimit_mb if impl == "pandas" else None)
        mem = duckdb_memory or (f"{int(budget_mb * 0.4)}MB" if budget_mb else None)
        res = measure(
            "bench.features:run_impl",
            {
                "impl": impl,
                "root": str(ds.root),
                "codes": LAB_CODES,
                "out": str(out),
                "memory_limit": mem if impl == "duckdb" else None,
                "temp_directory": str(spill) if impl == "duckdb" else None,
            },
            rlimit_as_mb=limit,
        )
        rec = {
            "name": NAME,
            "impl": impl,
            "size": size,
            "rows": rows,
            "seconds": res.get("seconds"),
            "peak_rss_mb": res.get("peak_rss_mb"),
            "rows_per_s": rows / res["seconds"] if res.get("seconds") else None,
            "ok": res["ok"],
            "rlimit_as_mb": limit,
        }
        if impl == "duckdb" and mem:
            rec["duckdb_memory_limit"] = mem
            rec["spilled_mb"] = (
                round(sum(p.stat().st_size for p in spill.rglob("*") if p.is_file()) / 2**20, 1)
                if spill.exists()
                else 0
            )
        if not res["ok"]:
            rec["error"] = res.get("error", "")[-300:]
        if res["ok"]:
            outputs[impl] = out
        records.append(rec)
    base = next((r for r in records if r["impl"] == "pandas" and r["ok"]), None)
    if base:
        for rec in records:
            if rec["impl"] != "pandas" and rec["ok"]:
                rec["speedup_vs_pandas"] = round(base["seconds"] / rec["seconds"], 2)
                rec["memory_vs_pandas"] = round(rec["peak_rss_mb"] / base["peak_rss_mb"], 3)
    if rows <= 1_000_000 and set(IMPLS) <= set(outputs):
        for impl, same in compare(outputs).items():
            next(r for r in records if r["impl"] == impl)["matches_pandas"] = same
    for rec in records:
        rec["generate_s"] = round(gen_s, 2)
        emit(rec)
    shutil.rmtree(work, ignore_errors=True)
    return records


def main(argv: list[str]) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m bench features")
    parser.add_argument("--size", default="smoke")
    parser.add_argument("--impl", action="append", choices=IMPLS, help="repeatable; default all three")
    parser.add_argument("--budget-mb", type=int, help="RLIMIT_AS for every engine (larger-than-memory run)")
    parser.add_argument("--pandas-rlimit-mb", type=int, default=14_000)
    parser.add_argument("--duckdb-memory", help="DuckDB memory_limit (default 40%% of --budget-mb)")
    args = parser.parse_args(argv)
    return run(args.size, tuple(args.impl or IMPLS), args.budget_mb, args.pandas_rlimit_mb, args.duckdb_memory)
