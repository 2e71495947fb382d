"""ResNet-18-style CNN for small medical images and volumes, written with torch alone (no torchvision).

BasicBlock x ``blocks`` (default [2, 2, 2, 2], the tuner may change it) at widths ``w, 2w, 4w, 8w`` with strides 1, 2, 2, 2, then global average pooling and a
linear head giving ``n_outputs`` logits. ``pool`` ``avgmax`` concatenates global max pooling beside the average
(``8w`` features each; a small bright finding is not averaged away), ``avg`` (the default) is the average alone. The stem is adapted to the input size:

* 28 and 64 px: one 3x3 stride-1 convolution, no max-pool (the MedMNIST-style adaptation: a 28 px image keeps
  28x28 maps in the first stage and reaches 4x4 in the last),
* 128 px: 3x3 stride-2 convolution, no max-pool,
* 224 px: the original 7x7 stride-2 convolution and 3x3 stride-2 max-pool.

Width: the original ResNet-18 uses ``w = 64`` (11.2 M parameters). The default here is ``w = 32`` (2.8 M
parameters, ~4x fewer multiply-adds) because CPU training at 28 px must fit MedMNIST-sized datasets in minutes
on two cores; see ``DEFAULT_WIDTH`` and the throughput notes in ``train.py``. On a GPU ``w = 64`` costs little.

``spatial_dims`` 3 makes the same network of 3D convolutions, batch norms and pooling for volumes (N, C, S, S, S):
a 3D ResNet-18 (or ResNet-10 with ``blocks`` (1, 1, 1, 1)) as MedMNIST v2's 3D baselines, the stem adapted the same
way. ``conv`` chooses its k x k x k convolutions as MedMNIST v2's three variants: ``3d`` (full 3D kernels), ``acs``
(Yang et al., "Reinventing 2D convolutions for 3D images", 2021: the output channels split in three, each third a
2D k x k kernel in the axial, coronal or sagittal plane; a third of the 3D multiply-adds) or ``2.5d`` (every kernel
a 2D k x k one in the axial plane, the slices mixed only by the 1 x 1 x 1 shortcuts and the pooling). The planar
kernels run as ``nn.Conv2d`` over the slices (:class:`PlanarConv3d`), so Grad-CAM, the ONNX export and checkpoints
need nothing of their own.

Input: float in [0, 1], shape (N, C, S, S) (volumes: (N, C, S, S, S)). The per-channel mean / std
normalisation (fitted on the training images) is stored in the model's buffers so ``model.pt`` is self-contained.

``hflip_tta`` (set by training when the model was trained with horizontal flips): in eval mode the logits are
the mean of the image's and its mirror image's, inside ``forward`` so that validation, test, predictions and the
ONNX export all score the same way (Grad-CAM explains the image as given, through ``features`` and ``head``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

DEFAULT_WIDTH = 32
DEFAULT_BLOCKS = (2, 2, 2, 2)


@dataclass(frozen=True)
class ModelConfig:
    in_channels: int = 1
    n_outputs: int = 1
    width: int = DEFAULT_WIDTH
    input_size: int = 28
    stem: str = "3x3s1"
    blocks: tuple[int, int, int, int] = DEFAULT_BLOCKS
    hflip_tta: bool = False
    spatial_dims: int = 2
    conv: str = "3d"
    pool: str = "avg"

    def to_dict(self) -> dict:
        return asdict(self)


def stem_for(input_size: int) -> str:
    if input_size <= 64:
        return "3x3s1"
    if input_size <= 128:
        return "3x3s2"
    return "7x7s2+maxpool"


# spatial_dims -> (convolution, batch norm, max pool, adaptive average pool)
_LAYERS = {
    2: (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d),
    3: (nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d, nn.AdaptiveAvgPool3d),
}


CONV_KINDS = ("3d", "acs", "2.5d")
POOL_KINDS = ("avg", "avgmax")  # the head's global pooling: average, or average and max concatenated


def _layers(spatial_dims: int) -> tuple[type, type, type, type]:
    if spatial_dims not in _LAYERS:
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    return _LAYERS[spatial_dims]


class PlanarConv3d(nn.Module):
    """k x k 2D convolutions across the planes of a volume (N, C, D, H, W): per slicing axis (2: axial, 3:
    coronal, 4: sagittal) an ``nn.Conv2d`` over every slice, the slicing axis subsampled by the stride (a 3D kernel
    of depth 1 along it), the outputs stacked along the channels. One axis (2) is the 2.5D convolution; all three,
    the output channels split in thirds, the ACS one. Slices batched through ``conv2d`` rather than ``conv3d`` with
    a flat kernel: oneDNN's 3D path is 2-3x slower on CPU for flat kernels (measured, bench/README.md)."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, padding: int, axes: tuple[int, ...]) -> None:
        super().__init__()
        split = [c_out // len(axes)] * len(axes)
        split[0] += c_out - sum(split)
        self.axes, self.stride = axes, stride
        self.convs = nn.ModuleList(nn.Conv2d(c_in, n, k, stride, padding, bias=False) for n in split)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for axis, conv in zip(self.axes, self.convs, strict=True):
            index = [slice(None)] * 5
            index[axis] = slice(None, None, self.stride)
            slices = x[tuple(index)].movedim(axis, 1)  # (N, D', C, H, W), the slicing axis second
            n, d = slices.shape[:2]
            y = conv(slices.reshape(n * d, *slices.shape[2:]))
            outs.append(y.reshape(n, d, *y.shape[1:]).movedim(1, axis))
        return outs[0] if len(outs) == 1 else torch.cat(outs, 1)


_PLANAR_AXES = {"acs": (2, 3, 4), "2.5d": (2,)}


def _conv_factory(spatial_dims: int, kind: str):
    """The convolution constructor ``(c_in, c_out, k, stride, padding, bias=...)`` of ``kind`` (``CONV_KINDS``)."""
    if kind not in CONV_KINDS or (spatial_dims == 2 and kind != "3d"):
        raise ValueError(f"conv must be one of {CONV_KINDS} (volumes only for acs / 2.5d), got {kind!r}")
    base = _layers(spatial_dims)[0]
    if kind == "3d":
        return base

    def make(c_in: int, c_out: int, k: int, stride: int = 1, padding: int = 0, bias: bool = False) -> nn.Module:
        if k == 1:  # a 1 x 1 x 1 kernel is the same in every variant
            return nn.Conv3d(c_in, c_out, 1, stride, 0, bias=bias)
        return PlanarConv3d(c_in, c_out, k, stride, padding, _PLANAR_AXES[kind])

    return make


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, spatial_dims: int = 2, conv_kind: str = "3d") -> None:
        super().__init__()
        conv, norm = _conv_factory(spatial_dims, conv_kind), _layers(spatial_dims)[1]
        self.conv1 = conv(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = norm(c_out)
        self.conv2 = conv(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = norm(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(conv(c_in, c_out, 1, stride, bias=False), norm(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


def _stage(c_in: int, c_out: int, stride: int, n_blocks: int, dims: int, kind: str) -> nn.Sequential:
    return nn.Sequential(
        BasicBlock(c_in, c_out, stride, dims, kind),
        *(BasicBlock(c_out, c_out, 1, dims, kind) for _ in range(n_blocks - 1)),
    )


class ResNet18Small(nn.Module):
    def __init__(
        self,
        in_channels: int = 1,
        n_outputs: int = 1,
        width: int = DEFAULT_WIDTH,
        input_size: int = 28,
        stem: str | None = None,
        blocks: tuple[int, int, int, int] = DEFAULT_BLOCKS,
        hflip_tta: bool = False,
        spatial_dims: int = 2,
        conv: str = "3d",
        pool: str = "avg",
    ) -> None:
        super().__init__()
        if pool not in POOL_KINDS:
            raise ValueError(f"pool must be one of {POOL_KINDS}, got {pool!r}")
        norm, max_pool, avg_pool = _layers(spatial_dims)[1:]
        conv_kind, conv = conv, _conv_factory(spatial_dims, conv)
        stem = stem or stem_for(input_size)
        blocks = tuple(int(b) for b in blocks)
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"blocks must be four counts >= 1, got {blocks}")
        self.config = ModelConfig(
            in_channels, n_outputs, width, input_size, stem, blocks, bool(hflip_tta), spatial_dims, conv_kind, pool
        )
        w = width
        if stem == "3x3s1":
            self.stem = nn.Sequential(conv(in_channels, w, 3, 1, 1, bias=False), norm(w), nn.ReLU(inplace=True))
        elif stem == "3x3s2":
            self.stem = nn.Sequential(conv(in_channels, w, 3, 2, 1, bias=False), norm(w), nn.ReLU(inplace=True))
        elif stem == "7x7s2+maxpool":
            self.stem = nn.Sequential(
                conv(in_channels, w, 7, 2, 3, bias=False),
                norm(w),
                nn.ReLU(inplace=True),
                max_pool(3, 2, 1),
            )
        else:
            raise ValueError(f"unknown stem {stem!r}")
        d = spatial_dims
        self.layer1 = _stage(w, w, 1, blocks[0], d, conv_kind)
        self.layer2 = _stage(w, 2 * w, 2, blocks[1], d, conv_kind)
        self.layer3 = _stage(2 * w, 4 * w, 2, blocks[2], d, conv_kind)
        self.layer4 = _stage(4 * w, 8 * w, 2, blocks[3], d, conv_kind)
        self.pool = avg_pool(1)
        self.fc = nn.Linear(8 * w * (2 if pool == "avgmax" else 1), n_outputs)
        self.register_buffer("mean", torch.full(self._channel_shape(), 0.5))
        self.register_buffer("std", torch.full(self._channel_shape(), 0.25))
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, norm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():  # zero-init the last BN of each residual branch (helps short training)
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def _channel_shape(self) -> tuple[int, ...]:
        return (1, self.config.in_channels, *(1,) * self.config.spatial_dims)

    def set_normalisation(self, mean: list[float], std: list[float]) -> None:
        """Per-channel mean and std, in the buffers' own shape (2D or 3D; shared by the timm backbones)."""
        self.mean.copy_(torch.tensor(mean, dtype=torch.float32).reshape(self.mean.shape))
        self.std.copy_(torch.tensor(std, dtype=torch.float32).clamp_min(1e-3).reshape(self.std.shape))

    def classifier(self) -> nn.Module:
        return self.fc

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last convolutional feature map (the Grad-CAM target)."""
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        x = self.stem(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.layer4(x)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc(self.penultimate(feats))

    def penultimate(self, feats: torch.Tensor) -> torch.Tensor:
        """The pooled features the classifier reads (the model's embedding), from :meth:`features`' map: the
        average, then (``avgmax``) the maximum over the spatial dims (``amax``: one ONNX ReduceMax)."""
        pooled = torch.flatten(self.pool(feats), 1)
        if self.config.pool == "avg":
            return pooled
        return torch.cat([pooled, feats.amax(dim=tuple(range(2, feats.ndim)))], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not self.config.hflip_tta:
            return self.head(self.features(x))
        both = self.head(self.features(torch.cat([x, x.flip(-1)])))  # one pass over the two views
        return (both[: x.shape[0]] + both[x.shape[0] :]) / 2


def build_model(config: dict) -> ResNet18Small:
    return ResNet18Small(
        in_channels=int(config["in_channels"]),
        n_outputs=int(config["n_outputs"]),
        width=int(config["width"]),
        input_size=int(config["input_size"]),
        stem=str(config["stem"]),
        blocks=tuple(config.get("blocks", DEFAULT_BLOCKS)),
        hflip_tta=bool(config.get("hflip_tta", False)),
        spatial_dims=int(config.get("spatial_dims", 2)),
        conv=str(config.get("conv", "3d")),
        pool=str(config.get("pool", "avg")),  # saved before the option: the average alone
    )


__all__ = [
    "CONV_KINDS",
    "DEFAULT_BLOCKS",
    "DEFAULT_WIDTH",
    "POOL_KINDS",
    "ModelConfig",
    "ResNet18Small",
    "build_model",
    "stem_for",
]
