"""The Dagster wiring, one folder per concern: ``assets/``, ``automation/``, ``resources/``, ``components/`` (and
``tasks/<task>/defs.yaml`` for ``dg``). The logic lives in the pure modules of the package."""

import warnings

import dagster as dg

# Dagster 1.13 marks single-run backfills, partitioned asset checks and automation-condition sensors as beta or
# preview. The version is pinned, so the warning tells a user of this project nothing they can act on.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)
