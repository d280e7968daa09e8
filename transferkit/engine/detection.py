"""The detection loop: the detector computes its own losses (FCOS: focal classification, GIoU regression,
centre-ness), so this loop sums them, steps AdamW under Accelerate, scores the validation images by COCO mAP
after each epoch, stops early, keeps the best weights, and writes an epoch checkpoint so a run resumes.

It mirrors :func:`transferkit.engine.loop.train` (same history, same checkpoint layout) rather than sharing it:
classification compares logits with labels, detection has neither.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..console import progress
from .loop import History, _any_process, _save_checkpoint, resume_checkpoint


@dataclass
class DetectionEpoch:
    epoch: int
    train_loss: float
    val_map: float  # COCO mAP@[.5:.95] on the validation images
    val_map50: float
    lr: float
    seconds: float
    stage: int = 0


def _better(a: DetectionEpoch, b: DetectionEpoch | None) -> bool:
    # mAP@[.5:.95] first; small validation sets tie often, then mAP@.5, then the lower training loss
    return b is None or (a.val_map, a.val_map50, -a.train_loss) > (b.val_map, b.val_map50, -b.train_loss)


def to_device(images: list[torch.Tensor], targets: list[dict] | None, device: torch.device):
    """uint8 images -> float [0, 1] on ``device`` (the detector normalises them itself)."""
    imgs = [im.to(device, non_blocking=True).float().div_(255) for im in images]
    if targets is None:
        return imgs, None
    return imgs, [{k: v.to(device) for k, v in t.items()} for t in targets]


@torch.no_grad()
def detect(model: nn.Module, images: list[torch.Tensor], *, device: torch.device | str = "cpu",
           autocast: Callable[[], Any] | None = None, batch_size: int = 8,
           description: str | None = "detecting") -> list[dict[str, torch.Tensor]]:
    """Boxes, labels (class indices 0..K-1) and scores for uint8 images, in the pixels given, on the CPU.
    ``description=None`` shows no progress bar (validation inside a training bar)."""
    was_training = model.training
    model.eval()
    out: list[dict[str, torch.Tensor]] = []
    bar = progress()
    bar.disable = bar.disable or description is None
    with bar:
        task = bar.add_task(description or "", total=len(images), status="")
        for s in range(0, len(images), batch_size):
            batch, _ = to_device(images[s:s + batch_size], None, torch.device(device))
            if autocast is not None:
                with autocast():
                    preds = model(batch)
            else:
                preds = model(batch)
            for p in preds:
                real = p["labels"] > 0  # channel 0 is torchvision's background: never a detection
                out.append({"boxes": p["boxes"][real].float().cpu(), "labels": p["labels"][real].cpu() - 1,
                            "scores": p["scores"][real].float().cpu()})
            bar.advance(task, len(batch))
    model.train(was_training)
    return out


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
) -> tuple[History, dict[str, torch.Tensor]]:
    """Train a detector; return its history and the best epoch's weights (already loaded into ``model``).

    ``validate(model)`` returns (mAP@[.5:.95], mAP@.5) on the validation images. ``on_epoch_start(epoch)`` may
    change what trains (gradual unfreezing, frozen BatchNorm) and returns the stage number. ``deadline`` stops
    before an epoch that would not finish in time. With ``checkpoint_dir`` an epoch checkpoint is written, and an
    existing one is resumed from. Gradients are clipped to ``grad_clip`` (regression losses spike early on).
    """
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    ckpt = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None
    history, best_state = resume_checkpoint(ckpt, accelerator.unwrap_model(model), optimizer, scheduler, DetectionEpoch)
    start_epoch = len(history.epochs)
    bad_epochs = 0 if history.best_epoch < 0 else len(history.epochs) - 1 - history.best_epoch
    params = [p for g in optimizer.param_groups for p in g["params"]]
    with progress() as bar:
        task = bar.add_task(description, total=epochs, completed=start_epoch, status="")
        steps = bar.add_task("  steps", total=len(train_loader), status="")
        for epoch in range(start_epoch, epochs):
            t0 = time.monotonic()
            if hasattr(train_loader, "set_epoch"):
                train_loader.set_epoch(epoch)
            model.train()
            stage = on_epoch_start(epoch) if on_epoch_start else 0
            total, seen = 0.0, 0
            bar.reset(steps, total=len(train_loader), description=f"  epoch {epoch + 1}")
            for images, targets in train_loader:
                images, targets = to_device(images, targets, accelerator.device)
                with accelerator.autocast():
                    losses = model(images, targets)
                loss = sum(v.float() for v in losses.values())
                optimizer.zero_grad(set_to_none=True)
                accelerator.backward(loss)
                if grad_clip:
                    accelerator.clip_grad_norm_(params, grad_clip)
                optimizer.step()
                scheduler.step()
                total += loss.item() * len(images)
                seen += len(images)
                bar.update(steps, advance=1, status=f"loss {total / seen:.3f}")
            sums = accelerator.reduce(torch.tensor([total, seen], dtype=torch.float64, device=accelerator.device), "sum")
            total, seen = sums.tolist()
            val_map, val_map50 = validate(accelerator.unwrap_model(model))
            rec = DetectionEpoch(epoch, total / max(1, seen), val_map, val_map50,
                                 max(g["lr"] for g in optimizer.param_groups), time.monotonic() - t0, stage)
            history.epochs.append(rec)
            if _better(rec, history.best if history.best_epoch >= 0 else None):
                history.best_epoch = epoch
                best_state = copy.deepcopy(accelerator.unwrap_model(model).state_dict())
                bad_epochs = 0
            else:
                bad_epochs += 1
            bar.update(task, advance=1, status=f"loss {rec.train_loss:.3f} val mAP {val_map:.3f}")
            if ckpt is not None and accelerator.is_main_process:
                _save_checkpoint(ckpt, accelerator.unwrap_model(model), optimizer, scheduler, history, best_state)
            if _any_process(accelerator, bad_epochs >= patience):
                history.stopped = "early stopping"
                break
            if deadline is not None and _any_process(accelerator, time.monotonic() + rec.seconds > deadline):
                history.stopped = "time budget"
                break
    assert best_state is not None
    accelerator.unwrap_model(model).load_state_dict(best_state)
    return history, best_state

