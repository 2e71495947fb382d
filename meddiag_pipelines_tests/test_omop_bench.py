"""The OMOP benchmark still runs at its smoke size, and its pandas reference gives the same study
population, MEDS row count and covariates."""

import pytest

from meddiag_pipelines_tests.test_bench_smoke import run_bench


@pytest.mark.slow
def test_omop_bench_smoke_matches_pandas(tmp_path):
    lines = run_bench("omop", tmp_path)
    assert [line["impl"] for line in lines] == ["omop", "pandas"]
    ours = lines[0]
    assert ours["matches_pandas"] is True and ours["same_population_and_meds_rows"] is True
    assert ours["population"] > 0 and ours["covariate_rows"] > 0 and ours["meds_rows"] > 200_000
