"""The suite runs on both cores (pytest-xdist, pyproject's addopts): each worker trains on one thread, so two
workers do not oversubscribe the CPUs (conftest.WORKER_THREADS)."""

import os
import subprocess
import sys

import pytest

from meddiag_pipelines.device import training_threads

pytestmark = pytest.mark.skipif("PYTEST_XDIST_WORKER" not in os.environ, reason="only under pytest-xdist")


def test_a_worker_and_the_processes_it_starts_use_one_thread():
    assert training_threads() == 1
    probe = "import torch; print(torch.get_num_threads())"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split() == ["1"]
