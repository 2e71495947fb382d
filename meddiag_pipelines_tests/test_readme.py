"""The front page a newcomer follows: every command in README.md's shell blocks is run by a named test (one it
does not name fails here), every `meddiag` command the docs name exists and answers --help, every relative link of
README.md and docs/ resolves, the page stays under 10 KB, and its asset graph is the one the code builds."""

from __future__ import annotations

import ast
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from meddiag_pipelines.__main__ import COMMANDS, build_parser, main
from meddiag_pipelines_tests.conftest import REPO, instance_env, run_cli
from scripts.asset_graph import block, committed_block, task_definitions

README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
MAX_FRONT_PAGE_BYTES = 10 * 1024

# Each command of the front page -> the test that runs it (in this module unless "<module>::<test>").
SETUP = 'python3 -m venv .venv && .venv/bin/pip install -e ".[dev]"'
TESTS = ".venv/bin/pytest -q"
FAST_LOOP = '.venv/bin/pytest -q -m "not slow"'
MAIN_JOB = "DAGSTER_HOME=$PWD/dagster_home .venv/bin/meddiag update"
HELP = ".venv/bin/meddiag --help"
UI = "DAGSTER_HOME=$PWD/dagster_home .venv/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000"
RUN_BY = {
    SETUP: "test_the_setup_and_test_lines_are_the_ones_ci_runs",
    TESTS: "test_the_setup_and_test_lines_are_the_ones_ci_runs",
    FAST_LOOP: "test_the_fast_loop_leaves_out_the_slow_tests_only",
    MAIN_JOB: "test_the_main_job_as_written_ends_on_a_line_per_bundled_task_then_is_up_to_date",
    HELP: "test_meddiag_help_as_written_lists_every_command",
    UI: "test_dagster_dev::test_landed_batch_is_trained_decided_and_scored_without_a_click",
}


def shell_commands(markdown: str) -> list[str]:
    """The commands of every ```bash block: one per line (continuations joined), comments and blanks dropped."""
    commands = []
    for body in re.findall(r"^```bash\n(.*?)^```", markdown, re.S | re.M):
        for line in body.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def test_shell_commands_are_read_line_by_line_without_comments():
    text = "x\n```bash\n# a comment\nfirst --flag \\\n  more\n\nsecond\n```\n```python\nnot_shell\n```\n"
    assert shell_commands(text) == ["first --flag    more", "second"]


def test_every_front_page_command_is_run_by_a_named_test():
    commands = shell_commands(README.read_text(encoding="utf-8"))
    assert commands, "README.md has no bash block"
    unmapped = [c for c in commands if c not in RUN_BY]
    assert not unmapped, f"README.md names commands no test runs (map each in RUN_BY to its test): {unmapped}"
    assert sorted(set(commands)) == sorted(RUN_BY), "RUN_BY maps commands README.md no longer names"
    for test in set(RUN_BY.values()):
        module, _, name = test.rpartition("::")
        path = Path(__file__).with_name(f"{module}.py") if module else Path(__file__)
        defined = {f.name for f in ast.walk(ast.parse(path.read_text())) if isinstance(f, ast.FunctionDef)}
        assert name in defined, f"{test} (named in RUN_BY) does not exist"


def test_the_setup_and_test_lines_are_the_ones_ci_runs():
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert SETUP in ci_lines and TESTS in ci_lines


def test_the_ui_command_is_the_one_the_dagster_dev_test_starts():
    """test_dagster_dev.py starts `dagster dev` with the README's arguments (its own port and DAGSTER_HOME)."""
    source = (Path(__file__).with_name("test_dagster_dev.py")).read_text()
    literals = {n.value for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Constant)}
    env, argv = split_command(UI)
    assert list(env) == ["DAGSTER_HOME"] and argv[0] == ".venv/bin/dagster" and "workspace.yaml" in argv
    expected = [a for a in argv[1:] if a not in ("workspace.yaml", "3000")]  # the test's own path and free port
    assert [a for a in expected if a not in literals] == []
    assert {"DAGSTER_HOME", "workspace.yaml", "dagster"} <= literals


