"""The `meddiag` command line: help for every command without importing the heavy libraries, `update`'s one
line per task (a promotion, a refusal, an up-to-date task, a refused first model), its log levels, rounded UI
metadata."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tomllib

import dagster as dg
import pytest

from meddiag_pipelines.__main__ import build_parser, main
from meddiag_pipelines.defs.build import build_definitions
from meddiag_pipelines.registry.promotion import Decision
from meddiag_pipelines.registry.store import ModelRegistry
from meddiag_pipelines.registry.summary import metrics_figure, task_summary
from meddiag_pipelines.storage import DataRoot
from meddiag_pipelines.update import MAX_WAIT_S, UpdateError, update_task
from meddiag_pipelines_tests.conftest import (
    MEDDIAG,
    REPO,
    SYNTHETIC_SPEC,
    instance_env,
    land,
    run_cli,
    synthetic_records,
)
from meddiag_pipelines_tests.test_registry_listing import publish

TASK = "synthetic_risk"
HEAVY = ("dagster", "polars", "torch", "numpy", "duckdb", "xgboost", "sklearn", "great_expectations", "pydantic")


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, its parser) of every command and sub-command."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


def test_every_command_describes_itself_and_each_of_its_arguments(capsys):
    commands = dict(_commands(build_parser()))
    assert {
        ("update",),
        ("init",),
        ("requeue",),
        ("reset",),
        ("registry", "list"),
        ("registry", "pin"),
        ("registry", "unpin"),
        ("registry", "export"),
    } <= set(commands)
    for path, parser in commands.items():
        assert parser.description, path
        arguments = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
        assert arguments, path
        for action in arguments:
            assert action.help, (path, action.dest)
        with pytest.raises(SystemExit, match="0"):
            main([*path, "--help"])
        shown = capsys.readouterr().out
        for action in arguments:
            names = action.option_strings or [action.metavar or action.dest]
            assert all(n in shown for n in names if isinstance(n, str)), (path, names)


def test_update_help_states_the_default_wait(capsys):
    with pytest.raises(SystemExit, match="0"):
        main(["update", "--help"])
    assert f"default: {MAX_WAIT_S // 3600} hours" in " ".join(capsys.readouterr().out.split())


def test_the_meddiag_script_is_the_command_line(capsys):
    target = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["meddiag"]
    module, function = target.split(":")
    with pytest.raises(SystemExit, match="0"):
        getattr(importlib.import_module(module), function)(["--help"])
    assert "usage: meddiag" in capsys.readouterr().out


def _imported_by(code: str) -> list[str]:
    probe = f"import json, sys\n{code}\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    result = run_cli([sys.executable, "-c", probe], timeout=120, expect_rc=0)
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize("command", [["--help"], ["update", "--help"], ["registry", "list", "--help"], ["init", "-h"]])
def test_help_imports_nothing_heavy(command):
    """`meddiag --help` answers at once: neither Dagster, polars, torch nor the definitions are imported."""
    code = f"import meddiag_pipelines.__main__ as cli\ntry:\n    cli.main({command!r})\nexcept SystemExit:\n    pass"
    assert _imported_by(code) == []


def test_the_registry_module_entry_point_keeps_working_and_is_light():
    code = (
        "import meddiag_pipelines.registry.__main__ as cli\ntry:\n    cli.main(['pin', '--help'])\n"
        "except SystemExit:\n    pass"
    )
    assert _imported_by(code) == []
    result = run_cli([sys.executable, "-m", "meddiag_pipelines.registry", "list", "--help"], timeout=120, expect_rc=0)
    assert "--json" in result.stdout


def test_update_ends_on_a_line_saying_what_was_promoted_and_why_then_up_to_date(synthetic_spec, layout):
    land(layout, TASK, "b1", synthetic_records(200, seed=1))
    defs = build_definitions([synthetic_spec], layout.local)
    with dg.instance_for_test() as instance:
        first = update_task(synthetic_spec, instance, defs=defs).summary.line()
        again = update_task(synthetic_spec, instance, defs=defs).summary.line()
        evaluation = instance.get_latest_materialization_event(dg.AssetKey([TASK, "evaluation"]))
    version = json.loads((layout.models(TASK) / "champion.json").read_text())["version"]
    metrics = json.loads((layout.reports(TASK) / "latest" / "metrics.json").read_text())
    low, high = metrics["auroc_ci"]
    figure = f"AUROC {metrics['auroc']:.3f} ({low:.3f}-{high:.3f})"
    report = f"report {layout.reports(TASK) / 'latest' / 'report.html'}"
    assert first == (
        f"{TASK}: {figure} · promoted {version} (first model: AUROC {metrics['auroc']:.3f} clears the "
        f"floor 0.6) · {report}"
    )
    assert again == f"{TASK}: up to date · champion {version}: {figure} · {report}"
    # The UI's figures are rounded to 4 significant digits; metrics.json keeps them whole.
    shown = evaluation.asset_materialization.metadata["auroc"].value
    assert shown == float(f"{metrics['auroc']:.4g}") and shown != metrics["auroc"]


def test_a_first_model_the_gate_refuses_is_named_with_the_gates_reason(synthetic_spec, layout):
    """Issue 25: not "run failed, see the UI", but the floor it missed."""
    floor = synthetic_spec.promotion.model_copy(update={"auroc_floor": 0.99})
    strict = synthetic_spec.model_copy(update={"promotion": floor})
    land(layout, TASK, "b1", synthetic_records(200, seed=1))
    defs = build_definitions([strict], layout.local)
    with dg.instance_for_test() as instance:
        why = r"^synthetic_risk: not promoted: first model: AUROC 0\.\d{3} is below the floor 0\.99; the task has no "
        with pytest.raises(UpdateError, match=why + r"champion, so nothing was scored \(run ") as refused:
            update_task(strict, instance, defs=defs)
    line = refused.value.summary.line()
    assert line.startswith(f"{TASK}: AUROC 0.") and " · not promoted: first model: AUROC 0." in line
    report = layout.reports(TASK) / "latest" / "report.html"
    assert line.endswith(f"is below the floor 0.99 · no champion · report {report}")


def test_a_tasks_line_says_what_it_reached_from_what_the_runs_wrote(tmp_path):
    """On a registry built by the manifest's own functions: a refused challenger, an up-to-date task, a run that
    found nothing new to train on (the figures and reasons are read, never recomputed)."""
    registry = ModelRegistry(DataRoot(tmp_path))
    publish(registry, "v1", 2, {"auroc": 0.91, "auroc_ci": [0.85, 0.95]}, Decision(True, ["first model: ..."]))
    worse = "AUROC difference vs champion -0.050 (95% CI -0.090 to -0.010) is not non-inferior at margin 0.02"
    publish(registry, "v2", 3, {"auroc": 0.86, "auroc_ci": [0.8, 0.9]}, Decision(False, [worse, "calibration ..."]))
    registry.set_champion("t", "v1", "rollback", pinned=True)
    latest = tmp_path / "reports" / "t" / "latest.json"
    latest.parent.mkdir(parents=True)
    latest.write_text(json.dumps({"version": "v2", "at": 100.0}))
    champion = "champion v1 (pinned): AUROC 0.910 (0.850-0.950)"
    refused = task_summary(registry, "t", since=50.0)
    assert refused.line() == f"t: AUROC 0.860 (0.800-0.900) · not promoted: {worse} · champion v1 stays"
    assert refused.refusal == worse
    assert task_summary(registry, "t", since=None).line() == f"t: up to date · {champion}"
    latest.write_text(json.dumps({"version": "v1", "unchanged_candidate": "v3", "at": 100.0}))
    unchanged = task_summary(registry, "t", since=50.0)
    assert unchanged.line() == f"t: no new data, spec or code since v1: nothing published · {champion}"
    assert unchanged.refusal is None


def test_a_multiclass_figure_names_its_macro_f1_beside_the_auroc():
    metrics = {"kind": "multiclass", "auroc": 0.967, "auroc_ci": [0.964, 0.97], "macro_f1": 0.7201}
    assert metrics_figure(metrics) == "AUROC 0.967 (0.964-0.970), macro-F1 0.720"
    assert metrics_figure({**metrics, "kind": "binary"}) == "AUROC 0.967 (0.964-0.970)"


@pytest.mark.slow
def test_update_logs_at_info_without_dagsters_step_events_and_at_debug_with_verbose(tmp_path):
    """A batch quarantined for a label outside the task's domain: two runs (ingestion, then the later steps),
    no training. Dagster's DEBUG event of every step shows only with -v; other libraries' INFO lines never."""
    spec = {**SYNTHETIC_SPEC, "training": {"trials": 1, "timeout_s": 10, "max_rounds": 60}}
    outputs = {}
    for flags in ([], ["-v"]):
        root = tmp_path / ("verbose" if flags else "default")
        env = instance_env(root / "home", root / "data", root / "tasks", [spec])
        bad = synthetic_records(20, seed=1).with_columns(outcome=synthetic_records(20, seed=1)["rid"])
        batch = root / "data" / "landing" / TASK / "b1"
        batch.mkdir(parents=True)
        bad.write_csv(batch / "records.csv")
        (batch / "_READY").touch()
        result = run_cli([*MEDDIAG, "update", TASK, *flags], env=env, expect_rc=0)
        summary = f"{TASK}: no model evaluated: no validated rows yet (the log says why) · no champion"
        assert result.stdout.splitlines() == [summary]
        outputs[bool(flags)] = result.stderr
    quiet, verbose = outputs[False], outputs[True]
    assert "batch b1 failed validation and was quarantined" in quiet
    assert " - DEBUG - " not in quiet and "STEP_START" not in quiet and "alembic" not in quiet
    assert " - DEBUG - " in verbose and "STEP_START" in verbose
