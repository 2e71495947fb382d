"""Dagster-orchestrated data and model pipelines for medical assisted diagnosis."""

import os

__version__ = "0.1.0"

# OpenMP threads (torch, XGBoost) that wait at a barrier sleep instead of spinning, so training's thread count, fixed
# for reproducible weights (device.training_threads), does not crawl on CPUs other processes share. OpenMP reads
# the variable once, when its runtime loads: set here, before anything imports torch, unless already set.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
