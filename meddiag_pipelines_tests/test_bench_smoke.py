"""The benchmarks still run: every ``python -m bench <name> --size smoke`` prints valid JSON lines with the
common fields (untimed: the figures themselves are in bench/README.md), and on the smoke size the pipeline's
Polars and DuckDB EHR features equal the pandas reference. Generated data goes to a temporary folder."""

import json
import subprocess
import sys

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from meddiag_pipelines_tests.conftest import REPO

COMMON = {"name", "impl", "size", "seconds", "peak_rss_mb"}


def run_bench(name: str, tmp_path, *extra: str) -> list[dict]:
    proc = subprocess.run([sys.executable, "-m", "bench", name, "--size", "smoke", *extra], cwd=REPO, capture_output=True,
                          text=True, timeout=240, env={**__import__("os").environ, "MEDDIAG_BENCH_DIR": str(tmp_path),
                                                        "MEDDIAG_FORCE_CPU": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stdout + proc.stderr
    for line in lines:
        assert COMMON <= set(line), line
        assert line["name"] == name and line["size"] == "smoke"
        assert line.get("ok", True), line
    return lines


def test_features_smoke_matches_pandas(tmp_path):
    lines = run_bench("features", tmp_path)
    assert {line["impl"] for line in lines} == {"pandas", "polars", "duckdb"}
    assert all(line["matches_pandas"] for line in lines if line["impl"] != "pandas")


def test_polars_and_duckdb_features_agree(tmp_path):
    from bench.ehr import LAB_CODES, generate
    from bench import ehr_features as ehr

    ds = generate(tmp_path / "ehr", 5_000, seed=3, chunk_rows=2_000)
    assert ds.meta["rows"]["labs"] == 5_000 and ds.meta["chunks"] > 1
    paths = [ds.glob(t) for t in ("labs", "encounters", "diagnoses", "patients")]
    a = ehr.patient_features_polars(*paths, codes=LAB_CODES)
    b = ehr.patient_features_duckdb(*paths, codes=LAB_CODES, memory_limit="200MB", temp_directory=tmp_path / "spill")
    assert a.columns == ehr.feature_names(LAB_CODES) and a.height == ds.meta["rows"]["patients"]
    assert_frame_equal(a, b, rel_tol=1e-9)
    # the generator is deterministic from its seed
    again = generate(tmp_path / "ehr2", 5_000, seed=3, chunk_rows=2_000)
    assert_frame_equal(pl.read_parquet(ds.glob("labs")), pl.read_parquet(again.glob("labs")))


@pytest.mark.parametrize("name", ["ingest", "sensor", "orchestration", "training", "validation", "distributed"])
def test_bench_smoke(name, tmp_path):
    run_bench(name, tmp_path)
