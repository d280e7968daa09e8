"""Detection training: the detector computes its own losses (FCOS: focal classification, GIoU regression,
centre-ness), so the step sums them; the validation images are scored by COCO mAP after each epoch. The engine
(:func:`transferkit.engine.trainer.fit`) runs the epochs, early stopping, best weights and checkpoints, as it does
for classification. Also :func:`detect`, inference on uint8 images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..console import progress
from .trainer import History, fit


@dataclass
class DetectionEpoch:
    epoch: int
    train_loss: float
    val_map: float  # COCO mAP@[.5:.95] on the validation images
    val_map50: float
    lr: float
    seconds: float
    stage: int = 0


def better(a: DetectionEpoch, b: DetectionEpoch | None) -> bool:
    """Whether epoch ``a`` beats the best so far ``b`` (None: ``a`` is the first)."""
    # mAP@[.5:.95] first; small validation sets tie often, then mAP@.5, then the lower training loss
    return b is None or (a.val_map, a.val_map50, -a.train_loss) > (b.val_map, b.val_map50, -b.train_loss)


def to_device(images: list[torch.Tensor], targets: list[dict] | None, device: torch.device):
    """uint8 images -> float [0, 1] on ``device`` (the detector normalises them itself)."""
    imgs = [im.to(device, non_blocking=True).float().div_(255) for im in images]
    if targets is None:
        return imgs, None
    return imgs, [{k: v.to(device) for k, v in t.items()} for t in targets]


def canvas_batches(images: list[torch.Tensor], batch_size: int, divisible: int = 32) -> list[list[int]]:
    """Positions of ``images`` in batches of at most ``batch_size`` whose images share one padded canvas (height and
    width rounded up to ``divisible``, as torchvision pads a batch): an image's detections then do not depend on
    which other images share its batch (a larger canvas changes what the network sees near its edges), and equal
    the exported detector's, which runs each image on its own canvas."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        h, w = im.shape[-2:]
        groups.setdefault((-(-h // divisible), -(-w // divisible)), []).append(i)
    return [g[s:s + batch_size] for g in groups.values() for s in range(0, len(g), batch_size)]


@torch.no_grad()
def detect(model: nn.Module, images: list[torch.Tensor], *, device: torch.device | str = "cpu",
           autocast: Callable[[], Any] | None = None, batch_size: int = 8,
           description: str | None = "detecting") -> list[dict[str, torch.Tensor]]:
    """Boxes, labels (class indices 0..K-1) and scores for uint8 images, in the pixels given, on the CPU; images
    are batched with others of the same padded canvas (:func:`canvas_batches`). ``description=None`` shows no
    progress bar (validation inside a training bar)."""
    was_training = model.training
    model.eval()
    out: list[dict[str, torch.Tensor] | None] = [None] * len(images)
    divisible = int(getattr(getattr(getattr(model, "model", None), "transform", None), "size_divisible", 32))
    bar = progress()
    bar.disable = bar.disable or description is None
    with bar:
        task = bar.add_task(description or "", total=len(images), status="")
        for positions in canvas_batches(images, batch_size, divisible):
            batch, _ = to_device([images[i] for i in positions], None, torch.device(device))
            if autocast is not None:
                with autocast():
                    preds = model(batch)
            else:
                preds = model(batch)
            for i, p in zip(positions, preds, strict=True):
                real = p["labels"] > 0  # channel 0 is torchvision's background: never a detection
                out[i] = {"boxes": p["boxes"][real].float().cpu(), "labels": p["labels"][real].cpu() - 1,
                          "scores": p["scores"][real].float().cpu()}
            bar.advance(task, len(batch))
    model.train(was_training)
    return out  # type: ignore[return-value]


class Detection:
    """The detection :class:`~transferkit.engine.trainer.Method`: the detector's own losses summed, COCO mAP on the
    validation images after each epoch, and the best epoch by mAP@[.5:.95], then mAP@.5, then training loss."""

    record = DetectionEpoch

    def __init__(self, accelerator, validate: Callable[[nn.Module], tuple[float, float]],
                 penalty: Callable[[], torch.Tensor] | None = None):
        self.accelerator, self.validate = accelerator, validate
        self.penalty = penalty  # added to every step's loss (L2-SP)
        self.better = better

    def start_epoch(self, epoch: int) -> None:
        pass

    def step(self, model: nn.Module, batch) -> tuple[torch.Tensor, int]:
        images, targets = to_device(*batch, self.accelerator.device)
        losses = model(images, targets)
        loss = sum(v.float() for v in losses.values())
        if self.penalty is not None:
            term = self.penalty()
            self.added = float(term.detach())  # the engine records the detector's own losses without it
            loss = loss + term
        return loss, len(images)

    def train_scores(self, seen: float) -> dict[str, float]:
        return {}

    def evaluate(self, model: nn.Module, epoch: int) -> tuple[dict[str, float], str | None]:
        val_map, val_map50 = self.validate(self.accelerator.unwrap_model(model))
        return {"val_map": val_map, "val_map50": val_map50}, None

    def status(self, rec: DetectionEpoch) -> str:
        return f"loss {rec.train_loss:.3f} val mAP {rec.val_map:.3f}"


def train_detector(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    train_loader: DataLoader,
    validate: Callable[[nn.Module], tuple[float, float]],
    accelerator,
    *,
    epochs: int,
    patience: int = 8,
    on_epoch_start: Callable[[int], int] | None = None,
    deadline: float | None = None,
    grad_clip: float = 10.0,
    checkpoint_dir: str | Path | None = None,
    description: str = "training",
    penalty: Callable[[], torch.Tensor] | None = None,
) -> tuple[History, dict[str, torch.Tensor]]:
    """Train a detector; return its history and the best epoch's weights (already loaded into ``model``):
    :func:`transferkit.engine.trainer.fit` with the :class:`Detection` method.

    ``validate(model)`` returns (mAP@[.5:.95], mAP@.5) on the validation images. ``on_epoch_start(epoch)`` may
    change what trains (gradual unfreezing, frozen BatchNorm) and returns the stage number. ``deadline`` stops
    before an epoch that would not finish in time. With ``checkpoint_dir`` an epoch checkpoint is written, and an
    existing one is resumed from. Gradients are clipped to ``grad_clip`` (regression losses spike early on).
    ``penalty()`` is added to each step's loss (L2-SP: :class:`transferkit.engine.optim.L2SP`).
    """
    return fit(Detection(accelerator, validate, penalty), model, optimizer, scheduler, train_loader, accelerator,
               epochs=epochs, patience=patience, deadline=deadline, on_epoch_start=on_epoch_start,
               grad_clip=grad_clip, checkpoint_dir=checkpoint_dir, description=description)
