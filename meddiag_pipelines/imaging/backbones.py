"""Pretrained image backbones from timm's model zoo (the ``large`` extra), imported only when a spec names one.

:func:`new_backbone` builds :class:`TimmClassifier` (normalisation and resizing inside, so its forward takes the
cached (N, C, S, S) images in [0, 1]) and loads its starting weights: a local file by path (never the network)
or, only when the spec says ``hub``, timm's pretrained download. model.json records the architecture and its
timm arguments, so :func:`build_timm_classifier` rebuilds a trained model offline before its state dict loads."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from meddiag_pipelines.imaging.model import ResNet18Small
from meddiag_pipelines.specs import names_hub
from meddiag_pipelines.torch_compat import declare_missing_torchvision_ops


def import_timm() -> ModuleType:
    """``timm``, importable on the CPU wheel of torch too."""
    declare_missing_torchvision_ops()
    import timm

    return timm


BACKBONE_STRIDE = 32  # the total downsampling of ResNet, DenseNet, EfficientNet and ConvNeXt


class CheckpointMismatch(ValueError):
    """A weights file that does not fit the backbone it is named for."""


class TimmClassifier(nn.Module):
    """A timm backbone with its classifier for ``n_outputs`` logits, taking (N, C, S, S) floats in [0, 1]: the
    training images' per-channel normalisation is held in buffers and applied inside, and the images are resized
    to ``backbone_size`` (the resolution the backbone runs at) in the forward, so the model file is self-contained.

    ``features`` is the backbone's last feature map (N, C', H', W') for a CNN, the token sequence for a ViT;
    ``head`` pools it and applies the classifier."""

    def __init__(
        self,
        backbone: str,
        in_channels: int,
        n_outputs: int,
        input_size: int,
        backbone_size: int,
        timm_kwargs: dict[str, Any],
    ) -> None:
        super().__init__()
        timm = import_timm()
        self.config = BackboneConfig(backbone, in_channels, n_outputs, input_size, backbone_size, dict(timm_kwargs))
        self.body = timm.create_model(
            backbone, pretrained=False, num_classes=n_outputs, in_chans=in_channels, **timm_kwargs
        )
        self.register_buffer("mean", torch.full((1, in_channels, 1, 1), 0.5))
        self.register_buffer("std", torch.full((1, in_channels, 1, 1), 0.25))

    set_normalisation = ResNet18Small.set_normalisation

    def classifier(self) -> nn.Module:
        return self.body.get_classifier()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        size = self.config.backbone_size
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return self.body.forward_features(x)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.body.forward_head(feats)

    def penultimate(self, feats: torch.Tensor) -> torch.Tensor:
        """The pooled features the classifier reads (the model's embedding), from :meth:`features`' output."""
        return self.body.forward_head(feats, pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass(frozen=True)
class BackboneConfig:
    backbone: str
    in_channels: int
    n_outputs: int
    input_size: int
    backbone_size: int
    timm_kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def build_timm_classifier(config: dict) -> TimmClassifier:
    """The model a ``model.json``'s ``model_config`` names, randomly initialised (no download, no weights)."""
    return TimmClassifier(
        str(config["backbone"]),
        int(config["in_channels"]),
        int(config["n_outputs"]),
        int(config["input_size"]),
        int(config["backbone_size"]),
        dict(config["timm_kwargs"]),
    )


def new_backbone(
    backbone: str,
    in_channels: int,
    n_outputs: int,
    input_size: int,
    backbone_size: int | None = None,
    weights: str | None = None,
    timm_kwargs: dict[str, Any] | None = None,
) -> TimmClassifier:
    """A classifier on ``backbone`` for images of ``input_size`` px, run at ``backbone_size`` (default: the input
    size rounded up to a multiple of ``BACKBONE_STRIDE``, as most zoo CNNs downsample 32-fold: a ConvNeXt cannot
    take 28 px at all). Backbones of a fixed input size (ViTs) are built for it (timm's ``img_size``), rounded up to a multiple
    of their patch. ``weights``: a local checkpoint (safetensors or a torch state dict), ``hub`` / ``hub:<name>``
    (timm's pretrained download; the only path that uses the network) or None (random initialisation)."""
    timm = import_timm()
    if not timm.is_model(backbone):
        raise ValueError(f"image.backbone: {backbone!r} is not a timm architecture")
    size = int(backbone_size or -(-input_size // BACKBONE_STRIDE) * BACKBONE_STRIDE)
    kwargs = dict(timm_kwargs or {})
    if timm.models.get_pretrained_cfg(backbone).fixed_input_size:
        kwargs["img_size"] = size
        patch = _patch_size(TimmClassifier(backbone, in_channels, n_outputs, input_size, size, kwargs))
        kwargs["img_size"] = size = -(-size // patch) * patch
    model = TimmClassifier(backbone, in_channels, n_outputs, input_size, size, kwargs)
    if names_hub(weights):
        _load_hub_weights(model, weights.partition(":")[2] or backbone)
    elif weights:
        load_checkpoint(model, Path(weights))
    return model


def _patch_size(model: TimmClassifier) -> int:
    patch = getattr(getattr(model.body, "patch_embed", None), "patch_size", 1)
    return int(patch[0] if isinstance(patch, (tuple, list)) else patch)


def _load_hub_weights(model: TimmClassifier, name: str) -> None:
    """timm's own pretrained download (the Hugging Face hub): filtered, first conv adapted, head dropped by timm."""
    timm = import_timm()
    c = model.config
    try:
        pretrained = timm.create_model(
            name, pretrained=True, num_classes=c.n_outputs, in_chans=c.in_channels, **c.timm_kwargs
        )
    except Exception as exc:  # noqa: BLE001 - the hub's errors are many (offline, unknown tag, HTTP)
        raise RuntimeError(
            f"image.weights: timm could not fetch the pretrained weights {name!r} "
            f"({type(exc).__name__}; the hub needs the network, a local weights file does not)"
        ) from exc
    model.body.load_state_dict(pretrained.state_dict())


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file or of a torch state dict (``weights_only=True``: never unpickles code),
    unwrapping one ``state_dict`` / ``model`` level as training scripts often save it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image.weights names no file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointMismatch(f"{path.name}: not a state dict (a mapping of weight names to tensors)")
    return state


def load_checkpoint(model: TimmClassifier, path: Path) -> None:
    """Load pretrained weights into ``model.body`` the way timm loads its own: the architecture's checkpoint
    filter (e.g. a ViT's position embeddings resampled to the grid), the first convolution adapted to the image
    channels (one channel: the RGB filters summed), the classifier dropped when its shape differs. Every other
    weight must match: a missing, unexpected or differently shaped one is a :class:`CheckpointMismatch`."""
    import sys

    from timm.models._manipulate import adapt_input_conv

    body, cfg = model.body, model.body.pretrained_cfg
    state = read_state_dict(path)
    filter_fn = getattr(sys.modules[type(body).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, body)
    own = body.state_dict()
    first = cfg.get("first_conv")
    for conv in [first] if isinstance(first, str) else list(first or []):
        key = f"{conv}.weight"
        if key in state and key in own and state[key].ndim == 4 and state[key].shape[1] != own[key].shape[1]:
            state[key] = adapt_input_conv(own[key].shape[1], state[key])
    classifier = cfg.get("classifier")
    heads = tuple(f"{c}." for c in ([classifier] if isinstance(classifier, str) else list(classifier or [])))
    state = {k: v for k, v in state.items() if not (k.startswith(heads) and k in own and v.shape != own[k].shape)}
    missing = [k for k in own if k not in state and not k.startswith(heads)]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in state if k in own and state[k].shape != own[k].shape]
    problems = [
        f"{len(names)} {what} (e.g. {', '.join(names[:3])})"
        for what, names in (
            ("weights missing", missing),
            ("unexpected weights", unexpected),
            ("weights of another shape", reshaped),
        )
        if names
    ]
    if problems:
        raise CheckpointMismatch(
            f"{path.name}: does not fit backbone {model.config.backbone} "
            f"({model.config.timm_kwargs or 'default settings'}): {'; '.join(problems)}"
        )
    body.load_state_dict(state, strict=False)
