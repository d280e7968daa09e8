"""Classification training: the loss, the scores and the per-epoch validation of a classifier, run by the engine
(:func:`transferkit.engine.trainer.fit`), which owns the epochs, early stopping, the best weights, checkpoints and
Accelerate. :func:`train` is the entry point the strategies call."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.utils.data import DataLoader

from .trainer import History, fit


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


def better(a: EpochRecord, b: EpochRecord | None) -> bool:
    """Whether epoch ``a`` beats the best so far ``b`` (None: ``a`` is the first)."""
    # Accuracy first; on a tie (common with small validation sets) the lower validation loss wins.
    return b is None or a.val_acc > b.val_acc or (a.val_acc == b.val_acc and a.val_loss < b.val_loss)


def score(logits: torch.Tensor, y: torch.Tensor, multi_label: bool, balanced: bool = False) -> float:
    """Single-label: accuracy, or with ``balanced`` the mean recall over the classes present (balanced accuracy:
    a classifier that always says "healthy" scores 0.5, not the prevalence). Multi-label: mAP (exact-match
    accuracy is too coarse to steer training, and F1 depends on thresholds tuned only after training)."""
    if multi_label:
        from ..evaluation.metrics import mean_average_precision

        return mean_average_precision(y.cpu().numpy() > 0.5, logits.float().cpu().numpy())
    right = logits.argmax(1) == y
    if balanced:
        return torch.stack([right[y == c].float().mean() for c in torch.unique(y)]).mean().item()
    return right.float().mean().item()


def classification_loss(logits: torch.Tensor, y: torch.Tensor, multi_label: bool, label_smoothing: float = 0.0,
                        weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy (``weight``: per class; ``label_smoothing``), or binary cross-entropy per class when
    ``multi_label`` (``weight``: each label's positive weight)."""
    if weight is not None:
        weight = weight.to(logits.device, logits.dtype)
    if multi_label:
        return nn.functional.binary_cross_entropy_with_logits(logits, y.float(), pos_weight=weight)
    return nn.functional.cross_entropy(logits, y, weight=weight, label_smoothing=label_smoothing)


