"""Training and inference of the imaging CNN: the from-scratch :class:`~meddiag_pipelines.imaging.model.ResNet18Small`
or a timm backbone (:class:`~meddiag_pipelines.imaging.backbones.TimmClassifier`, ``image.backbone``), one
configuration (:class:`ImageParams`) per call; ``imaging.tuning`` searches them.

* Inputs: ``X`` float (N, C, S, S) in [0, 1] (``preprocess.load_cached``), or volumes (N, C, S, S, S): the same
  recipe trains the 3D ResNet (``model.py``, ``spatial_dims`` 3) of the volume modality; ``y``: binary (N,) 0/1,
  multiclass (N,) class indices, multilabel (N, k) 0/1. A binary model has ONE logit whatever ``n_outputs`` says
  (1 or 2).
* AdamW (weight decay 1e-2; or SGD with Nesterov momentum) with a short linear warm-up then cosine decay over
  ``epochs x steps``, or over the epochs the time budget allows at the pace measured so far when fewer (so the
  learning rate has annealed when the budget stops a slow CPU run); fine-tuning modes: ``full``, ``linear_probe``
  (only the classifier trains, the backbone's batch-norm statistics frozen) and ``frozen_then_unfrozen`` (the
  classifier alone for the first quarter of the epochs, then everything, the backbone at ``UNFROZEN_LR_SCALE`` of
  the learning rate); class weighting
  (binary ``pos_weight = n_neg / n_pos``, multiclass inverse-frequency weights, multilabel per-label
  ``pos_weight`` capped at ``MULTILABEL_POS_WEIGHT_CAP``); augmentation of each batch in torch from
  ``spec.image.augment`` / ``spec.volume.augment`` (hflip / vflip / dflip: a flip of the last / second last / third
  last axis with p = 0.5; affine: rotation +-10 deg, scale 0.9-1.1, shift +-6 %; intensity: a gain of 0.9-1.1 and
  an offset of +-0.05): images batch-wise in torch, volumes one by one through MONAI's 3D random transforms
  (``RandFlip``, ``RandAffine`` rotating about all three axes, ``RandScaleIntensity``, ``RandShiftIntensity``).
* An exponential moving average of the weights and batch-norm statistics (``torch.optim.swa_utils.AveragedModel``,
  updated after every step, averaging over about one epoch, :func:`ema_decay`, with a warm-up so a short run is
  not dominated by the initial weights) is what is validated, saved and scored; the raw weights only train.
  The from-scratch CNN trained with ``hflip`` scores the mean of each image and its mirror image (test-time
  augmentation inside the model's forward, ``model.py``).
* Early stopping on validation AUROC (macro over classes / labels) with ``spec.training.patience``; at most
  ``spec.training.epochs`` epochs and ``spec.training.time_budget_s`` seconds (checked every step, summed over
  resumed runs). The best epoch's (averaged) weights are kept.
* Seeded; on CPU deterministic (``torch.use_deterministic_algorithms``, fixed thread count, explicit generators
  for shuffling and augmentation), so two runs give the same weights. On CUDA: bf16 autocast, channels_last,
  pinned memory and DataLoader workers (not bit-deterministic).
* ``out_dir/checkpoint.pt`` (model, its average, optimizer, scheduler, epoch, RNG states, best state, history) is written
  atomically after every epoch; calling again with the same ``out_dir`` and the same data / settings resumes from
  it (different data or settings start afresh). Final model: ``out_dir/model.pt`` (state dict only) and
  ``out_dir/model.json``. Every ``torch.load`` uses ``weights_only=True``.

CPU throughput, 2 cores, 28 px, batch 128, one training step = forward + backward + AdamW (``bench/training.py``), idle
machine, 2 threads: width 16 ~ 800 img/s, width 32 ~ 200-260 img/s, width 64 ~ 75 img/s (on a machine shared
with other jobs, 1 thread: 440 / 130 / 37 img/s). :func:`choose_width` therefore picks 32 on CPU (PneumoniaMNIST's
4,708 images: ~20-35 s an epoch) and 16 when an epoch would be large (ChestMNIST's 78k images: ~100-180 s an
epoch instead of ~6-10 min), and 64 (the original ResNet-18 width) on CUDA.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from meddiag_pipelines.atomic import atomic_write, atomic_write_json
from meddiag_pipelines.device import cpu_threads, torch_device, torch_settings, training_threads
from meddiag_pipelines.imaging.model import DEFAULT_BLOCKS, ResNet18Small, build_model
from meddiag_pipelines.specs import names_hub

if TYPE_CHECKING:
    from meddiag_pipelines.specs import TaskSpec, TrainingSpec

log = logging.getLogger(__name__)

Kind = Literal["binary", "multiclass", "multilabel"]
WEIGHT_DECAY = 1e-2
MULTILABEL_POS_WEIGHT_CAP = 10.0
CHECKPOINT = "checkpoint.pt"
MODEL_PT = "model.pt"
MODEL_JSON = "model.json"
EVAL_BATCH = 512
STATS_CHUNK, STATS_ELEMENTS = 4096, 1 << 25  # inputs, values in one float64 chunk of the channel statistics
EVAL_VOXELS = 1 << 22  # voxels scored at once at most: 16 volumes at 64^3 (~1 GB at width 8), 191 at 28^3
TUNING_JSON = "tuning.json"  # imaging.tuning's record of a search, and its trials' folders
TRIALS = "trials"
TIMM = "timm"  # model.json "architecture" of a timm backbone
UNFROZEN_LR_SCALE = 0.1  # frozen_then_unfrozen: the backbone's learning rate once it trains, relative to the head's
SGD_MOMENTUM = 0.9
EMA_DECAY_RANGE = (0.9, 0.9999)  # the average's decay, whatever the epoch's length
RECIPE = "ema+hflip_tta+monai3d"  # in the checkpoint's fingerprint: a checkpoint of another recipe is not resumed


@dataclass(frozen=True)
class ImageParams:
    """One training configuration (what the tuner varies); :func:`default_params` is the spec's own."""

    learning_rate: float
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = WEIGHT_DECAY
    augment: tuple[str, ...] = ()
    width: int | None = None  # ResNet18Small only; None: choose_width
    blocks: tuple[int, ...] = DEFAULT_BLOCKS  # ResNet18Small only
    conv: str = "3d"  # ResNet18Small volumes: 3d | acs | 2.5d (model.CONV_KINDS)
    pool: str = "avg"  # ResNet18Small: avg | avgmax (model.POOL_KINDS)
    backbone: str | None = None  # a timm architecture, or None for ResNet18Small
    finetune: Literal["full", "linear_probe", "frozen_then_unfrozen"] = "full"

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


