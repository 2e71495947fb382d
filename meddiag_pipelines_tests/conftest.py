"""Shared fixtures: a temporary data root, small fast specs and landed batches."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from meddiag_pipelines.specs import BUNDLED_TASKS_DIR, TaskSpec, load_spec
from meddiag_pipelines.storage import DataRoot

REPO = Path(__file__).resolve().parent.parent
# One compute thread per test process when pytest-xdist runs several at once (`-n 2` in pyproject's addopts):
# OpenMP threads sharing an oversubscribed CPU spin against each other (meddiag_pipelines/device.py). Torch's
# training honours MEDDIAG_TORCH_THREADS; torch's default and XGBoost's `nthread` come from OMP_NUM_THREADS.
WORKER_THREADS = {"MEDDIAG_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1"}
# The command line as `meddiag` runs it, from this checkout's code.
MEDDIAG = (sys.executable, "-m", "meddiag_pipelines")


def pytest_configure(config: pytest.Config) -> None:
    """Set in the xdist controller before it starts the workers, so they (and the processes tests start) inherit
    it before any library reads it; a variable already set is kept."""
    if getattr(config.option, "numprocesses", None):
        for name, value in WORKER_THREADS.items():
            os.environ.setdefault(name, value)


def fast(spec: TaskSpec, **updates) -> TaskSpec:
    """The same task with a small search and bootstrap, so tests take seconds."""
    training = spec.training.model_copy(update={"trials": 2, "timeout_s": 20, "max_rounds": 200})
    evaluation = spec.evaluation.model_copy(update={"n_bootstrap": 200})
    return spec.model_copy(update={"training": training, "evaluation": evaluation, **updates})


@pytest.fixture
def layout(tmp_path: Path) -> DataRoot:
    return DataRoot(tmp_path / "data")


@pytest.fixture
def breast_spec() -> TaskSpec:
    return fast(load_spec(BUNDLED_TASKS_DIR / "breast_cancer.yaml"))


@pytest.fixture
def heart_spec() -> TaskSpec:
    return fast(load_spec(BUNDLED_TASKS_DIR / "heart_disease.yaml"))


# Every task's assets, in graph order: what the generic wiring in defs/ builds for any modality.
TASK_ASSETS = [
    "raw_records",
    "validated_records",
    "split",
    "features",
    "feature_plan",
    "candidate_model",
    "baseline_model",
    "evaluation",
    "champion",
    "predictions",
]


def land(
    layout: DataRoot,
    task: str,
    batch: str,
    frame: pl.DataFrame | None = None,
    *,
    ready: bool = True,
    filename: str = "records.csv",
    raw: bytes | None = None,
) -> Path:
    """Write one batch into the landing folder (CSV or Parquet by file name, or raw bytes)."""
    folder = layout.landing(task) / batch
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / filename
    if raw is not None:
        target.write_bytes(raw)
    elif filename.endswith(".parquet"):
        frame.write_parquet(target)
    else:
        frame.write_csv(target)
    if ready:
        (folder / "_READY").touch()
    return folder


def bundled_frame(task: str) -> pl.DataFrame:
    return pl.read_csv(REPO / "data" / "landing" / task / "batch_0001" / "records.csv")


def synthetic_records(n: int, seed: int, start: int = 0, label_noise: float = 0.0) -> pl.DataFrame:
    """SYNTHETIC patient records with a learnable outcome, patient ids (2 records each) and a subgroup."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    group = rng.choice(["A", "B"], size=n)
    logit = 1.8 * x1 - 1.2 * x2 + 0.5 * (group == "A")
    y = rng.random(n) < 1 / (1 + np.exp(-logit))
    flip = rng.random(n) < label_noise
    y = np.where(flip, ~y, y)
    ids = np.arange(start, start + n)
    return pl.DataFrame(
        {
            "rid": [f"r{i}" for i in ids],
            "pid": [f"p{i // 2}" for i in ids],
            "x1": x1,
            "x2": x2,
            "x3": np.where(rng.random(n) < 0.1, np.nan, rng.normal(size=n)),
            "group": group,
            "outcome": np.where(y, "yes", "no"),
        }
    ).with_columns(pl.col("x3").fill_nan(None))


SYNTHETIC_SPEC = {
    "name": "synthetic_risk",
    "modality": "tabular",
    "description": "SYNTHETIC test task",
    "label": "outcome",
    "positive": "yes",
    "classes": ["no", "yes"],
    "id": "rid",
    "patient_id": "pid",
    "subgroups": ["group"],
    "numeric": ["x1", "x2", "x3"],
    "promotion": {"auroc_floor": 0.6},
}


@pytest.fixture
def synthetic_spec() -> TaskSpec:
    return fast(TaskSpec.model_validate(SYNTHETIC_SPEC))


def instance_env(
    home: Path, data: Path, tasks: Path | None = None, specs: Iterable[dict] = ()
) -> dict[str, str | None]:
    """What points a command at a throwaway instance and data root: ``home`` made a DAGSTER_HOME holding the
    project's dagster.yaml (its run queue and pools), ``data`` the MEDDIAG_DATA_DIR, and ``tasks`` (made, with each
    of ``specs`` written there as ``<name>.yaml``) the MEDDIAG_TASKS_DIR; without ``tasks`` it is unset, so only the
    bundled specs load. For `run_cli`'s ``env``."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    env: dict[str, str | None] = {"DAGSTER_HOME": str(home), "MEDDIAG_DATA_DIR": str(data), "MEDDIAG_TASKS_DIR": None}
    if tasks is not None:
        tasks.mkdir(parents=True, exist_ok=True)
        for spec in specs:
            (tasks / f"{spec['name']}.yaml").write_text(yaml.safe_dump(spec))
        env["MEDDIAG_TASKS_DIR"] = str(tasks)
    return env


def command_env(env: Mapping[str, str | None]) -> dict[str, str]:
    """This process's environment with ``env`` over it (a None value unsets the variable) and PYTHONPATH at this
    checkout, so a command started from a test runs this checkout's code."""
    merged = {**os.environ, "PYTHONPATH": str(REPO), **env}
    return {name: value for name, value in merged.items() if value is not None}


def run_cli(
    command: Sequence[str],
    *,
    env: Mapping[str, str | None] | None = None,
    cwd: Path = REPO,
    timeout: float = 600,
    expect_rc: int | None = None,
) -> subprocess.CompletedProcess:
    """``command`` (e.g. ``[*MEDDIAG, "update", task]``, `dg`, a ``python -c`` probe) in a fresh process as a user
    runs it, in `command_env(env)`, its output captured as text. ``expect_rc``: the exit status it must end with
    (the output's tail says why not)."""
    variables = command_env(env or {})
    done = subprocess.run(list(command), cwd=cwd, env=variables, capture_output=True, text=True, timeout=timeout)
    if expect_rc is not None:
        assert done.returncode == expect_rc, done.stdout[-2000:] + done.stderr[-4000:]
    return done
