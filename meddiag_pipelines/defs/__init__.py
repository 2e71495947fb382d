"""The Dagster wiring, one folder per concern: ``assets/``, ``automation/``, ``resources/``, ``components/`` (and
``tasks/defs.yaml``, the spec folders as one component for ``dg``), and ``build.py``, which builds every task on
request. The logic lives in the pure modules of the package."""
