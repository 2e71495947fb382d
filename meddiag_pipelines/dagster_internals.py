"""The one use of Dagster's private API in the package: rebuilding the implicit asset job in another process.

``dagster.execute_job`` needs a reconstructable job, so that step processes (multiprocess, Dask) rebuild it.
The public ``dg.reconstructable`` and ``dg.build_reconstructable_job`` put the job they rebuild in a repository
of its own, which refuses the implicit asset job (``__ASSET_JOB``, a reserved name); only a
``ReconstructableRepository`` pointing at the function that builds the ``Definitions`` rebuilds it (Dagster
1.13). ``test_dagster_internals.py`` pins both facts, so a Dagster upgrade that moves it, or makes the public
way work, fails there first.
"""

from __future__ import annotations

import os

from dagster._core.definitions.reconstruct import ReconstructableRepository


def reconstructable_job(module: str, definitions_fn: str, job_name: str):
    """Job ``job_name`` of the definitions that ``module.definitions_fn()`` builds, reconstructable so that step
    processes can rebuild it (from the current working directory)."""
    repository = ReconstructableRepository.for_module(module, definitions_fn, working_directory=os.getcwd())
    return repository.get_reconstructable_job(job_name)
