"""torch's CPU wheel beside libraries built for its CUDA wheel: what lets timm (the image backbones) and
transformers (the text encoders) import on either."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_DECLARED: list = []  # the library object must outlive the call, or its definitions are dropped


def declare_missing_torchvision_ops() -> None:
    """torchvision's wheel is built against CUDA torch: on the CPU wheel its C++ ops library fails to load, and
    torchvision 0.28 still registers fake kernels for ``nms`` and ``qnms`` at import, which raises for an
    operator that does not exist. Classification backbones never call them, so declaring the two schemas lets
    the import finish; with a matching torchvision (a CUDA host) the library loads and nothing is declared."""
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return
    try:
        torch.ops.load_library(str(Path(spec.origin).parent / "_C.so"))
    except OSError:
        if not hasattr(torch.ops.torchvision, "nms"):
            library = torch.library.Library("torchvision", "DEF")
            for op in ("nms", "qnms"):
                library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _DECLARED.append(library)
