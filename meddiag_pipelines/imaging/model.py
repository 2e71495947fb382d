"""ResNet-18-style CNN for small medical images, written with torch alone (no torchvision).

BasicBlock x ``blocks`` (default [2, 2, 2, 2], the tuner may change it) at widths ``w, 2w, 4w, 8w`` with strides 1, 2, 2, 2, then global average pooling and a
linear head giving ``n_outputs`` logits. The stem is adapted to the input size:

* 28 and 64 px: one 3x3 stride-1 convolution, no max-pool (the MedMNIST-style adaptation: a 28 px image keeps
  28x28 maps in the first stage and reaches 4x4 in the last),
* 128 px: 3x3 stride-2 convolution, no max-pool,
* 224 px: the original 7x7 stride-2 convolution and 3x3 stride-2 max-pool.

Width: the original ResNet-18 uses ``w = 64`` (11.2 M parameters). The default here is ``w = 32`` (2.8 M
parameters, ~4x fewer multiply-adds) because CPU training at 28 px must fit MedMNIST-sized datasets in minutes
on two cores; see ``DEFAULT_WIDTH`` and the throughput notes in ``train.py``. On a GPU ``w = 64`` costs little.

Input: float in [0, 1], shape (N, C, S, S). The per-channel mean / std normalisation (fitted on the training
images) is stored in the model's buffers so ``model.pt`` is self-contained.

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

    def to_dict(self) -> dict:
        return asdict(self)


def stem_for(input_size: int) -> str:
    if input_size <= 64:
        return "3x3s1"
    if input_size <= 128:
        return "3x3s2"
    return "7x7s2+maxpool"


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


def _stage(c_in: int, c_out: int, stride: int, n_blocks: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(c_in, c_out, stride), *(BasicBlock(c_out, c_out, 1) for _ in range(n_blocks - 1)))


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
    ) -> None:
        super().__init__()
        stem = stem or stem_for(input_size)
        blocks = tuple(int(b) for b in blocks)
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"blocks must be four counts >= 1, got {blocks}")
        self.config = ModelConfig(in_channels, n_outputs, width, input_size, stem, blocks, bool(hflip_tta))
        w = width
        if stem == "3x3s1":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True))
        elif stem == "3x3s2":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True))
        elif stem == "7x7s2+maxpool":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, w, 7, 2, 3, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            )
        else:
            raise ValueError(f"unknown stem {stem!r}")
        self.layer1 = _stage(w, w, 1, blocks[0])
        self.layer2 = _stage(w, 2 * w, 2, blocks[1])
        self.layer3 = _stage(2 * w, 4 * w, 2, blocks[2])
        self.layer4 = _stage(4 * w, 8 * w, 2, blocks[3])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * w, n_outputs)
        self.register_buffer("mean", torch.full((1, in_channels, 1, 1), 0.5))
        self.register_buffer("std", torch.full((1, in_channels, 1, 1), 0.25))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():  # zero-init the last BN of each residual branch (helps short training)
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def set_normalisation(self, mean: list[float], std: list[float]) -> None:
        c = self.config.in_channels
        self.mean.copy_(torch.tensor(mean, dtype=torch.float32).reshape(1, c, 1, 1))
        self.std.copy_(torch.tensor(std, dtype=torch.float32).clamp_min(1e-3).reshape(1, c, 1, 1))

    def classifier(self) -> nn.Module:
        return self.fc

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last convolutional feature map (the Grad-CAM target)."""
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        x = self.stem(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.layer4(x)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(feats), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not self.config.hflip_tta:
            return self.head(self.features(x))
        both = self.head(self.features(torch.cat([x, x.flip(3)])))  # one pass over the two views
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
    )


__all__ = ["DEFAULT_BLOCKS", "DEFAULT_WIDTH", "ModelConfig", "ResNet18Small", "build_model", "stem_for"]