def split_command(command: str) -> tuple[dict[str, str], list[str]]:
    """(the leading NAME=value assignments, the argv) of one shell command line."""
    words = shlex.split(command)
    env = {}
    while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    return env, words


def executable(argv0: str) -> str:
    """The README's `.venv/bin/<tool>` as the virtual environment running the tests has it."""
    assert argv0.startswith(".venv/bin/"), argv0
    return str(Path(sys.executable).parent / argv0.removeprefix(".venv/bin/"))


def test_the_fast_loop_leaves_out_the_slow_tests_only():
    assert FAST_LOOP == f'{TESTS} -m "not slow"'
    _, argv = split_command(FAST_LOOP)
    module = "meddiag_pipelines_tests/test_cli.py"  # holds both slow and fast tests
    command = [sys.executable, "-m", "pytest", *argv[1:], "-n0", "--collect-only", module]
    result = run_cli(command, timeout=300, expect_rc=0)
    collected = set(re.findall(r"::(test_\w+)", result.stdout))
    assert "test_update_help_states_the_default_wait" in collected
    assert "test_update_logs_at_info_without_dagsters_step_events_and_at_debug_with_verbose" not in collected
    assert re.search(r"\b\d+ deselected\b", result.stdout), result.stdout[-500:]


def test_meddiag_help_as_written_lists_every_command():
    _, argv = split_command(HELP)
    result = run_cli([executable(argv[0]), *argv[1:]], timeout=120, expect_rc=0)
    assert result.stdout.startswith("usage: meddiag")
    assert [c for c in COMMANDS if not re.search(rf"^\s+{c}\s", result.stdout, re.M)] == []


@pytest.mark.slow
def test_the_main_job_as_written_ends_on_a_line_per_bundled_task_then_is_up_to_date(tmp_path):
    """The README's main job on a copy of the bundled landing data, with its own DAGSTER_HOME: a line per task
    naming its figure with the 95% CI, the champion decision with its first reason, and the report; exit 1 only for
    a first model the gate refused (the task has no champion); run again, every task is up to date."""
    env_assignments, argv = split_command(MAIN_JOB)
    assert env_assignments == {"DAGSTER_HOME": "$PWD/dagster_home"}
    home, data = tmp_path / "dagster_home", tmp_path / "data"
    env = instance_env(home, data)  # the bundled specs only
    shutil.copytree(REPO / "data" / "landing", data / "landing")
    tasks = sorted(p.name for p in (data / "landing").iterdir() if p.is_dir())
    assert len(tasks) >= 4, tasks
    command = [executable(argv[0]), *argv[1:]]
    first = run_cli(command, env=env, timeout=1800)
    lines = sorted(first.stdout.splitlines())
    assert [line.split(":")[0] for line in lines] == tasks, first.stdout + first.stderr[-4000:]
    figure = r"AUROC [01]\.\d{3} \([01]\.\d{3}-[01]\.\d{3}\)(, macro-F1 0\.\d{3})?"
    decision = r"(promoted \S+ \(.+\)|not promoted: .+ · (no champion|champion \S+ stays))"
    for task, line in zip(tasks, lines, strict=True):
        report = data / "reports" / task / "latest" / "report.html"
        assert re.fullmatch(rf"{task}: {figure} · {decision} · report {re.escape(str(report))}", line), line
        assert report.is_file(), line
    refused_first = [line for line in lines if " · no champion · " in line]
    assert first.returncode == (1 if refused_first else 0), first.stderr[-4000:]
    again = run_cli(command, env=env, expect_rc=0)
    assert [line.split(" · ")[0] for line in sorted(again.stdout.splitlines())] == [f"{t}: up to date" for t in tasks]


def code_text(markdown: str) -> list[str]:
    """The fenced blocks and inline code spans of a markdown page."""
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", markdown, re.S | re.M)
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", markdown, flags=re.S | re.M)
    return fenced + re.findall(r"`([^`\n]+)`", prose)


