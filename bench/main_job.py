"""``python -m bench main_job``: the README's main job (``meddiag update`` over every bundled task) on a copy of
``data/landing`` and a fresh SQLite instance, timed whole, then broken down by task and step from the instance's
own records (each step's start and end), so the figure in bench/README.md says where the minutes go."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_update(work: Path) -> tuple[float, int, str]:
    """``meddiag update`` as the README runs it, on ``work``'s data and instance: (seconds, exit code, last lines)."""
    shutil.copytree(REPO / "data" / "landing", work / "data" / "landing")
    home = work / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "MEDDIAG_DATA_DIR": str(work / "data")}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "meddiag_pipelines", "update"], env=env, capture_output=True, text=True, cwd=REPO
    )
    return time.perf_counter() - start, done.returncode, "\n".join(done.stdout.splitlines()[-8:])


def step_seconds(home: Path) -> dict[str, dict[str, float]]:
    """Per task, per step: the seconds its steps took over every run of the instance (summed over partitions)."""
    import dagster as dg

    per_task: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for run in instance.get_runs():
            task = run.tags.get("meddiag/task", "?")
            for step in instance.get_run_step_stats(run.run_id):
                if step.start_time and step.end_time:
                    per_task[task][step.step_key.split(".")[-1]] += step.end_time - step.start_time
    return {task: dict(steps) for task, steps in per_task.items()}


def main(argv: list[str]) -> None:
    argparse.ArgumentParser(prog="python -m bench main_job", description=__doc__).parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="main_job_"))
    try:
        seconds, code, tail = run_update(work)
        steps = step_seconds(work / "dagster_home")
        print(
            json.dumps(
                {
                    "bench": "main_job",
                    "seconds": round(seconds, 1),
                    "exit_code": code,
                    "task_step_seconds": {t: round(sum(s.values()), 1) for t, s in steps.items()},
                }
            )
        )
        for task, by_step in sorted(steps.items()):
            top = sorted(by_step.items(), key=lambda kv: -kv[1])
            print(json.dumps({"task": task, "steps": {k: round(v, 1) for k, v in top}}))
        print(tail)
    finally:
        shutil.rmtree(work, ignore_errors=True)