VOLUME_BLOCKS = {"resnet10": (1, 1, 1, 1), "resnet18": DEFAULT_BLOCKS}


def default_params(spec: TaskSpec) -> ImageParams:
    image, volume = spec.image, spec.volume
    if volume is not None:
        return ImageParams(
            spec.training.learning_rate,
            augment=tuple(volume.augment),
            width=volume.width,
            blocks=VOLUME_BLOCKS[volume.model],
            conv=volume.conv,
            pool=volume.pool,
        )
    backbones = image.backbone_names() if image is not None else []
    return ImageParams(
        spec.training.learning_rate,
        augment=tuple(image.augment) if image is not None else (),
        backbone=backbones[0] if backbones else None,
        finetune=image.finetune if image is not None else "full",
    )


@dataclass
class ImageTrainResult:
    model_dir: Path
    best_epoch: int
    best_val_auroc: float
    history: list[dict]
    device: str
    seconds: float
    stopped: str = "epochs"  # "epochs" | "early_stopping" | "time_budget"
    resumed_from_epoch: int = 0
    config: dict = field(default_factory=dict)


def choose_width(n_train: int, size: int, device: str, spatial_dims: int = 2) -> int:
    """Base width of the ResNet: 64 on CUDA (32 for volumes); on CPU 32, or 16 when an epoch is large (> 20k
    images at 28 px); volumes on CPU 16, or 8 when an epoch is large (> 2k volumes at 28^3: ``bench/volume.py``)."""
    if spatial_dims == 3:
        if device.startswith("cuda"):
            return 32
        return 8 if n_train * (size / 28.0) ** 3 > 2_000 else 16
    if device.startswith("cuda"):
        return 64
    cost = n_train * (size / 28.0) ** 2
    return 16 if cost > 20_000 else 32


# ------------------------------------------------------------------------------------------------ targets


def _targets(y: np.ndarray, kind: Kind, n_outputs: int) -> torch.Tensor:
    y = np.asarray(y)
    if kind == "binary":
        y = y.reshape(-1)
        if not np.isin(y, (0, 1)).all():
            raise ValueError("binary targets must be 0/1")
        return torch.as_tensor(y.astype(np.float32)).reshape(-1, 1)
    if kind == "multiclass":
        y = y.reshape(-1)
        if (y < 0).any() or (y >= n_outputs).any() or not np.all(y == np.round(y)):
            raise ValueError(f"multiclass targets must be class indices in [0, {n_outputs})")
        return torch.as_tensor(y.astype(np.int64))
    if kind == "multilabel":
        if y.ndim != 2 or y.shape[1] != n_outputs or not np.isin(y, (0, 1)).all():
            raise ValueError(f"multilabel targets must be an (n, {n_outputs}) 0/1 matrix")
        return torch.as_tensor(y.astype(np.float32))
    raise ValueError(f"unknown kind {kind!r}")


def _loss_fn(y: torch.Tensor, kind: Kind, n_outputs: int) -> nn.Module:
    if kind == "binary":
        pos = float(y.sum())
        neg = float(len(y) - pos)
        return nn.BCEWithLogitsLoss(pos_weight=torch.tensor([neg / pos if pos > 0 and neg > 0 else 1.0]))
    if kind == "multiclass":
        counts = torch.bincount(y, minlength=n_outputs).float()
        weights = torch.where(counts > 0, len(y) / (n_outputs * counts.clamp_min(1)), torch.zeros_like(counts))
        return nn.CrossEntropyLoss(weight=weights)
    pos = y.sum(0)
    neg = len(y) - pos
    pos_weight = torch.where(pos > 0, neg / pos.clamp_min(1), torch.ones_like(pos)).clamp(
        1.0 / MULTILABEL_POS_WEIGHT_CAP, MULTILABEL_POS_WEIGHT_CAP
    )
    return nn.BCEWithLogitsLoss(pos_weight=pos_weight)


