"""The suite runs on both cores (pytest-xdist, pyproject's addopts): each worker trains on one thread, so two
workers do not oversubscribe the CPUs (conftest.WORKER_THREADS)."""

import os
import sys

import pytest

from meddiag_pipelines.device import training_threads
from meddiag_pipelines_tests.conftest import run_cli

pytestmark = pytest.mark.skipif("PYTEST_XDIST_WORKER" not in os.environ, reason="only under pytest-xdist")


def test_a_worker_and_the_processes_it_starts_use_one_thread():
    assert training_threads() == 1
    probe = "import torch; print(torch.get_num_threads())"
    done = run_cli([sys.executable, "-c", probe], timeout=120, expect_rc=0)
    assert done.stdout.split() == ["1"]
