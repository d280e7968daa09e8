"""The training loop: epochs of AdamW steps under Accelerate, validation after each, early stopping, the best
weights kept, and a checkpoint per epoch so an interrupted run resumes where it stopped."""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..console import progress


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    seconds: float
    stage: int = 0
    finished_at: float = 0.0  # time.time() at the epoch's end: fit turns it into seconds since training began


@dataclass
class History:
    epochs: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = -1
    stopped: str = "completed"  # "completed", "early stopping" or "time budget"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: an epoch that was not validated (the final model of a cross-validated run) has None scores."""
        epochs = [{k: None if isinstance(v, float) and v != v else v for k, v in asdict(r).items()} for r in self.epochs]
        return {"epochs": epochs, "best_epoch": self.best_epoch, "stopped": self.stopped}

    @property
    def best(self) -> EpochRecord:
        return self.epochs[self.best_epoch]


def _better(a: EpochRecord, b: EpochRecord | None) -> bool:
    # Accuracy first; on a tie (common with small validation sets) the lower validation loss wins.
    return b is None or a.val_acc > b.val_acc or (a.val_acc == b.val_acc and a.val_loss < b.val_loss)


def multilabel_f1(logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, float, float]:
    """(true positives, false positives, false negatives) at probability 0.5, for micro-F1 = 2tp / (2tp + fp + fn)."""
    pred = logits > 0
    t = targets > 0.5
    return float((pred & t).sum()), float((pred & ~t).sum()), float((~pred & t).sum())


def _score(logits: torch.Tensor, y: torch.Tensor, multi_label: bool, balanced: bool = False) -> float:
    """Single-label: accuracy, or with ``balanced`` the mean recall over the classes present (balanced accuracy:
    a classifier that always says "healthy" scores 0.5, not the prevalence). Multi-label: micro-F1 (exact-match
    accuracy is too coarse to steer training)."""
    if multi_label:
        tp, fp, fn = multilabel_f1(logits, y)
        return 2 * tp / max(1.0, 2 * tp + fp + fn)
    right = logits.argmax(1) == y
    if balanced:
        return torch.stack([right[y == c].float().mean() for c in torch.unique(y)]).mean().item()
    return right.float().mean().item()


def _loss(logits: torch.Tensor, y: torch.Tensor, multi_label: bool, label_smoothing: float = 0.0,
          weight: torch.Tensor | None = None) -> torch.Tensor:
    if multi_label:
        return nn.functional.binary_cross_entropy_with_logits(logits, y.float())
    if weight is not None:
        weight = weight.to(logits.device, logits.dtype)
    return nn.functional.cross_entropy(logits, y, weight=weight, label_smoothing=label_smoothing)


