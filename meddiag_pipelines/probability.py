"""The two probability transforms every model and the evaluator share: the clipped logit and the softmax."""

from __future__ import annotations

import numpy as np
from scipy import special

# Probabilities are kept this far from 0 and 1 before a logit, so a saturated model gives finite values.
CLIP = 1e-6


def logit(p: np.ndarray) -> np.ndarray:
    return special.logit(np.clip(np.asarray(p, dtype=float), CLIP, 1.0 - CLIP))


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (n, k) scores, shifted by each row's maximum so large scores do not overflow."""
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