def _probabilities(logits: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "binary":
        return torch.sigmoid(logits[:, 0])
    if kind == "multiclass":
        return torch.softmax(logits, dim=1)
    return torch.sigmoid(logits)


def macro_auroc(y: np.ndarray, p: np.ndarray, kind: str) -> float:
    """Binary AUROC, or the macro one-vs-rest AUROC over classes / labels that have both outcomes (NaN if none)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    if kind == "binary":
        y = y.reshape(-1)
        return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")
    if kind == "multiclass":
        y = y.reshape(-1).astype(int)
        onehot = np.eye(p.shape[1])[y]
    else:
        onehot = y
    scores = [roc_auc_score(onehot[:, k], p[:, k]) for k in range(p.shape[1]) if 0 < onehot[:, k].sum() < len(onehot)]
    return float(np.mean(scores)) if scores else float("nan")


# ------------------------------------------------------------------------------------------------ data


_FLIP_AXES = {"hflip": -1, "vflip": -2, "dflip": -3}  # dflip: volumes only (their depth axis)


def _rotation(angle: torch.Tensor) -> torch.Tensor:
    """(n, 2, 2) rotations of images by ``angle``."""
    cos, sin = torch.cos(angle), torch.sin(angle)
    return torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)


def augment_batch(x: torch.Tensor, ops: list[str], gen: torch.Generator) -> torch.Tensor:
    """Random flips / small affine / intensity jitter of a batch (N, C, H, W) or (N, C, D, H, W) in [0, 1]; random
    numbers drawn from ``gen`` (CPU). Volumes go through MONAI's transforms (:func:`_volume_transforms`)."""
    n, dims = x.shape[0], x.ndim - 2
    if n == 0 or not ops:
        return x
    if dims == 3:
        return _augment_volumes(x, tuple(ops), gen)
    per_sample = (-1, *(1,) * (x.ndim - 1))
    for op, axis in _FLIP_AXES.items():
        if op in ops and -axis <= dims:
            m = (torch.rand(n, generator=gen) < 0.5).to(x.device).view(per_sample)
            x = torch.where(m, x.flip(axis), x)
    if "affine" in ops:
        angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(10)
        scale = 0.9 + 0.2 * torch.rand(n, generator=gen)
        shift = (torch.rand(n, dims, generator=gen) * 2 - 1) * 0.12  # +-6 % of the side in [-1, 1] coordinates
        theta = torch.cat([_rotation(angle) / scale.view(-1, 1, 1), shift[:, :, None]], 2)
        grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if "intensity" in ops:
        gain = (0.9 + 0.2 * torch.rand(n, generator=gen)).to(x.device, x.dtype).view(per_sample)
        offset = ((torch.rand(n, generator=gen) * 2 - 1) * 0.05).to(x.device, x.dtype).view(per_sample)
        x = (x * gain + offset).clamp(0.0, 1.0)
    return x


@functools.lru_cache(maxsize=8)
def _volume_transforms(ops: tuple[str, ...], size: int):
    """MONAI's 3D random transforms for ``ops`` on one (C, D, H, W) volume: ``RandFlip`` per flipped axis
    (p = 0.5), ``RandAffine`` (p = 0.5: rotation +-10 deg about each axis, scale 0.9-1.1, shift +-6 % of the side,
    zeros outside), ``RandScaleIntensity`` (gain 0.9-1.1) and ``RandShiftIntensity`` (offset +-0.05)."""
    from monai.transforms import Compose, RandAffine, RandFlip, RandScaleIntensity, RandShiftIntensity

    steps = [RandFlip(prob=0.5, spatial_axis=3 + axis) for op, axis in _FLIP_AXES.items() if op in ops]
    if "affine" in ops:
        steps.append(
            RandAffine(
                prob=0.5,  # per volume ~24 ms at 28^3 on CPU (~0.3 of a training step): half of them
                rotate_range=(math.radians(10),) * 3,
                scale_range=(0.1,) * 3,
                translate_range=(0.06 * size,) * 3,
                padding_mode="zeros",
                mode="bilinear",
                spatial_size=(size,) * 3,
                cache_grid=True,
            )
        )
    if "intensity" in ops:
        steps += [RandScaleIntensity(factors=0.1, prob=1.0), RandShiftIntensity(offsets=0.05, prob=1.0)]
    return Compose(steps)


def _augment_volumes(x: torch.Tensor, ops: tuple[str, ...], gen: torch.Generator) -> torch.Tensor:
    """Each volume of the batch through :func:`_volume_transforms`, seeded per batch from ``gen`` (so a run, and
    a resumed one, is reproducible), clipped to [0, 1]."""
    from monai.utils import convert_to_tensor

    transforms = _volume_transforms(ops, int(x.shape[-1]))
    transforms.set_random_state(seed=int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    out = torch.stack([convert_to_tensor(transforms(v), track_meta=False) for v in x])
    return out.to(x.device, x.dtype).clamp(0.0, 1.0)


class _Batches(torch.utils.data.Dataset):
    """Whole batches by index (a DataLoader with ``batch_size=None`` over it pins and prefetches them)."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor, batches: list[torch.Tensor]) -> None:
        self.X, self.y, self.batches = X, y, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.batches[i]
        return self.X[idx], self.y[idx]


def _iterate(X: torch.Tensor, y: torch.Tensor, batches: list[torch.Tensor], device: str):
    data = _Batches(X, y, batches)
    if device.startswith("cuda"):
        workers = min(4, max(0, cpu_threads() - 1))
        return torch.utils.data.DataLoader(
            data, batch_size=None, shuffle=False, num_workers=workers, pin_memory=True, persistent_workers=False
        )
    return (data[i] for i in range(len(data)))


def _as_tensor(X: np.ndarray) -> torch.Tensor:
    X = np.asarray(X)
    if X.ndim not in (4, 5):
        raise ValueError(f"images must be (N, C, S, S) or volumes (N, C, S, S, S), got {X.shape}")
    return torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))


def _data_hash(*arrays: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        flat = a.reshape(-1).view(np.uint8)
        for start in range(0, len(flat), 1 << 26):
            h.update(flat[start : start + (1 << 26)].data)
    return h.hexdigest()


def _channel_stats(X: torch.Tensor) -> tuple[list[float], list[float]]:
    c = X.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    step = max(1, min(STATS_CHUNK, STATS_ELEMENTS // max(1, X[0].numel()))) if len(X) else 1  # 128 at 64^3
    for start in range(0, len(X), step):
        chunk = X[start : start + step].double()
        axes = (0, *range(2, X.ndim))
        s += chunk.sum(dim=axes)
        s2 += (chunk**2).sum(dim=axes)
    count = X.numel() // max(1, c)
    mean = s / count
    std = (s2 / count - mean**2).clamp_min(1e-8).sqrt()
    return mean.tolist(), std.tolist()


def batch_for(shape: tuple[int, ...], cap: int = EVAL_BATCH, voxels: int | None = None) -> int:
    """How many inputs of ``shape`` (C, S, S) or (C, S, S, S) go through the model at once: ``cap``; volumes also
    at most ``voxels`` (default :data:`EVAL_VOXELS`) voxels together (at least one), so that a large size does not
    multiply the activations."""
    if len(shape) < 4:
        return cap
    return max(1, min(cap, (voxels or EVAL_VOXELS) // math.prod(int(s) for s in shape[1:])))


@torch.inference_mode()
def _predict(model: nn.Module, X: torch.Tensor, kind: str, device: str) -> np.ndarray:
    model.eval()
    outs = []
    cuda = device.startswith("cuda")
    step = batch_for(tuple(X.shape[1:]))
    for start in range(0, len(X), step):
        xb = X[start : start + step].to(device, non_blocking=cuda)
        if cuda:
            xb = xb.contiguous(memory_format=_memory_format(xb.ndim, cuda))
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            logits = model(xb)
        outs.append(_probabilities(logits.float(), kind).cpu())
    if not outs:
        return np.empty((0,) if kind == "binary" else (0, 0), dtype=np.float32)
    return torch.cat(outs).numpy().astype(np.float32)


def _in_layout(model: nn.Module, ndim: int, cuda: bool) -> nn.Module:
    """The model in :func:`_memory_format`'s layout; a volume model of planar (2D) kernels keeps its own (a 3D
    layout does not apply to their 4D weights)."""
    if ndim == 5 and getattr(getattr(model, "config", None), "conv", "3d") != "3d":
        return model
    return model.to(memory_format=_memory_format(ndim, cuda))


def _memory_format(ndim: int, cuda: bool) -> torch.memory_format:
    """channels_last for images; for volumes channels_last_3d on CUDA, the plain layout on CPU."""
    if ndim == 5:
        return torch.channels_last_3d if cuda else torch.contiguous_format
    return torch.channels_last


# ------------------------------------------------------------------------------------------------ training


def ema_decay(steps_per_epoch: int) -> float:
    """The decay that averages the weights over about the last epoch."""
    low, high = EMA_DECAY_RANGE
    return min(high, max(low, 1.0 - 1.0 / max(1, steps_per_epoch)))


def _ema_update(decay: float) -> Callable:
    """``AveragedModel``'s ``multi_avg_fn``: an EMA whose decay warms up as ``(1 + n) / (10 + n)`` after ``n``
    updates (as TensorFlow's and timm's), so the first epochs' average follows the weights closely."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        n = float(n_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1.0 - d)
        else:  # batch-norm step counters: unused by the average, kept as the model's
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)

    return update


