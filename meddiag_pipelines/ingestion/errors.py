"""Errors that send a batch (or one file) to quarantine."""

from __future__ import annotations


class BatchRejected(Exception):
    """A batch or file that cannot be used; ``file`` and ``problem`` go into its ``reason.json``."""

    def __init__(self, file: str, problem: str, details: dict | None = None):
        super().__init__(f"{file}: {problem}")
        self.file = file
        self.problem = problem
        self.details = details or {}
