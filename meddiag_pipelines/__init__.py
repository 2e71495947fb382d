"""Dagster-orchestrated data and model pipelines for medical assisted diagnosis."""

__version__ = "0.1.0"