def _averaged(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    return torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=_ema_update(decay), use_buffers=True)


class _Cosine:
    """The learning-rate factor at a step: a linear warm-up, then a cosine down to 2 % at ``total_steps`` (at most
    ``planned``, the epochs' steps). A callable object, not a closure, so that ``LambdaLR``'s checkpoint keeps the
    ``total_steps`` :func:`_fit_schedule_to_budget` set."""

    def __init__(self, planned: int, warmup: int) -> None:
        self.planned, self.total_steps, self.warmup = planned, planned, warmup

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total_steps - self.warmup))
        return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * progress))


def _fit_schedule_to_budget(run: _Run, steps_per_epoch: int, budget_s: float) -> None:
    """After each epoch: the cosine ends with the last epoch that fits the time budget at the pace of the recent
    epochs (training and validation), never after the planned epochs. On a slow or loaded CPU, or a large set, the
    learning rate has thus annealed when the budget stops training, instead of being cut near its peak; a run
    whose budget is ample keeps its planned schedule (and its determinism), and a run resumed with more time
    gets its horizon back."""
    cosine = run.scheduler.lr_lambdas[0]
    pace = float(np.mean([h["seconds"] for h in run.history[-3:]]))
    done = int(run.state["epoch"]) * steps_per_epoch
    epochs_fit = int(max(0.0, budget_s - float(run.state["elapsed"])) // max(pace, 1e-9))
    horizon = min(cosine.planned, max(done + 1, done + epochs_fit * steps_per_epoch))
    if horizon != cosine.total_steps:
        log.info("learning-rate schedule fitted to the time budget: %d steps (planned %d)", horizon, cosine.planned)
        cosine.total_steps = horizon


def _frozen_epochs(finetune: str, epochs: int) -> int:
    """Epochs in which only the classifier trains."""
    if finetune == "linear_probe":
        return epochs
    return max(1, epochs // 4) if finetune == "frozen_then_unfrozen" else 0


def _backbone_settings(spec: TaskSpec, backbone: str, weights: str | None) -> dict:
    image = spec.image
    return {"kwargs": image.kwargs_for(backbone), "size": image.backbone_size, "weights": weights}


def _weights_origin(weights: str | None) -> str | None:
    """What the initial weights were, for the record: a hub name as written, a local file by its name."""
    if not weights or names_hub(weights):
        return weights
    return Path(weights).name


def _new_model(
    params: ImageParams,
    spec: TaskSpec,
    weights: str | None,
    channels: int,
    n_outputs: int,
    size: int,
    spatial_dims: int,
) -> nn.Module:
    if params.backbone is None:
        return ResNet18Small(
            channels,
            n_outputs,
            int(params.width),
            size,
            blocks=params.blocks,
            hflip_tta="hflip" in params.augment,
            spatial_dims=spatial_dims,
            conv=params.conv,
            pool=params.pool,
        )
    from meddiag_pipelines.imaging.backbones import new_backbone

    image = spec.image
    return new_backbone(
        params.backbone, channels, n_outputs, size, image.backbone_size, weights, image.kwargs_for(params.backbone)
    )


def _head_and_body(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    head = list(model.classifier().parameters())
    ids = {id(p) for p in head}
    return head, [p for p in model.parameters() if id(p) not in ids]


def _optimizer(model: nn.Module, params: ImageParams, total_steps: int, warmup: int, frozen_steps: int):
    """The optimiser over two groups, the classifier and the rest, and its schedule: warm-up then cosine for
    both, the rest at 0 while frozen and at ``UNFROZEN_LR_SCALE`` after (``full``: the same as the head)."""
    head, body = _head_and_body(model)
    groups = [{"params": head}, {"params": body}]
    lr, wd = params.learning_rate, params.weight_decay
    if params.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=SGD_MOMENTUM, nesterov=True, weight_decay=wd)
    else:
        optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=wd)
    cosine = _Cosine(total_steps, warmup)
    scale = 1.0 if frozen_steps == 0 else UNFROZEN_LR_SCALE

    def body_lr(step: int) -> float:
        return 0.0 if step < frozen_steps else scale * cosine(step)

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, [cosine, body_lr])


