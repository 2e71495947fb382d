"""Benchmarks of the meddiag pipelines: ``python -m bench <name> [--size ...]`` (see bench/README.md).

Every measurement runs in a fresh Python process (:func:`measure`), so its peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss`` inside that process) is its own, and an optional address-space limit
(``RLIMIT_AS``) makes an out-of-memory run fail cleanly instead of taking the machine down. Each measurement
prints one JSON line: name, impl, size, seconds, peak_rss_mb and the throughput that fits.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MB = 1024 * 1024


def bench_dir() -> Path:
    """Where generated data lives between runs (reused when the parameters match)."""
    root = Path(os.environ.get("MEDDIAG_BENCH_DIR", Path(tempfile.gettempdir()) / "meddiag_bench"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def parse_rows(size: str, smoke: int) -> int:
    """``smoke`` -> the benchmark's smoke size; ``1m``, ``10m``, ``50m``, ``250k`` or a plain integer."""
    size = size.lower()
    if size == "smoke":
        return smoke
    scale = {"k": 1_000, "m": 1_000_000}.get(size[-1], 1)
    return int(float(size[:-1] if scale > 1 else size) * scale)


def emit(record: dict) -> dict:
    print(json.dumps(record, default=str), flush=True)
    return record


def peak_rss_mb() -> float:
    """Peak resident set of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(
    target: str,
    kwargs: dict | None = None,
    rlimit_as_mb: int | None = None,
    timeout_s: float | None = None,
    env: dict | None = None,
) -> dict:
    """Run ``module:function(**kwargs)`` in a fresh interpreter; return its result dict plus ``peak_rss_mb``
    (the child's own peak) and ``ok``. A child that fails (MemoryError, killed, non-zero exit) returns
    ``ok: False`` and the tail of its error output."""

    def limit() -> None:
        if rlimit_as_mb:
            resource.setrlimit(resource.RLIMIT_AS, (rlimit_as_mb * MB, rlimit_as_mb * MB))

    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bench._worker", target, json.dumps(kwargs or {})],
            capture_output=True,
            text=True,
            preexec_fn=limit,
            timeout=timeout_s,
            cwd=REPO,
            env={**os.environ, **(env or {})},
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout_s} s", "wall_s": time.perf_counter() - start}
    wall = time.perf_counter() - start
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith('{"__bench__"'):
            out = json.loads(line)
            out.pop("__bench__")
            return {**out, "wall_s": wall}
    tail = (proc.stderr or proc.stdout)[-600:].strip()
    return {"ok": False, "error": f"exit {proc.returncode}: {tail}", "wall_s": wall}


def update_in_fresh_root(task: str, spec_yaml: str, data: Path, file_name: str, threads: int) -> dict:
    """``data`` landed as ``file_name`` in the first batch of ``task`` (spec ``spec_yaml``) and ``python -m
    meddiag_pipelines update <task>`` in a fresh data root and Dagster instance: the version's test AUROC, its
    model's validation AUROC and epochs, wall and CPU minutes (wall inflates on a shared machine), and whether it
    was promoted."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "tasks").mkdir()
        (root / "tasks" / f"{task}.yaml").write_text(spec_yaml, encoding="utf-8")
        batch = root / "data" / "landing" / task / "batch_0001"
        batch.mkdir(parents=True)
        (batch / file_name).write_bytes(Path(data).read_bytes())
        (batch / "_READY").touch()
        (root / "home").mkdir()
        env = {
            **os.environ,
            "DAGSTER_HOME": str(root / "home"),
            "MEDDIAG_DATA_DIR": str(root / "data"),
            "MEDDIAG_TASKS_DIR": str(root / "tasks"),
            "MEDDIAG_TORCH_THREADS": str(threads),
            "PYTHONPATH": str(REPO),
        }
        start = time.perf_counter()
        before = os.times()
        proc = subprocess.run(
            [sys.executable, "-m", "meddiag_pipelines", "update", task],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        after = os.times()
        minutes = (time.perf_counter() - start) / 60
        cpu_minutes = (after.children_user + after.children_system - before.children_user - before.children_system) / 60
        models = root / "data" / "models" / task
        found = sorted(models.glob("*/metrics.json"))
        if not found:  # a version the promotion gate refuses still has its metrics (update then exits 1)
            raise SystemExit(f"update failed:\n{proc.stderr[-3000:]}")
        metrics = json.loads(found[0].read_text())
        model = json.loads((found[0].parent / "model" / "model.json").read_text())
        promoted = (models / "champion.json").exists()
    return {
        "val_auroc": model.get("best_val_auroc"),
        "test_auroc": metrics["auroc"],
        "baseline_test_auroc": (metrics.get("baseline") or {}).get("auroc"),
        "best_epoch": model.get("best_epoch"),
        "stopped": model.get("stopped"),
        "epochs_run": model.get("epochs_run"),
        "seconds": minutes * 60,
        "minutes": minutes,
        "cpu_minutes": cpu_minutes,
        "promoted": promoted,
        "peak_rss_mb": None,
    }
