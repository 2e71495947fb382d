"""The suite's own rules, read from its source: a test names the failure it expects, and no test is skipped away.

- ``pytest.raises`` pins the problem: a ``match=``, or ``with pytest.raises(...) as e:`` and an assert on ``e``
  later in the same test; never ``Exception`` or ``BaseException`` (any bug would pass).
- Nothing skips for want of a package (what the tests import is declared in the ``dev`` extra:
  test_dependencies.py), and the only skips are the allowed ones below; ``postgres.py`` skips on a developer
  machine without PostgreSQL and fails under CI.
- No ``assert`` of a constant.
- The package's imports keep the layer contracts of pyproject.toml (``lint-imports``), and an upward import, a
  cycle or a stray Dagster import breaks them.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from meddiag_pipelines_tests.conftest import run_cli
from meddiag_pipelines_tests.postgres import skip_outside_ci

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"  # the venv's console script (the dev extra)
# (file, pytest attribute): postgres.py's skip_outside_ci; a check of pytest-xdist's workers (CI runs with -n 2).
ALLOWED_SKIPS = {("postgres.py", "skip"), ("test_parallel_workers.py", "skipif")}
SKIPS = {"skip", "skipif", "importorskip", "xfail"}
BROAD = {"Exception", "BaseException"}


def _sources() -> dict[str, ast.Module]:
    return {path.name: ast.parse(path.read_text(encoding="utf-8")) for path in sorted(TESTS.glob("*.py"))}


def _is_pytest(node: ast.AST, attr: str | set[str]) -> bool:
    """``pytest.<attr>`` or ``pytest.mark.<attr>``."""
    attrs = {attr} if isinstance(attr, str) else attr
    if not (isinstance(node, ast.Attribute) and node.attr in attrs):
        return False
    owner = node.value
    if isinstance(owner, ast.Attribute) and owner.attr == "mark":
        owner = owner.value
    return isinstance(owner, ast.Name) and owner.id == "pytest"


def _raises_calls(tree: ast.Module) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and _is_pytest(n.func, "raises")]


def _line(node: ast.stmt) -> int:
    return node.lineno


def _reads(node: ast.AST, names: set[str]) -> bool:
    return any(isinstance(n, ast.Name) and n.id in names for n in ast.walk(node))


def _asserted_later(function: ast.AST, name: str, after: int) -> bool:
    """An ``assert`` after line ``after`` of ``function`` (the end of the ``with``) reads ``name``, or a name
    assigned from it (``message = str(err.value)``)."""
    later = sorted((n for n in ast.walk(function) if isinstance(n, ast.stmt) and n.lineno > after), key=_line)
    names = {name}
    for node in later:
        if isinstance(node, ast.Assign) and _reads(node.value, names):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return any(isinstance(node, ast.Assert) and _reads(node, names) for node in later)


def _unpinned_raises(tree: ast.Module) -> list[int]:
    """Lines of ``pytest.raises`` with neither a ``match=`` nor an assert on its ``as`` name."""
    pinned = set()
    for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)):
        for with_ in (n for n in ast.walk(function) if isinstance(n, ast.With)):
            for item in with_.items:
                call, name = item.context_expr, item.optional_vars
                if isinstance(name, ast.Name) and _asserted_later(function, name.id, with_.end_lineno):
                    pinned.add(id(call))
    unpinned = [c for c in _raises_calls(tree) if id(c) not in pinned]
    return [c.lineno for c in unpinned if not any(k.arg == "match" for k in c.keywords)]


def _broad_raises(tree: ast.Module) -> list[int]:
    lines = []
    for call in _raises_calls(tree):
        expected = call.args[0] if call.args else None
        names = expected.elts if isinstance(expected, ast.Tuple) else [expected]
        if any(isinstance(n, ast.Name) and n.id in BROAD for n in names):
            lines.append(call.lineno)
    return lines


def test_every_pytest_raises_pins_the_problem():
    sources = _sources()
    assert "test_house_rules.py" in sources and sum(len(_raises_calls(t)) for t in sources.values()) > 50
    unpinned = {f: lines for f, tree in sources.items() if (lines := _unpinned_raises(tree))}
    assert not unpinned, f"pytest.raises without match= (or an assert on its `as` name): {unpinned}"
    broad = {f: lines for f, tree in sources.items() if (lines := _broad_raises(tree))}
    assert not broad, f"pytest.raises(Exception): name the exception the code raises: {broad}"


def _skips(tree: ast.Module) -> set[tuple[str, int]]:
    """``pytest.skip(...)``, ``pytest.importorskip(...)`` and ``pytest.mark.skip``/``skipif``/``xfail``: (name, line)."""
    calls = {(n.func.attr, n.lineno) for n in ast.walk(tree) if isinstance(n, ast.Call) and _is_pytest(n.func, SKIPS)}
    marks = {(n.attr, n.lineno) for n in ast.walk(tree) if _is_pytest(n, SKIPS) and isinstance(n.value, ast.Attribute)}
    return calls | marks


def test_nothing_is_skipped_away():
    found = {(f, attr, line) for f, tree in _sources().items() for attr, line in _skips(tree)}
    assert {(f, attr) for f, attr, _ in found} == ALLOWED_SKIPS, sorted(found)


def test_without_postgresql_a_developer_machine_skips_and_ci_fails(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"no initdb \(CI is set: the PostgreSQL tests must run there"):
        skip_outside_ci("no initdb")
    for unset in ("", "false"):
        monkeypatch.setenv("CI", unset)
        with pytest.raises(pytest.skip.Exception, match="^no initdb$"):
            skip_outside_ci("no initdb")


def test_no_assert_of_a_constant():
    constant = {
        (f, n.lineno)
        for f, tree in _sources().items()
        for n in ast.walk(tree)
        if isinstance(n, ast.Assert) and isinstance(n.test, ast.Constant)
    }
    assert not constant, sorted(constant)


RAISES = "def t():\n    with pytest.raises("


@pytest.mark.parametrize(
    ("source", "unpinned", "broad"),
    [
        (RAISES + "ValueError):\n        f()\n", [2], []),
        (RAISES + "ValueError, match='bad'):\n        f()\n", [], []),
        (RAISES + "ValueError) as e:\n        f()\n    assert 'x' in str(e.value)\n", [], []),
        (RAISES + "ValueError) as e:\n        f()\n    m = str(e.value)\n    assert 'x' in m\n", [], []),
        (RAISES + "ValueError) as e:\n        f()\n        assert e\n    print(e)\n", [2], []),
        (RAISES + "(OSError, Exception), match='x'):\n        f()\n", [], [2]),
    ],
)
def test_the_rules_tell_a_pinned_raises_from_an_unpinned_one(source, unpinned, broad):
    tree = ast.parse(source)
    assert (_unpinned_raises(tree), _broad_raises(tree)) == (unpinned, broad)


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the package under ``root`` with ``root/pyproject.toml``'s contracts."""
    env = {"PYTHONPATH": str(root), "COLUMNS": "240"}  # this copy of the package, over run_cli's; lines unwrapped
    return run_cli([str(LINT_IMPORTS), "--no-cache"], env=env, cwd=root, timeout=120)