@torch.no_grad()
def evaluate_loader(model: nn.Module, loader: DataLoader, accelerator, prepare: Callable,
                    multi_label: bool = False, aggregate: Callable | None = None,
                    balanced: bool = False, return_logits: bool = False) -> tuple:
    """Mean loss and accuracy (``balanced``: balanced accuracy; multi-label: mAP) over ``loader``, gathered
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
    loss, acc = classification_loss(logits, targets, multi_label).item(), score(logits, targets, multi_label, balanced)
    return (loss, acc, logits.cpu(), targets.cpu()) if return_logits else (loss, acc)


class Classification:
    """The classification :class:`~transferkit.engine.trainer.Method`: cross-entropy (or one sigmoid per class) on
    logits, training accuracy (balanced accuracy, mAP) as the running metric, validation loss and accuracy per
    epoch, and the best epoch by accuracy, then loss. Without ``val_loader`` the last epoch is kept."""

    record = EpochRecord

    def __init__(self, accelerator, val_loader, *, prepare: Callable = lambda x: x, multi_label: bool = False,
                 label_smoothing: float = 0.0, class_weights: torch.Tensor | None = None, balanced: bool = False,
                 val_aggregate: Callable | None = None, on_validate: Callable | None = None,
                 penalty: Callable[[], torch.Tensor] | None = None):
        self.accelerator, self.val_loader, self.prepare = accelerator, val_loader, prepare
        self.penalty = penalty  # added to every step's loss (L2-SP: engine.optim.L2SP)
        self.multi_label, self.label_smoothing, self.class_weights = multi_label, label_smoothing, class_weights
        self.balanced, self.val_aggregate, self.on_validate = balanced, val_aggregate, on_validate
        # without validation no epoch is scored, so none is better: the engine keeps the last
        self.better = better if val_loader is not None else None

    def start_epoch(self, epoch: int) -> None:
        self.correct = 0.0
        self.per_class = None  # balanced: (hits, seen) per class over the epoch, not an average of batch scores
        self.outputs: list[tuple[torch.Tensor, torch.Tensor]] = []  # multi-label: the epoch's (logits, targets)

    def step(self, model: nn.Module, batch) -> tuple[torch.Tensor, int]:
        x, y = batch
        logits = model(self.prepare(x))
        loss = classification_loss(logits.float(), y, self.multi_label, self.label_smoothing, self.class_weights)
        if self.penalty is not None:
            term = self.penalty()
            self.added = float(term.detach())  # the engine records the data's loss without it
            loss = loss + term
        if self.multi_label:  # mAP over the epoch's examples, not an average of batch scores
            self.outputs.append((logits.detach().float().cpu(), y.detach().cpu()))
        elif self.balanced:
            k = logits.shape[1]
            right = logits.detach().argmax(1) == y
            counts = torch.stack([torch.bincount(y[right], minlength=k), torch.bincount(y, minlength=k)])
            self.per_class = counts.double() if self.per_class is None else self.per_class + counts.double()
        else:
            self.correct += score(logits.detach().float(), y, self.multi_label) * len(y)
        return loss, len(y)

    def train_scores(self, seen: float) -> dict[str, float]:
        acc = self.accelerator
        correct = acc.reduce(torch.tensor([self.correct], dtype=torch.float64, device=acc.device), "sum").item()
        if self.outputs:  # multi-label: each process's share scored alone, then averaged
            local = score(torch.cat([o[0] for o in self.outputs]), torch.cat([o[1] for o in self.outputs]), True)
            correct = acc.reduce(torch.tensor([local], dtype=torch.float64, device=acc.device), "mean").item() * seen
        elif self.per_class is not None:
            per_class = acc.reduce(self.per_class.to(acc.device), "sum").cpu()
            present = per_class[1] > 0
            correct = float((per_class[0][present] / per_class[1][present]).mean()) * seen
        return {"train_acc": correct / max(1, seen)}

    def evaluate(self, model: nn.Module, epoch: int) -> tuple[dict[str, float], str | None]:
        if self.val_loader is None:
            return {"val_loss": float("nan"), "val_acc": float("nan")}, None
        val_loss, val_acc, logits, targets = evaluate_loader(
            model, self.val_loader, self.accelerator, self.prepare, self.multi_label, self.val_aggregate,
            self.balanced, return_logits=True)
        verdict = self.on_validate(epoch, logits, targets) if self.on_validate is not None else None
        return {"val_loss": val_loss, "val_acc": val_acc}, verdict

    def status(self, rec: EpochRecord) -> str:
        return f"loss {rec.train_loss:.3f} val_acc {rec.val_acc:.3f}"


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
    budget: Literal["epoch", "step"] = "epoch",
    penalty: Callable[[], torch.Tensor] | None = None,
) -> tuple[History, dict[str, torch.Tensor]]:
    """Train a classifier and return its history and the best epoch's weights (already loaded into ``model``):
    :func:`transferkit.engine.trainer.fit` with the :class:`Classification` method.

    ``prepare`` turns a loader batch into model input (normalisation, channels_last). ``on_epoch_start(epoch)``
    may change what trains (gradual unfreezing) and returns the stage number recorded in the history.
    ``deadline`` (a ``time.monotonic()`` value) stops training when the next epoch would not finish in time.
    With ``checkpoint_dir`` an epoch checkpoint is written, and an existing one is resumed from.
    ``multi_label`` switches to one sigmoid per class (binary cross-entropy); the "accuracy" recorded in the
    history is then mAP (no threshold: each label's is tuned after training). ``val_aggregate`` merges validation
    rows before scoring (audio: the windows of a recording), so validation is scored per example as the final
    metrics are.
    ``class_weights`` weight the training loss per class (imbalanced data); ``balanced`` records and selects by
    balanced accuracy instead of accuracy.

    Without ``val_loader`` (cross-validation chose the epoch count; the final model trains on every label) no
    epoch is scored: validation loss and accuracy are recorded as NaN and the last epoch's weights are kept.
    ``stop_at`` ends the run after that many epochs of a schedule planned for ``epochs`` (so the final model
    sees the learning rates the cross-validation folds saw up to their chosen epoch). ``on_validate(epoch,
    logits, targets)`` sees each epoch's validation outputs; a string it returns stops training and becomes the
    history's ``stopped`` reason (e.g. a fold that cannot catch the linear probe). ``budget``: how ``deadline``
    is checked, before each epoch or after each step (see :func:`transferkit.engine.trainer.fit`). ``penalty()`` is
    added to each step's loss (L2-SP, :class:`transferkit.engine.optim.L2SP`); the training loss recorded is the
    data's alone.
    """
    if val_loader is not None:
        val_loader = accelerator.prepare(val_loader)
    method = Classification(accelerator, val_loader, prepare=prepare, multi_label=multi_label,
                            label_smoothing=label_smoothing, class_weights=class_weights, balanced=balanced,
                            val_aggregate=val_aggregate, on_validate=on_validate, penalty=penalty)
    return fit(method, model, optimizer, scheduler, train_loader, accelerator,
               epochs=min(epochs, stop_at) if stop_at is not None else epochs, patience=patience,
               deadline=deadline, on_epoch_start=on_epoch_start, checkpoint_dir=checkpoint_dir,
               description=description, budget=budget)
