"""One device helper for every model: CUDA when a GPU is visible, the CPU otherwise."""

from __future__ import annotations

import os
from functools import cache


@cache
def cuda_available() -> bool:
    if os.environ.get("MEDDIAG_FORCE_CPU") == "1":
        return False
    try:
        import torch
    except ImportError:  # torch is a dependency; this guards trimmed installs only
        return False
    return bool(torch.cuda.is_available())


def torch_device() -> str:
    return "cuda" if cuda_available() else "cpu"


def xgboost_device() -> str:
    return "cuda" if cuda_available() else "cpu"