@torch.no_grad()
def evaluate_loader(model: nn.Module, loader: DataLoader, accelerator, prepare: Callable,
                    multi_label: bool = False, aggregate: Callable | None = None,
                    balanced: bool = False, return_logits: bool = False) -> tuple:
    """Mean loss and accuracy (``balanced``: balanced accuracy; multi-label: micro-F1) over ``loader``, gathered
    across processes (in loader order). ``aggregate(logits, targets)`` may first merge rows, e.g. an audio
    recording's windows into one. ``return_logits`` adds the (aggregated) logits and targets, on the CPU."""
    model.eval()
    logits_all, targets_all = [], []
    for x, y in loader:
        with accelerator.autocast():
            logits = model(prepare(x))
        logits, y = accelerator.gather_for_metrics((logits.float(), y))
        logits_all.append(logits)
        targets_all.append(y)
    logits = torch.cat(logits_all)
    targets = torch.cat(targets_all)
    if aggregate is not None:
        logits, targets = aggregate(logits.cpu(), targets.cpu())
    loss, score = _loss(logits, targets, multi_label).item(), _score(logits, targets, multi_label, balanced)
    return (loss, score, logits.cpu(), targets.cpu()) if return_logits else (loss, score)


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    accelerator,
    *,
    epochs: int,
    patience: int = 5,
    prepare: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
    on_epoch_start: Callable[[int], int] | None = None,
    deadline: float | None = None,
    label_smoothing: float = 0.0,
    checkpoint_dir: str | Path | None = None,
    description: str = "training",
    multi_label: bool = False,
    val_aggregate: Callable | None = None,
    class_weights: torch.Tensor | None = None,
    balanced: bool = False,
    stop_at: int | None = None,
    on_validate: Callable[[int, torch.Tensor, torch.Tensor], str | None] | None = None,
) -> tuple[History, dict[str, torch.Tensor]]:
    """Train ``model`` and return its history and the best epoch's weights (already loaded into ``model``).

    ``prepare`` turns a loader batch into model input (normalisation, channels_last). ``on_epoch_start(epoch)``
    may change what trains (gradual unfreezing) and returns the stage number recorded in the history.
    ``deadline`` (a ``time.monotonic()`` value) stops training when the next epoch would not finish in time.
    With ``checkpoint_dir`` an epoch checkpoint is written, and an existing one is resumed from.
    ``multi_label`` switches to one sigmoid per class (binary cross-entropy); the "accuracy" recorded in the
    history is then micro-F1 at probability 0.5. ``val_aggregate`` merges validation rows before scoring (audio:
    the windows of a recording), so validation is scored per example as the final metrics are.
    ``class_weights`` weight the training loss per class (imbalanced data); ``balanced`` records and selects by
    balanced accuracy instead of accuracy.

    Without ``val_loader`` (cross-validation chose the epoch count; the final model trains on every label) no
    epoch is scored: validation loss and accuracy are recorded as NaN and the last epoch's weights are kept.
    ``stop_at`` ends the run after that many epochs of a schedule planned for ``epochs`` (so the final model
    sees the learning rates the cross-validation folds saw up to their chosen epoch). ``on_validate(epoch,
    logits, targets)`` sees each epoch's validation outputs; a string it returns stops training and becomes the
    history's ``stopped`` reason (e.g. a fold that cannot catch the linear probe).
    """
    if val_loader is None:
        model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    else:
        model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
            model, optimizer, train_loader, val_loader, scheduler
        )
    last = min(epochs, stop_at) if stop_at is not None else epochs
    ckpt = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None
    history, best_state = resume_checkpoint(ckpt, accelerator.unwrap_model(model), optimizer, scheduler, EpochRecord)
    start_epoch = len(history.epochs)
    bad_epochs = 0 if history.best_epoch < 0 else len(history.epochs) - 1 - history.best_epoch
    with progress() as bar:
        task = bar.add_task(description, total=last, completed=start_epoch, status="")
        steps = bar.add_task("  steps", total=len(train_loader), status="")
        for epoch in range(start_epoch, last):
            t0 = time.monotonic()
            if hasattr(train_loader, "set_epoch"):
                train_loader.set_epoch(epoch)
            model.train()
            # after .train(), so the callback can put frozen BatchNorm layers back in eval mode
            stage = on_epoch_start(epoch) if on_epoch_start else 0
            total_loss, correct, seen = 0.0, 0.0, 0
            per_class = None  # balanced: (hits, seen) per class over the epoch, not an average of batch scores
            bar.reset(steps, total=len(train_loader), description=f"  epoch {epoch + 1}")
            for x, y in train_loader:
                with accelerator.autocast():
                    logits = model(prepare(x))
                    loss = _loss(logits.float(), y, multi_label, label_smoothing, class_weights)
                optimizer.zero_grad(set_to_none=True)
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                total_loss += loss.item() * len(y)
                if balanced and not multi_label:
                    k = logits.shape[1]
                    right = logits.detach().argmax(1) == y
                    counts = torch.stack([torch.bincount(y[right], minlength=k), torch.bincount(y, minlength=k)])
                    per_class = counts.double() if per_class is None else per_class + counts.double()
                else:
                    correct += _score(logits.detach().float(), y, multi_label) * len(y)
                seen += len(y)
                bar.update(steps, advance=1, status=f"loss {total_loss / seen:.3f}")
            # sum over processes, so every rank records the same training loss and accuracy
            sums = accelerator.reduce(torch.tensor([total_loss, correct, seen], dtype=torch.float64, device=accelerator.device), "sum")
            total_loss, correct, seen = sums.tolist()
            if per_class is not None:
                per_class = accelerator.reduce(per_class.to(accelerator.device), "sum").cpu()
                present = per_class[1] > 0
                correct = float((per_class[0][present] / per_class[1][present]).mean()) * seen
            verdict = None
            if val_loader is None:
                val_loss = val_acc = float("nan")
            else:
                val_loss, val_acc, val_logits, val_targets = evaluate_loader(
                    model, val_loader, accelerator, prepare, multi_label, val_aggregate, balanced, return_logits=True)
                if on_validate is not None:
                    verdict = on_validate(epoch, val_logits, val_targets)
                    # every process leaves together (validation outputs are gathered, so they agree anyway)
                    verdict = (verdict or "stopped by the caller") if _any_process(accelerator, bool(verdict)) else None
            rec = EpochRecord(
                epoch, total_loss / max(1, seen), correct / max(1, seen), val_loss, val_acc,
                max(g["lr"] for g in optimizer.param_groups), time.monotonic() - t0, stage, time.time(),
            )
            history.epochs.append(rec)
            if val_loader is None or _better(rec, history.best if history.best_epoch >= 0 else None):
                history.best_epoch = epoch
                best_state = copy.deepcopy(accelerator.unwrap_model(model).state_dict())
                bad_epochs = 0
            else:
                bad_epochs += 1
            bar.update(task, advance=1, status=f"loss {rec.train_loss:.3f} val_acc {val_acc:.3f}")
            if ckpt is not None and accelerator.is_main_process:
                _save_checkpoint(ckpt, accelerator.unwrap_model(model), optimizer, scheduler, history, best_state)
            if verdict:
                history.stopped = verdict
                break
            if bad_epochs >= patience:
                history.stopped = "early stopping"
                break
            if deadline is not None and _any_process(accelerator, time.monotonic() + rec.seconds > deadline):
                history.stopped = "time budget"
                break
    assert best_state is not None
    accelerator.unwrap_model(model).load_state_dict(best_state)
    return history, best_state


def resume_checkpoint(ckpt: Path | None, model: nn.Module, optimizer, scheduler,
                      record: type) -> tuple[History, dict[str, torch.Tensor] | None]:
    """Load an epoch checkpoint (model, optimizer, scheduler, RNG) when ``ckpt`` exists; return the history so far
    (epochs as ``record`` dataclasses) and the best weights. A fresh history and None when there is none."""
    if ckpt is None or not ckpt.is_file():
        return History(), None
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    history = History([record(**r) for r in state["history"]["epochs"]], state["history"]["best_epoch"])
    return history, state["best"]


def _any_process(accelerator, flag: bool) -> bool:
    """True on every process when any process says so: all ranks must leave the loop together."""
    if accelerator.num_processes == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(t, "sum").item() > 0)


def _save_checkpoint(path: Path, model, optimizer, scheduler, history: History, best) -> None:
    write_checkpoint(path, {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": torch.get_rng_state(),
        "history": history.to_dict(),
        "best": best,
    })


def write_checkpoint(path: Path, state: dict) -> None:
    """``torch.save`` under a temporary name, then one rename: a crash mid-write leaves the previous checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
