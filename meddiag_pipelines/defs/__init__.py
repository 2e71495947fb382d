"""The Dagster wiring, one folder per concern: ``assets/``, ``automation/``, ``resources/``, ``components/`` (and
``tasks/<task>/defs.yaml`` for ``dg``). The logic lives in the pure modules of the package."""