def _set_trainable(model: nn.Module, frozen: bool) -> None:
    """Training mode; with the backbone frozen, only the classifier has gradients and batch-norm statistics stay."""
    _, body = _head_and_body(model)
    for p in body:
        p.requires_grad_(not frozen)
    if frozen:
        model.eval()
        model.classifier().train()
    else:
        model.train()


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def adopt_parent_checkpoint(out_dir: Path, staging: Path, parent_run_id: str | None) -> bool:
    """Copy into ``out_dir`` the checkpoint a failed parent run left in its staging folder (``staging`` holds one
    folder per version, ``<time>-<first 8 characters of the run id>``), so that training its re-execution
    resumes from it; nothing when there is no parent, the parent left no checkpoint, or ``out_dir`` has its own.
    A tuned model's checkpoint is its search (``tuning.json``) with the trials' checkpoints: all are copied."""
    if not parent_run_id or (out_dir / CHECKPOINT).exists() or (out_dir / TUNING_JSON).exists():
        return False
    found = sorted(staging.glob(f"*-{parent_run_id[:8]}/model/{CHECKPOINT}"))
    found += sorted(staging.glob(f"*-{parent_run_id[:8]}/model/{TUNING_JSON}"))
    if not found:
        return False
    parent = found[-1].parent
    for path in [found[-1], *(p for p in parent.glob(f"{TRIALS}/*/{CHECKPOINT}"))]:
        target = out_dir / path.relative_to(parent)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda tmp, path=path: shutil.copyfile(path, tmp))
    return True


@dataclass
class _Plan:
    """What one call trains, fixed before any weight exists: the configuration, sizes and schedule, and the
    fingerprint a checkpoint must carry to be resumed."""

    kind: Kind
    n_outputs: int
    params: ImageParams
    weights: str | None
    n_train: int
    channels: int
    size: int
    spatial_dims: int
    batch_size: int
    steps_per_epoch: int
    total_steps: int
    warmup: int
    frozen_epochs: int
    fingerprint: str


def _fresh_state() -> dict:
    """The epochs' counters: the last epoch, the best validation AUROC and its epoch, the epochs since it, and the
    seconds trained (summed over resumed runs)."""
    return {"epoch": 0, "best_auroc": float("-inf"), "best_epoch": 0, "bad_epochs": 0, "elapsed": 0.0}


@dataclass
class _Run:
    """The model and what trains it, and the state the epochs change: all of it is in the checkpoint but the loss,
    the input normalisation and the average's decay, which the set-up fixes."""

    model: nn.Module
    ema: torch.optim.swa_utils.AveragedModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    shuffle_gen: torch.Generator
    aug_gen: torch.Generator
    loss_fn: nn.Module
    mean: list[float]
    std: list[float]
    decay: float
    state: dict = field(default_factory=_fresh_state)
    history: list[dict] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None
    finished: bool = False
    stopped: str = "epochs"


