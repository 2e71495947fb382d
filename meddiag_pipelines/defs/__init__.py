"""The Dagster wiring, one folder per concern: ``assets/``, ``automation/``, ``resources/``, ``components/`` (and
``defs.yaml``: the spec folders as the one component ``dg`` loads), ``build.py``, which builds every task on
request, and the executors (``selection_guard.py``, ``dask_executor.py``). The logic lives in the pure modules of the package."""