def _contract_names() -> dict[str, str]:
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    return {c["id"]: c["name"] for c in contracts}


def test_the_package_keeps_its_layer_contracts():
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {len(_contract_names())} kept, 0 broken." in result.stdout


LAZY_UPWARD = "\n\ndef _upward():\n    from meddiag_pipelines.text import readers\n\n    return readers\n"
# (module, what is added to it, the id of a contract it breaks, what the report names)
BREACHES = [
    pytest.param(
        "split.py",
        LAZY_UPWARD,
        "layers",
        "meddiag_pipelines.split -> meddiag_pipelines.text.readers",
        id="core-imports-a-modality-inside-a-function",
    ),
    pytest.param(
        "imaging/scoring.py",
        "\nfrom meddiag_pipelines.tabular import modality\n",
        "modalities-independent",
        "meddiag_pipelines.imaging.scoring -> meddiag_pipelines.tabular.modality",
        id="modality-imports-another",
    ),
    pytest.param(
        "text/shared.py",
        "\nfrom meddiag_pipelines.text import models\n",
        "acyclic",
        ".shared -> .models",
        id="cycle-inside-a-package",
    ),
    pytest.param(
        "flat/features.py",
        "\nimport dagster\n",
        "dagster",
        "meddiag_pipelines.flat.features -> dagster",
        id="modality-imports-dagster",
    ),
]


@pytest.mark.parametrize(("module", "added", "contract", "named"), BREACHES)
def test_an_import_against_the_layers_breaks_the_contracts(tmp_path, module, added, contract, named):
    package = tmp_path / "meddiag_pipelines"
    shutil.copytree(REPO / "meddiag_pipelines", package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    assert _lint_imports(tmp_path).returncode == 0  # the copy keeps them, until the one import below
    with open(package / module, "a", encoding="utf-8") as fh:
        fh.write(added)
    result = _lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout
    broken = {line.split(" BROKEN")[0] for line in result.stdout.splitlines() if " BROKEN" in line}
    assert _contract_names()[contract] in broken, result.stdout
    assert named in result.stdout