def named_cli_commands(markdown: str) -> set[tuple[str, ...]]:
    """Each `meddiag <command> [<sub-command>]` (or `-m meddiag_pipelines <command>`) a page names in code."""
    commands = dict(cli_commands())
    named = set()
    for code in code_text(markdown):
        for words in re.findall(r"(?:\bmeddiag|-m meddiag_pipelines)((?: +[\w-]+)+)", code):
            path: tuple[str, ...] = ()
            for word in words.split():
                if (*path, word) not in commands:
                    break
                path = (*path, word)
            first = words.split()[0]
            named.add(path or (first,))
    return named


def cli_commands() -> dict[tuple[str, ...], object]:
    """Every command path of the CLI ((), ("update",), ("registry", "list") ...) and its parser."""
    found, pending = {}, [((), build_parser())]
    while pending:
        path, parser = pending.pop()
        found[path] = parser
        for action in parser._actions:
            for name, sub in (getattr(action, "choices", None) or {}).items():
                if hasattr(sub, "_actions"):
                    pending.append(((*path, name), sub))
    return found


def test_a_named_command_is_read_up_to_the_first_word_that_is_not_a_command():
    page = "`meddiag registry pin heart_disease <v>`, `meddiag update -v`, `meddiag --help`, `meddiag frobnicate x`."
    assert named_cli_commands(page) == {("registry", "pin"), ("update",), ("--help",), ("frobnicate",)}


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.name)
def test_every_meddiag_command_a_page_names_exists_and_answers_help(page, capsys):
    known = cli_commands()
    for path in sorted(named_cli_commands(page.read_text(encoding="utf-8"))):
        if path == ("--help",):
            path = ()
        assert path in known, f"{page.name} names `meddiag {' '.join(path)}`, which the CLI does not have"
        with pytest.raises(SystemExit, match="^0$"):
            main([*path, "--help"])
        assert capsys.readouterr().out.startswith("usage: meddiag")


def test_the_docs_name_the_cli_commands_newcomers_need():
    named = set().union(*(named_cli_commands(p.read_text(encoding="utf-8")) for p in [README, *DOCS]))
    assert {("update",), ("init",), ("requeue",), ("reset",), ("registry", "list"), ("registry", "pin")} <= named


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", text, re.M):
        base = slug(heading)
        found.add(base if base not in seen else f"{base}-{seen[base]}")
        seen[base] = seen.get(base, 0) + 1
    return found


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]  # http:, https:, mailto: ...


def test_anchors_are_githubs():
    assert slug("End to end (the user's view)") == "end-to-end-the-users-view"
    assert slug("Distributed XGBoost (issue 15 §3)") == "distributed-xgboost-issue-15-3"
    assert slug("With `dg`") == "with-dg"


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.name}")
    return broken


def test_a_link_to_a_missing_file_or_heading_is_found(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## A part\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#a-part) [gone](nowhere.md) [bad](other.md#b-part) [web](https://x.org/y)\n")
    assert broken_links(page) == ["nowhere.md: no such file", "other.md#b-part: no heading #b-part in other.md"]


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    assert broken_links(page) == []


def test_the_front_page_links_every_docs_page_and_stays_small():
    linked = {(REPO / t.partition("#")[0]).resolve() for t in relative_links(README)}
    assert [p.name for p in DOCS if p.resolve() not in linked] == []
    size = len(README.read_bytes())
    assert size <= MAX_FRONT_PAGE_BYTES, f"README.md is {size} bytes: move detail into docs/"


def test_the_asset_graph_on_the_front_page_is_the_one_the_code_builds():
    committed = committed_block(README.read_text(encoding="utf-8"))
    assert committed == block(task_definitions()), "stale: run `.venv/bin/python -m scripts.asset_graph`"


def test_a_front_page_without_the_graphs_markers_is_refused():
    with pytest.raises(ValueError, match="README.md lacks the marker '<!-- /asset-graph -->'"):
        committed_block("<!-- asset-graph: generated by `python -m scripts.asset_graph`; do not edit by hand -->")
