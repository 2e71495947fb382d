"""A real Dask scheduler and two workers, started as separate processes for this module: tasks run end to end
through ``MEDDIAG_EXECUTOR=dask`` (``python -m meddiag_pipelines update``), their steps in the workers' processes,
with the metrics of the in-process run. One worker carries the resource label ``GPU=1`` (a fake one: no GPU).

The tabular and the text task run AT THE SAME TIME, as two ``update`` processes with DAGSTER_HOME folders of their
own (two hosts' worth: they share only the instance, in a real PostgreSQL server, and the data root), and every
published version, pointer and ledger entry is checked afterwards (issue 15 section 5)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import dagster as dg
import distributed
import numpy as np
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from meddiag_pipelines.defs.assets.common import DASK_RESOURCES_TAG, gpu_op_tags
from meddiag_pipelines.defs.build import build_definitions, executor
from meddiag_pipelines.flat.distributed import DISTRIBUTED_MIN_ROWS, fit_on_cluster, wants_cluster
from meddiag_pipelines.flat.models import predict_tabular, train_xgboost
from meddiag_pipelines.ingestion.warehouse import Warehouse
from meddiag_pipelines.registry.store import ModelRegistry
from meddiag_pipelines.specs import TaskSpec, TrainingSpec
from meddiag_pipelines.storage import DataRoot
from meddiag_pipelines.update import update_task
from meddiag_pipelines_tests.conftest import REPO, SYNTHETIC_SPEC, land, synthetic_records
from meddiag_pipelines_tests.postgres import postgres_server  # noqa: F401 (fixture)
from meddiag_pipelines_tests.test_imaging_pipeline import write_npz
from meddiag_pipelines_tests.test_text_pipeline import icd_rows

BIN = Path(sys.executable).parent
TABULAR, TEXT = "dask_risk", "dask_notes"
SPECS = {
    # distributed: the XGBoost final fit on the cluster from inside its step (single-node in the in-process run)
    TABULAR: {
        **SYNTHETIC_SPEC,
        "name": TABULAR,
        "training": {"trials": 2, "timeout_s": 20, "max_rounds": 200, "distributed": True},
        "evaluation": {"n_bootstrap": 200},
    },
    TEXT: {
        "name": TEXT,
        "modality": "text",
        "description": "ICD-10-CM descriptions (test task)",
        "label": "chapter",
        "text": "description",
        "id": "code",
        "patient_id": "category",
        "min_text_chars": 3,
        "classes": ["circulatory", "eye", "infectious", "neoplasms"],
        "evaluation": {"n_bootstrap": 100},
        "training": {"epochs": 3, "batch_size": 32, "learning_rate": 0.01, "patience": 2, "time_budget_s": 60},
        "promotion": {"auroc_floor": 0.6},
    },
}
IMAGE = "dask_images"  # asks for a GPU: its candidate_model goes to the worker labelled GPU=1
IMAGE_SPEC = {
    "name": IMAGE,
    "modality": "image",
    "label": "label",
    "id": "id",
    "image": {"format": "npz", "size": 28},
    "classes": ["0", "1", "2"],
    "training": {"epochs": 1, "batch_size": 32, "time_budget_s": 60, "gpu": True},
    "evaluation": {"n_bootstrap": 100},
    "promotion": {"auroc_floor": 0.0},
}


@dataclass
class Cluster:
    address: str
    pids: dict[str, int]  # worker address -> its process id
    gpu_worker: str  # the address of the worker started with --resources GPU=1
    env: dict[str, str]  # what the workers were started with: the runs' processes need the same


def _start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen([str(BIN / "dask"), *args], env=env, stdout=out, stderr=subprocess.STDOUT)


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in reversed(processes):
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def _address(scheduler_file: Path, scheduler: subprocess.Popen) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and scheduler.poll() is None:
        if scheduler_file.is_file() and scheduler_file.stat().st_size:
            return json.loads(scheduler_file.read_text())["address"]
        time.sleep(0.2)
    raise RuntimeError("the Dask scheduler did not start")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, postgres_server) -> Cluster:  # noqa: F811
    """Scheduler + 2 single-thread workers (no nanny: the worker's pid is the process that runs the steps),
    with the environment a run on them needs: the package, the data root, the spec folder, the executor, and
    the instance database (a step opens the run's instance: in PostgreSQL, from ``MEDDIAG_POSTGRES_URL``)."""
    root = tmp_path_factory.mktemp("dask")
    (root / "tasks").mkdir()
    for name, spec in {**SPECS, IMAGE: IMAGE_SPEC}.items():
        (root / "tasks" / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    postgres_server.psql("postgres", "CREATE DATABASE dask_runs")
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MEDDIAG_DATA_DIR": str(root / "data"),
        "MEDDIAG_TASKS_DIR": str(root / "tasks"),
        "MEDDIAG_EXECUTOR": "dask",
        "MEDDIAG_FORCE_CPU": "1",
        "MEDDIAG_POSTGRES_URL": postgres_server.url("dask_runs"),
    }
    patch = pytest.MonkeyPatch()
    patch.setenv("MEDDIAG_POSTGRES_URL", env["MEDDIAG_POSTGRES_URL"])  # this process reads the runs back from it
    processes = [
        _start(
            [
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--dashboard-address",
                ":0",
                "--scheduler-file",
                str(root / "scheduler.json"),
            ],
            env,
            root / "scheduler.log",
        )
    ]
    try:
        address = _address(root / "scheduler.json", processes[0])
        env["MEDDIAG_DASK_ADDRESS"] = address
        for i, extra in enumerate([["--resources", "GPU=1"], []]):
            processes.append(
                _start(
                    [
                        "worker",
                        address,
                        "--nworkers",
                        "1",
                        "--nthreads",
                        "1",
                        "--no-nanny",
                        "--no-dashboard",
                        "--name",
                        f"w{i}",
                        *extra,
                    ],
                    env,
                    root / f"worker{i}.log",
                )
            )
        with distributed.Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            pids = client.run(os.getpid)
            workers = client.scheduler_info(n_workers=-1)["workers"]
        gpu = next(a for a, w in workers.items() if w.get("resources", {}).get("GPU"))
        yield Cluster(address, pids, gpu, env)
    finally:
        _stop(processes)
        patch.undo()


def land_tasks(data: Path) -> None:
    """The same batches for every run: a tabular task and a text task."""
    layout = DataRoot(data)
    land(layout, TABULAR, "batch_0001", synthetic_records(400, seed=3))
    land(layout, TEXT, "batch_0001", icd_rows(40))


def start_update(env: dict, home: Path, task: str) -> subprocess.Popen:
    """``update`` of one task with the instance of ``home`` (the embedded one unless it holds a dagster.yaml)."""
    if not (home / "dagster.yaml").is_file():
        home.mkdir(parents=True, exist_ok=True)
        (home / "dagster.yaml").write_text((REPO / "dagster_home" / "dagster.yaml").read_text())
    with (home / f"update_{task}.log").open("w") as log:  # a file: a full pipe would stall the other process
        process = subprocess.Popen(
            [sys.executable, "-m", "meddiag_pipelines", "update", task],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**env, "DAGSTER_HOME": str(home)},
        )
    process.log_path = log.name
    return process


def finish(process: subprocess.Popen) -> None:
    process.wait(timeout=600)
    assert process.returncode == 0, Path(process.log_path).read_text()[-6000:]


def update(env: dict, home: Path, task: str) -> None:
    finish(start_update(env, home, task))


def step_pids(home: Path) -> dict[str, set[int]]:
    """Step key -> the process ids its events came from, over every run of the instance."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        records = instance.get_event_records(dg.EventRecordsFilter(event_type=dg.DagsterEventType.STEP_START))
    found: dict[str, set[int]] = {}
    for record in records:
        event = record.event_log_entry.dagster_event
        found.setdefault(event.step_key, set()).add(event.pid)
    return found


POSTGRES_YAML = REPO / "deploy" / "postgres" / "dagster.yaml"
HEADLINE = ("model_name", "n_train", "n_test", "auroc", "auprc", "brier", "macro_f1")


def headline(data: Path, task: str) -> dict:
    metrics = json.loads((DataRoot(data).reports(task) / "latest" / "metrics.json").read_text())
    return {k: metrics.get(k) for k in HEADLINE}


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory) -> dict:
    """Both tasks through the cluster at once (two command lines, one instance in PostgreSQL), then the same data
    in this process (another data root and instance; ``update_task`` on in-process definitions)."""
    data = Path(cluster.env["MEDDIAG_DATA_DIR"])
    local = tmp_path_factory.mktemp("in_process") / "data"
    land_tasks(data)
    land_tasks(local)
    homes = [data.parent / "host_a", data.parent / "host_b"]
    for home in homes:
        home.mkdir()
        (home / "dagster.yaml").write_text(POSTGRES_YAML.read_text())
    # Dagster creates its tables on first use; two processes doing that at the same instant race on Dagster's
    # own schema creation, which is not what this tests (a deployment starts its webserver or daemon first).
    with dg.DagsterInstance.from_config(str(homes[0])):
        pass
    started = [start_update(cluster.env, home, task) for home, task in zip(homes, SPECS, strict=False)]
    for process in started:
        finish(process)
    specs = [TaskSpec.model_validate(spec) for spec in SPECS.values()]
    with dg.instance_for_test() as instance:
        for spec in specs:
            update_task(spec, instance, defs=build_definitions(specs, local))
    return {"home": homes[0], "data": data, "local": local}


@pytest.mark.slow
def test_steps_run_in_the_worker_processes_with_the_in_process_metrics(cluster, runs):
    pids = step_pids(runs["home"])
    for task in SPECS:
        steps = {k: p for k, p in pids.items() if k.startswith(f"{task}__")}
        assert {f"{task}__raw_records", f"{task}__champion"} <= set(steps), sorted(steps)
        assert set().union(*steps.values()) <= set(cluster.pids.values()), (steps, cluster.pids)
        # Measured: identical figures (seeded search and models, one thread per worker); the tolerance only
        # absorbs an optuna trial cut by its timeout on a loaded machine.
        assert headline(runs["data"], task) == pytest.approx(headline(runs["local"], task), abs=0.02)
    fits = {
        k: [
            json.loads(p.read_text())["distributed"] for p in (runs[k] / "models" / TABULAR).rglob("xgboost/model.json")
        ]
        for k in ("data", "local")
    }
    assert fits == {"data": [True], "local": [False]}, fits


def _overlap(a: dg.RunRecord, b: dg.RunRecord) -> bool:
    return a.start_time < b.end_time and b.start_time < a.end_time


@pytest.mark.slow
def test_two_tasks_at_once_leave_every_version_pointer_and_ledger_entry_whole(runs):
    with dg.DagsterInstance.from_config(str(runs["home"])) as instance:
        assert type(instance.run_storage).__module__.startswith("dagster_postgres")
        records = instance.get_run_records()
    by_task = {task: [r for r in records if r.dagster_run.tags.get("meddiag/task") == task] for task in SPECS}
    assert all(by_task.values()) and all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in records)
    assert any(_overlap(a, b) for a in by_task[TABULAR] for b in by_task[TEXT]), "the two tasks did not run at once"

    data, registry = runs["data"], ModelRegistry(DataRoot(runs["data"]))
    warehouse = Warehouse(DataRoot(data))
    for task in SPECS:
        folders = sorted(p.name for p in registry.task_dir(task).iterdir() if p.is_dir() and not p.name.startswith("."))
        assert registry.versions(task) == folders and len(folders) == 1, folders  # one run trained: one version
        for version in folders:
            assert registry.manifest(task, version)["version"] == version
        assert not any((registry.task_dir(task) / ".staging").glob("*"))  # nothing left staged
        champion = registry.champion(task)
        latest = json.loads((DataRoot(data).reports(task) / "latest.json").read_text())
        assert champion["version"] == latest["version"] == folders[0] and latest["task"] == task
        ledger = warehouse.ledger(task)
        assert ledger.select("batch_id", "status").rows() == [("batch_0001", "validated")]
        # the batch's history: recorded once when read, then one entry for its validation; nothing rewritten
        [entries] = [sorted(p.iterdir()) for p in (DataRoot(data).warehouse_dir() / "ledger" / task).iterdir()]
        assert [(p.name, json.loads(p.read_text())["status"]) for p in entries] == [
            ("000001.json", "read"),
            ("000002.json", "validated"),
        ]
    with warehouse.connect() as con:  # the SQL users' view of the same entries
        rows = con.execute("SELECT task, batch_id, status FROM ingest_ledger ORDER BY task").fetchall()
    assert rows == sorted((task, "batch_0001", "validated") for task in SPECS)


def test_meddiag_executor_dask_selects_the_guarded_dask_executor_and_needs_the_address(monkeypatch):
    from meddiag_pipelines.defs.dask_executor import GuardedDaskExecutor

    monkeypatch.setenv("MEDDIAG_EXECUTOR", "dask")
    monkeypatch.setenv("MEDDIAG_DASK_ADDRESS", "tcp://10.0.0.7:8786")
    chosen = executor()
    made = chosen.executor_creation_fn(None)
    assert chosen.name == "dask" and isinstance(made, GuardedDaskExecutor)
    assert made.cluster_configuration == {"address": "tcp://10.0.0.7:8786"}
    monkeypatch.delenv("MEDDIAG_DASK_ADDRESS")
    with pytest.raises(dg.DagsterInvariantViolationError, match="MEDDIAG_DASK_ADDRESS"):
        chosen.executor_creation_fn(None)


def test_the_final_fit_goes_to_the_cluster_when_the_spec_asks_or_the_table_is_large():
    unset, on, off = TrainingSpec(), TrainingSpec(distributed=True), TrainingSpec(distributed=False)
    assert not wants_cluster(unset, DISTRIBUTED_MIN_ROWS - 1, on_cluster=True)
    assert wants_cluster(unset, DISTRIBUTED_MIN_ROWS, on_cluster=True)
    assert wants_cluster(on, 10, on_cluster=True) and not wants_cluster(off, DISTRIBUTED_MIN_ROWS, on_cluster=True)
    assert not wants_cluster(on, DISTRIBUTED_MIN_ROWS, on_cluster=False)  # no cluster: single-node, with a warning


def _table(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 8)).astype(np.float32)
    y = (rng.random(n) < 1 / (1 + np.exp(-(1.5 * X[:, 0] - X[:, 1] + 0.5 * X[:, 2] * X[:, 3])))).astype(np.int32)
    return X, y


@pytest.mark.slow
def test_xgboost_fitted_on_the_cluster_saves_ubj_with_the_single_node_auroc(cluster, tmp_path):
    (X_train, y_train), (X_val, y_val), (X_test, y_test) = _table(4000, 1), _table(1000, 2), _table(2000, 3)
    settings, names = TrainingSpec(trials=2, timeout_s=60, max_rounds=200), [f"f{i}" for i in range(8)]
    with distributed.Client(cluster.address) as client:
        on_cluster = train_xgboost(
            X_train, y_train, X_val, y_val, 2, settings, tmp_path / "cluster", names, partial(fit_on_cluster, client)
        )
    single = train_xgboost(X_train, y_train, X_val, y_val, 2, settings, tmp_path / "single", names)
    assert on_cluster["distributed"] and not single["distributed"]
    assert on_cluster["params"] == single["params"]  # the same search, on the same rows (all below SEARCH_ROWS)
    auroc = {k: roc_auc_score(y_test, predict_tabular(tmp_path / k, X_test)) for k in ("cluster", "single")}
    print("test AUROC", auroc)
    assert auroc["cluster"] == pytest.approx(auroc["single"], abs=0.01) and auroc["single"] > 0.75


def test_an_image_task_that_asks_for_a_gpu_tags_its_candidate_model_with_the_dask_resource():
    from dagster_dask.executor import DASK_RESOURCE_REQUIREMENTS_KEY

    from meddiag_pipelines.defs.assets.task_assets import build_task_assets

    def tags_of_candidate(gpu: bool) -> dict:
        spec = TaskSpec.model_validate({**IMAGE_SPEC, "training": {**IMAGE_SPEC["training"], "gpu": gpu}})
        [candidate] = [
            a
            for a in build_task_assets(spec)
            if isinstance(a, dg.AssetsDefinition) and dg.AssetKey([IMAGE, "candidate_model"]) in a.keys
        ]
        return dict(candidate.op.tags)

    assert DASK_RESOURCES_TAG == DASK_RESOURCE_REQUIREMENTS_KEY
    assert json.loads(tags_of_candidate(True)[DASK_RESOURCES_TAG]) == {"GPU": 1}
    assert DASK_RESOURCES_TAG not in tags_of_candidate(False)
    assert gpu_op_tags(TaskSpec.model_validate(SPECS[TEXT])) == {}


@pytest.mark.slow
def test_the_gpu_step_runs_on_the_worker_with_the_gpu_label(cluster):
    """A fake label: neither worker has a GPU; the scheduler matches the step's requirement to the label."""
    data = Path(cluster.env["MEDDIAG_DATA_DIR"])
    batch = data / "landing" / IMAGE / "batch_0001"
    batch.mkdir(parents=True)
    write_npz(batch / "organmnist.npz", {"train": 60, "val": 15, "test": 24}, seed=1)
    (batch / "_READY").touch()
    home = data.parent / "home_images"
    update(cluster.env, home, IMAGE)
    pids = step_pids(home)
    assert pids[f"{IMAGE}__candidate_model"] == {cluster.pids[cluster.gpu_worker]}, (pids, cluster)
    assert set().union(*pids.values()) <= set(cluster.pids.values())
