"""One device helper for every model: CUDA when a GPU is visible, the CPU otherwise."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache


@cache
def cuda_available() -> bool:
    if os.environ.get("MEDDIAG_FORCE_CPU") == "1":
        return False
    try:
        import torch
    except ImportError:  # torch is a dependency; this guards trimmed installs only
        return False
    return bool(torch.cuda.is_available())


def torch_device() -> str:
    return "cuda" if cuda_available() else "cpu"


def xgboost_device() -> str:
    return "cuda" if cuda_available() else "cpu"


def cpu_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def training_threads() -> int:
    """Threads for CPU training: ``MEDDIAG_TORCH_THREADS`` if set, else every CPU of the process, whatever the load.

    The count changes the float reductions, hence the weights: a count that followed the load average gave the
    bundled phantoms task AUROC 0.971 and 0.978 on back-to-back runs. A busy CPU is handled by OpenMP's passive
    wait policy instead (``OMP_WAIT_POLICY``, set in ``meddiag_pipelines/__init__.py``): with threads spinning
    at OpenMP barriers, 2 threads trained at 1 img/s on 2 cores under a load of 10 (1 thread: 12 img/s);
    waiting passively, 2 threads did 88 img/s.
    """
    env = os.environ.get("MEDDIAG_TORCH_THREADS")
    if env:
        return max(1, int(env))
    return cpu_threads()


@contextmanager
def torch_settings(device: str, deterministic: bool, threads: int | None = None) -> Iterator[None]:
    """Thread count and determinism for a training run, restored afterwards (the caller's process is shared)."""
    import torch

    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_bench = torch.backends.cudnn.benchmark
    try:
        if device == "cpu":
            torch.set_num_threads(threads or training_threads())
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if device.startswith("cuda"):
            torch.backends.cudnn.benchmark = True
        yield
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
        torch.backends.cudnn.benchmark = prev_bench
