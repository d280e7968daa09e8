"""What every strategy receives (:class:`TrainTask`) and returns (:class:`FitResult`), plus the shared data
plumbing: uint8 images in memory -> augmented, normalised batches."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..backbones.protocol import BackboneSpec, ImageBackbone, PreprocessConfig
from ..data.images import DecodedImages, normalize
from ..engine.loop import History
from ..engine.sampling import EpochShuffleSampler


@dataclass
class TrainTask:
    """Everything a strategy may use. Built once per run by :func:`transferkit.fit`."""

    spec: BackboneSpec
    backbone: ImageBackbone  # pretrained, untouched; strategies copy it before changing it
    train: DecodedImages
    val: DecodedImages
    classes: list[str]
    accelerator: Any
    seed: int = 0
    deadline: float | None = None  # time.monotonic() value; None = no budget
    work_dir: Path | None = None  # checkpoints and caches of this run
    workers: int = 0

    @property
    def preprocess(self) -> PreprocessConfig:
        return self.backbone.preprocess

    def seconds_left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()


@dataclass
class FitResult:
    model: nn.Module  # an ImageClassifier with the best weights
    strategy: str
    history: History
    trainable_params: int
    timings: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


class Strategy(Protocol):
    name: str

    def fit(self, task: TrainTask) -> FitResult: ...


class ImageTensorDataset(Dataset):
    """uint8 images held in memory; random-resized-crop and flip when ``augment`` (fine-tuning only)."""

    def __init__(self, data: DecodedImages, augment: bool = False, hflip: bool = True):
        self.pixels = data.pixels
        self.targets = data.targets
        self.transform = None
        if augment:
            from torchvision.transforms import v2

            size = tuple(self.pixels.shape[-2:])
            ops = [v2.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True)]
            if hflip:
                ops.append(v2.RandomHorizontalFlip())
            self.transform = v2.Compose(ops)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pixels[i]
        if self.transform is not None:
            x = self.transform(x)
        return x, self.targets[i]


def image_loaders(task: TrainTask, batch_size: int, augment: bool, hflip: bool = True) -> tuple[DataLoader, DataLoader]:
    # With a few dozen images, a full batch would mean two or three steps per epoch: keep about eight or more.
    bs = max(1, min(batch_size, max(8, len(task.train) // 8), len(task.train)))
    train = DataLoader(
        ImageTensorDataset(task.train, augment, hflip), batch_size=bs, sampler=EpochShuffleSampler(len(task.train), task.seed),
        drop_last=len(task.train) > bs, num_workers=task.workers,
    )
    val = DataLoader(ImageTensorDataset(task.val), batch_size=max(bs, 64), num_workers=task.workers)
    return train, val


def image_prepare(pre: PreprocessConfig):
    """Batch of uint8 images -> normalised float in channels_last (faster convolutions on CPU and GPU)."""

    def prepare(x: torch.Tensor) -> torch.Tensor:
        return normalize(x, pre).contiguous(memory_format=torch.channels_last)

    return prepare


def estimate_epoch_seconds(task: TrainTask, batch: int = 16) -> float:
    """Time one forward+backward step on a copy of the backbone and scale to an epoch (plus validation)."""
    model = copy.deepcopy(task.backbone).train().to(memory_format=torch.channels_last)
    prepare = image_prepare(task.preprocess)
    x = prepare(task.train.pixels[:batch])
    acc = task.accelerator
    times = []
    for _ in range(2):  # the first step warms up kernels; time the second
        t = time.monotonic()
        with acc.autocast():
            loss = model(x).float().mean()
        loss.backward()
        times.append(time.monotonic() - t)
    per_image = times[-1] / len(x)
    # validation costs about a third of a training step per image
    return per_image * (len(task.train) + len(task.val) / 3)


def epochs_within_budget(
    task: TrainTask,
    wanted: int,
    per_epoch: float | None = None,
    relative_cost: Callable[[int], float] | None = None,
) -> tuple[int, float | None]:
    """Shorten the run so it ends inside the time budget with its LR schedule complete.

    Without a budget, ``wanted``. With one, as many epochs as the measured speed allows (at least one), so
    the cosine schedule reaches its end instead of being cut at a high learning rate. ``relative_cost(epoch)``
    scales the cost of a full fine-tuning epoch (gradual unfreezing's early epochs are cheaper).
    """
    if task.deadline is None:
        return wanted, per_epoch
    per_epoch = per_epoch or estimate_epoch_seconds(task)
    room = 0.9 * task.seconds_left()
    spent, epochs = 0.0, 0
    while epochs < wanted:
        spent += per_epoch * (relative_cost(epochs) if relative_cost else 1.0)
        if spent > room:
            break
        epochs += 1
    return max(1, epochs), per_epoch
