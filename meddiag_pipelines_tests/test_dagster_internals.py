"""Dagster's private API is used in one module only, and what that module relies on still holds."""

from __future__ import annotations

import ast
from pathlib import Path

import dagster as dg
import pytest

import meddiag_pipelines
from meddiag_pipelines.dagster_internals import reconstructable_job

IMPLICIT_ASSET_JOB = "__ASSET_JOB"
PACKAGE = Path(meddiag_pipelines.__file__).parent


@dg.asset
def summary() -> int:
    return 1


def tiny_definitions() -> dg.Definitions:
    return dg.Definitions(assets=[summary])


def tiny_asset_job() -> dg.JobDefinition:
    return tiny_definitions().resolve_implicit_global_asset_job_def()


def _private_imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return [n for n in names if n.startswith("dagster._")]


def test_only_dagster_internals_imports_private_dagster_modules():
    found = {str(p.relative_to(PACKAGE)): m for p in sorted(PACKAGE.rglob("*.py")) if (m := _private_imports(p))}
    assert found == {"dagster_internals.py": ["dagster._core.definitions.reconstruct"]}


def test_the_implicit_asset_job_rebuilds_in_a_step_process():
    """The multiprocess executor runs the step in a process of its own, which rebuilds the job from the pointer."""
    job = reconstructable_job(__name__, tiny_definitions.__name__, IMPLICIT_ASSET_JOB)
    with dg.instance_for_test() as instance:
        result = dg.execute_job(job, instance=instance, asset_selection=[summary.key])
        assert result.success and result.job_def.name == IMPLICIT_ASSET_JOB
        assert instance.get_latest_materialization_event(summary.key) is not None


def test_the_public_way_still_refuses_the_implicit_asset_job():
    """When this fails, Dagster's public ``build_reconstructable_job`` rebuilds the implicit asset job: use it in
    ``dagster_internals`` and drop the private import."""
    job = dg.build_reconstructable_job(__name__, tiny_asset_job.__name__)
    with pytest.raises(dg.DagsterInvalidDefinitionError, match="reserved name"):
        job.get_definition()