def train_image_model(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    kind: Kind,
    n_outputs: int,
    spec: TaskSpec,
    out_dir: Path,
    device: str | None = None,
    *,
    width: int | None = None,
    num_threads: int | None = None,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    params: ImageParams | None = None,
) -> ImageTrainResult:
    """Train (or resume training) the CNN; writes ``out_dir/model.pt`` + ``model.json`` and returns the summary.

    ``params``: the configuration (default :func:`default_params`). ``width``: base width of the ResNet (default
    ``params.width``, else :func:`choose_width`). ``num_threads``: CPU threads (default
    :func:`training_threads`, the same on every run whatever the load: the thread count changes float reductions).
    ``on_epoch_end(epoch, row)`` is called
    after each epoch's checkpoint is on disk (progress logging; tests raise from it to simulate a crash).
    """
    t_start = time.perf_counter()
    device = device or torch_device()
    cuda = device.startswith("cuda")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = params or default_params(spec)
    if kind == "binary":
        n_outputs = 1
    elif n_outputs < 2:
        raise ValueError(f"{kind} needs n_outputs >= 2")

    Xt, Xv = _as_tensor(X_train), _as_tensor(X_val)
    yt, yv = _targets(y_train, kind, n_outputs), _targets(y_val, kind, n_outputs)
    if len(Xt) != len(yt) or len(Xv) != len(yv):
        raise ValueError("X and y lengths differ")
    if len(Xt) == 0:
        raise ValueError("no training images")
    data = _data_hash(np.asarray(X_train), np.asarray(y_train), np.asarray(X_val), np.asarray(y_val))
    plan = _plan(Xt, kind, n_outputs, spec, params, width, device, data)

    threads = num_threads or training_threads()
    with torch_settings(device, deterministic=not cuda, threads=threads):
        run = _set_up(plan, spec, Xt, yt, device)
        resumed_from = _resume(run, out_dir, plan.fingerprint, spec.training)
        _train_epochs(run, plan, spec.training, (Xt, yt), (Xv, yv), device, out_dir, on_epoch_end)
        config = _save_model(run, plan, out_dir, device, threads, spec.training.seed)

    best = float(run.state["best_auroc"])
    return ImageTrainResult(
        model_dir=out_dir,
        best_epoch=int(run.state["best_epoch"]),
        best_val_auroc=best if best != float("-inf") else float("nan"),
        history=run.history,
        device=device,
        seconds=time.perf_counter() - t_start,
        stopped=run.stopped,
        resumed_from_epoch=resumed_from,
        config=config,
    )


