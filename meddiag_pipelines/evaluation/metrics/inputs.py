"""What the evaluator is given: one model's test-set outputs, its baseline's, and the context around them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from meddiag_pipelines.specs import EvaluationSpec


@dataclass
class EvaluationInput:
    """Everything the evaluator needs; see the module docstring for the shapes and the output."""

    task: str
    model_version: str
    model_name: str
    kind: Literal["binary", "multiclass", "multilabel"]
    classes: list[str]
    y_true: np.ndarray
    proba: np.ndarray
    settings: EvaluationSpec
    n_train: int = 0
    n_val: int = 0
    n_test: int = 0
    val_y_true: np.ndarray | None = None
    val_proba: np.ndarray | None = None
    baseline_name: str | None = None
    baseline_proba: np.ndarray | None = None
    subgroups: dict[str, np.ndarray] = field(default_factory=dict)
    flow: dict[str, int] = field(default_factory=dict)
    missing_data: list[dict] = field(default_factory=list)
    shift: list[dict] = field(default_factory=list)
