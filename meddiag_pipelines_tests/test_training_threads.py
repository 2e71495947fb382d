"""Training's thread count does not follow the machine's load (the count changes the weights), and the package
makes OpenMP wait passively so that a fixed count does not crawl on CPUs other processes share."""

import os
import sys

import pytest

from meddiag_pipelines import device
from meddiag_pipelines_tests.conftest import run_cli


def test_the_thread_count_is_the_same_whatever_the_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDDIAG_TORCH_THREADS", raising=False)
    monkeypatch.setattr(device, "cpu_threads", lambda: 2)
    counts = set()
    for load in (0.0, 1.0, 10.0):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        counts.add(device.training_threads())
    assert counts == {2}


def test_importing_the_package_makes_openmp_wait_passively_unless_told_otherwise() -> None:
    probe = "import os, meddiag_pipelines; print(os.environ['OMP_WAIT_POLICY'])"
    done = run_cli([sys.executable, "-c", probe], env={"OMP_WAIT_POLICY": None}, expect_rc=0)
    assert done.stdout.split() == ["PASSIVE"]
    done = run_cli([sys.executable, "-c", probe], env={"OMP_WAIT_POLICY": "ACTIVE"}, expect_rc=0)
    assert done.stdout.split() == ["ACTIVE"]