def _plan(
    Xt: torch.Tensor,
    kind: Kind,
    n_outputs: int,
    spec: TaskSpec,
    params: ImageParams,
    width: int | None,
    device: str,
    data: str,
) -> _Plan:
    """The width (ResNet18Small), initial weights (timm), batch size, schedule and checkpoint fingerprint."""
    training = spec.training
    n_train, channels, size, dims = Xt.shape[0], Xt.shape[1], Xt.shape[2], Xt.ndim - 2
    width = None if params.backbone else width or params.width or choose_width(n_train, size, device, dims)
    params = replace(params, width=width)
    weights = spec.image.weights_for(params.backbone) if params.backbone and spec.image is not None else None
    batch_size = min(training.batch_size, n_train)
    steps_per_epoch = math.ceil(n_train / batch_size)
    total_steps = steps_per_epoch * training.epochs
    warmup = max(1, min(100, total_steps // 20))
    frozen_epochs = _frozen_epochs(params.finetune, training.epochs)
    fingerprint = json.dumps(
        {
            "kind": kind,
            "n_outputs": n_outputs,
            "params": params.to_dict(),
            "backbone": _backbone_settings(spec, params.backbone, weights) if params.backbone else None,
            "seed": training.seed,
            "epochs": training.epochs,
            "batch_size": batch_size,
            "recipe": RECIPE,
            "data": data,
        },
        sort_keys=True,
    )
    return _Plan(
        kind=kind,
        n_outputs=n_outputs,
        params=params,
        weights=weights,
        n_train=n_train,
        channels=channels,
        size=size,
        spatial_dims=dims,
        batch_size=batch_size,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        warmup=warmup,
        frozen_epochs=frozen_epochs,
        fingerprint=fingerprint,
    )


def _set_up(plan: _Plan, spec: TaskSpec, Xt: torch.Tensor, yt: torch.Tensor, device: str) -> _Run:
    """The seeded model normalised on the training images, its loss, optimiser and schedule, the weights' average
    and the generators of shuffling and augmentation."""
    cuda = device.startswith("cuda")
    training = spec.training
    torch.manual_seed(training.seed)
    model = _new_model(plan.params, spec, plan.weights, plan.channels, plan.n_outputs, plan.size, plan.spatial_dims)
    mean, std = _channel_stats(Xt)
    model.set_normalisation(mean, std)
    model = model.to(device)
    if cuda or (plan.params.width or 64) <= 32:  # measured faster on CPU at widths 16 / 32, slower at 64
        model = _in_layout(model, plan.spatial_dims + 2, cuda)
    loss_fn = _loss_fn(yt, plan.kind, plan.n_outputs).to(device)
    frozen_steps = plan.frozen_epochs * plan.steps_per_epoch
    optimizer, scheduler = _optimizer(model, plan.params, plan.total_steps, plan.warmup, frozen_steps)
    decay = ema_decay(plan.steps_per_epoch)
    ema = _averaged(model, decay)
    shuffle_gen = torch.Generator().manual_seed(training.seed)
    aug_gen = torch.Generator().manual_seed(training.seed + 1)
    return _Run(model, ema, optimizer, scheduler, shuffle_gen, aug_gen, loss_fn, mean, std, decay)


def _resume(run: _Run, out_dir: Path, fingerprint: str, training: TrainingSpec) -> int:
    """Load ``out_dir``'s checkpoint into ``run`` when it is for this data and these settings; the epoch it
    resumes after (0: training afresh)."""
    resumed_from = 0
    ckpt_path = out_dir / CHECKPOINT
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if ckpt.get("fingerprint") == fingerprint:
            run.model.load_state_dict(ckpt["model"])
            run.ema.load_state_dict(ckpt["ema"])
            run.optimizer.load_state_dict(ckpt["optimizer"])
            run.scheduler.load_state_dict(ckpt["scheduler"])
            run.shuffle_gen.set_state(ckpt["shuffle_rng"])
            run.aug_gen.set_state(ckpt["aug_rng"])
            torch.set_rng_state(ckpt["torch_rng"])
            run.state = dict(ckpt["state"])
            run.history = list(ckpt["history"])
            run.best_state = ckpt["best_state"]
            run.finished = bool(ckpt["finished"])
            run.stopped = str(ckpt.get("stopped", "epochs"))
            resumed_from = int(run.state["epoch"])
            if run.finished and run.stopped == "time_budget" and run.state["elapsed"] < training.time_budget_s:
                run.finished = run.state["epoch"] >= training.epochs  # called again with more time: carry on
            log.info("resuming image training in %s after epoch %d", out_dir, resumed_from)
        else:
            log.warning("%s: checkpoint is for other data or settings; training afresh", ckpt_path)
    return resumed_from


def _save_checkpoint(run: _Run, ckpt_path: Path, fingerprint: str) -> None:
    ckpt = {
        "fingerprint": fingerprint,
        "model": {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
        "ema": {k: v.detach().cpu() for k, v in run.ema.state_dict().items()},
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "shuffle_rng": run.shuffle_gen.get_state(),
        "aug_rng": run.aug_gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "state": run.state,
        "history": run.history,
        "best_state": run.best_state,
        "finished": run.finished,
        "stopped": run.stopped,
    }
    atomic_write(ckpt_path, lambda tmp: torch.save(ckpt, tmp))


def _train_epochs(
    run: _Run,
    plan: _Plan,
    training: TrainingSpec,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    device: str,
    out_dir: Path,
    on_epoch_end: Callable[[int, dict], None] | None,
) -> None:
    """The epochs left: train, validate the average, keep the best, checkpoint; until the epochs, the patience
    (early stopping on validation AUROC) or the time budget (summed over resumed runs) run out."""
    (Xt, yt), (Xv, yv) = train, val
    run_start = time.perf_counter()
    elapsed_before = float(run.state["elapsed"])

    def over_budget() -> bool:
        return elapsed_before + (time.perf_counter() - run_start) > training.time_budget_s

    epoch = int(run.state["epoch"])
    while not run.finished and epoch < training.epochs:
        epoch += 1
        _set_trainable(run.model, frozen=epoch <= plan.frozen_epochs)
        t_epoch = time.perf_counter()
        total_loss, seen, cut = _train_one_epoch(run, plan, Xt, yt, device, over_budget)
        train_seconds = time.perf_counter() - t_epoch
        p_val = _predict(run.ema.module, Xv, plan.kind, device)
        auroc = macro_auroc(yv.numpy(), p_val, plan.kind) if len(Xv) else float("nan")
        row = {
            "epoch": epoch,
            "train_loss": total_loss / max(1, seen),
            "val_auroc": auroc,
            "lr": float(run.optimizer.param_groups[0]["lr"]),
            "train_seconds": train_seconds,
            "images_per_second": seen / train_seconds if train_seconds > 0 else float("nan"),
            "seconds": time.perf_counter() - t_epoch,
        }
        run.history.append(row)
        if not math.isnan(auroc) and auroc > run.state["best_auroc"] + 1e-6:
            run.state.update(best_auroc=auroc, best_epoch=epoch, bad_epochs=0)
            run.best_state = _weights(run.ema.module)
        else:
            run.state["bad_epochs"] += 1
        run.state["epoch"] = epoch
        run.state["elapsed"] = elapsed_before + (time.perf_counter() - run_start)
        _fit_schedule_to_budget(run, plan.steps_per_epoch, training.time_budget_s)
        log.info(
            "image epoch %d: loss %.4f val AUROC %.4f (%.0f img/s)",
            epoch,
            row["train_loss"],
            auroc,
            row["images_per_second"],
        )
        if cut or over_budget():
            run.finished, run.stopped = True, "time_budget"
        elif run.state["bad_epochs"] >= training.patience:
            run.finished, run.stopped = True, "early_stopping"
        elif epoch >= training.epochs:
            run.finished, run.stopped = True, "epochs"
        _save_checkpoint(run, out_dir / CHECKPOINT, plan.fingerprint)
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)


def _train_one_epoch(
    run: _Run, plan: _Plan, Xt: torch.Tensor, yt: torch.Tensor, device: str, over_budget: Callable[[], bool]
) -> tuple[float, int, bool]:
    """One pass over the shuffled, augmented training images, the average updated after every step: (summed loss,
    images seen, whether the time budget cut it short)."""
    cuda = device.startswith("cuda")
    augment = list(plan.params.augment)
    batch_size, n_train = plan.batch_size, plan.n_train
    perm = torch.randperm(n_train, generator=run.shuffle_gen)
    batches = [perm[i : i + batch_size] for i in range(0, n_train, batch_size)]
    if len(batches) > 1 and len(batches[-1]) < 2:  # BatchNorm cannot train on a batch of one
        batches = batches[:-1]
    total_loss, seen, cut = 0.0, 0, False
    for xb, yb in _iterate(Xt, yt, batches, device):
        xb = xb.to(device, non_blocking=cuda)
        yb = yb.to(device, non_blocking=cuda)
        xb = augment_batch(xb, augment, run.aug_gen).contiguous(memory_format=_memory_format(xb.ndim, cuda))
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            logits = run.model(xb)
        loss = run.loss_fn(logits.float(), yb)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        run.scheduler.step()
        run.ema.update_parameters(run.model)
        total_loss += float(loss.detach()) * len(xb)
        seen += len(xb)
        if over_budget():
            cut = True
            break
    return total_loss, seen, cut


def _save_model(run: _Run, plan: _Plan, out_dir: Path, device: str, threads: int, seed: int) -> dict:
    """Write the best epoch's averaged weights (``model.pt``) and ``model.json``; returns model.json's content."""
    cuda = device.startswith("cuda")
    state = run.state
    best_state = run.best_state
    if best_state is None:  # no usable validation AUROC: keep the last (averaged) weights
        best_state = _weights(run.ema.module)
        state["best_epoch"] = int(state["epoch"])
    architecture = TIMM if plan.params.backbone else "ResNet18Small"
    final = build_image_model(architecture, run.model.config.to_dict())
    final.load_state_dict(best_state)
    config = {
        "architecture": architecture,
        "model_config": final.config.to_dict(),
        "hyperparameters": plan.params.to_dict(),
        "weights": _weights_origin(plan.weights),
        "kind": plan.kind,
        "n_outputs": plan.n_outputs,
        "input_size": plan.size,
        "channels": plan.channels,
        "spatial_dims": plan.spatial_dims,
        "normalisation": {"input_range": [0.0, 1.0], "mean": run.mean, "std": run.std, "applied_inside_model": True},
        "ema_decay": run.decay,
        "best_epoch": int(state["best_epoch"]),
        "best_val_auroc": float(state["best_auroc"]) if state["best_auroc"] != float("-inf") else None,
        "stopped": run.stopped,
        "epochs_run": int(state["epoch"]),
        "seed": seed,
        "device": device,
        "cpu_threads": threads if not cuda else None,
        "torch_version": torch.__version__,
    }
    atomic_write(out_dir / MODEL_PT, lambda tmp: torch.save(final.state_dict(), tmp))
    atomic_write_json(out_dir / MODEL_JSON, config)
    return config


# ------------------------------------------------------------------------------------------------ inference


def build_image_model(architecture: str, model_config: dict) -> nn.Module:
    """The randomly initialised model a model.json describes (timm's are built offline, without weights)."""
    if architecture == "ResNet18Small":
        return build_model(model_config)
    if architecture == TIMM:
        from meddiag_pipelines.imaging.backbones import build_timm_classifier

        return build_timm_classifier(model_config)
    raise ValueError(f"unknown architecture {architecture!r}")


def load_image_model(model_dir: Path, device: str | None = None) -> tuple[nn.Module, dict]:
    """The trained model (eval mode, on ``device``) and its model.json. Its forward takes (N, C, S, S) floats in
    [0, 1] (normalisation and any resizing happen inside) and gives logits."""
    model_dir = Path(model_dir)
    meta = json.loads((model_dir / MODEL_JSON).read_text(encoding="utf-8"))
    if meta.get("architecture") not in ("ResNet18Small", TIMM):
        raise ValueError(f"{model_dir}: unknown architecture {meta.get('architecture')!r}")
    model = build_image_model(meta["architecture"], meta["model_config"])
    model.load_state_dict(torch.load(model_dir / MODEL_PT, map_location="cpu", weights_only=True))
    model = model.to(device or torch_device()).eval()
    return model, meta


def predict_image_model(model_dir: Path, X: np.ndarray, device: str | None = None) -> np.ndarray:
    """Probabilities: binary (n,) P(positive); multiclass (n, k) softmax; multilabel (n, k) sigmoid."""
    device = device or torch_device()
    model, meta = load_image_model(model_dir, device)
    dims = int(meta.get("spatial_dims", 2))
    if device.startswith("cuda"):
        model = _in_layout(model, dims + 2, True)
    X = _as_tensor(X)
    if X.shape[1:] != (meta["channels"], *(meta["input_size"],) * dims):
        raise ValueError(
            f"inputs {tuple(X.shape[1:])} do not match the model's input {meta['channels']}x{meta['input_size']}^{dims}"
        )
    with torch_settings(device, deterministic=False):
        return _predict(model, X, meta["kind"], device)


def embed_image_model(model_dir: Path, X: np.ndarray, device: str | None = None) -> np.ndarray:
    """(n, d) float32 embeddings: the pooled features the classifier reads (no test-time flip)."""
    device = device or torch_device()
    model, _ = load_image_model(model_dir, device)
    X, outs = _as_tensor(X), []
    step = batch_for(tuple(X.shape[1:]))
    with torch_settings(device, deterministic=False), torch.no_grad():
        for start in range(0, len(X), step):
            xb = X[start : start + step].to(device)
            outs.append(model.penultimate(model.features(xb)).float().cpu())
    return torch.cat(outs).numpy() if outs else np.empty((0, 0), dtype=np.float32)


__all__ = [
    "ImageParams",
    "ImageTrainResult",
    "build_image_model",
    "default_params",
    "embed_image_model",
    "augment_batch",
    "batch_for",
    "choose_width",
    "load_image_model",
    "macro_auroc",
    "predict_image_model",
    "train_image_model",
]
