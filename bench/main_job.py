"""``python -m bench main_job``: the README's main job (``meddiag update`` over every bundled task) on a copy of
``data/landing`` and a fresh SQLite instance, timed whole, then broken down by task and step from the instance's
own records (each step's start and end), so the figure in bench/README.md says where the minutes go."""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_update(work: Path) -> tuple[float, float, int, str]:
    """``meddiag update`` as the README runs it, on ``work``'s data and instance: (seconds, CPU seconds, exit code,
    last lines). The CPU seconds (user + system of the process and its children) hardly move with the machine's load,
    the wall seconds do: compare those on a shared machine."""
    shutil.copytree(REPO / "data" / "landing", work / "data" / "landing")
    home = work / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "MEDDIAG_DATA_DIR": str(work / "data")}
    start, cpu_start = time.perf_counter(), _children_cpu()
    done = subprocess.run(
        [sys.executable, "-m", "meddiag_pipelines", "update"], env=env, capture_output=True, text=True, cwd=REPO
    )
    seconds, cpu = time.perf_counter() - start, _children_cpu() - cpu_start
    return seconds, cpu, done.returncode, "\n".join(done.stdout.splitlines()[-8:])


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


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
        load_before = os.getloadavg()[0]
        seconds, cpu, code, tail = run_update(work)
        steps = step_seconds(work / "dagster_home")
        print(
            json.dumps(
                {
                    "bench": "main_job",
                    "seconds": round(seconds, 1),
                    "cpu_seconds": round(cpu, 1),
                    "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
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
