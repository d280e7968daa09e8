"""Cross-validated training for the strategies that train the network (``finetune``, ``gradual``, ``scratch``,
``lora``, ``contrastive``) when no validation split is held out.

With 10 labels per class, a 15% validation split is one or two examples a class: it decides early stopping by
chance and takes labels away from training. Instead each of k folds trains the strategy with early stopping on
its own held-out part, which gives every example one out-of-fold prediction (the run's cross-validated
estimate) and each fold a best epoch; the final model then trains on every example for the folds' median best
epoch, under the same learning-rate schedule the folds had.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..console import info
from ..engine.events import notify
from .base import TRAINED_FOLDS, CrossValidation, FitResult, Strategy, TrainTask, probs_score


def predict_probs(model: torch.nn.Module, data: Any, task: TrainTask) -> np.ndarray:
    """Probabilities of a trained classifier on a decoded set (softmax, or sigmoid for multi-label)."""
    from ..engine.inference import forward_inputs

    acc = task.accelerator
    logits = forward_inputs(model, data, model.backbone.preprocess, device=acc.device, autocast=acc.autocast,
                            description="scoring the fold").float().cpu()
    model.cpu()
    return logits_to_probs(logits, task)


def logits_to_probs(logits: torch.Tensor, task: TrainTask) -> np.ndarray:
    """Softmax, or one sigmoid per class for multi-label tasks, as numpy."""
    from ..heads.linear import class_probabilities

    return class_probabilities(logits, task.multi_label).numpy()


def fold_deadlines(task: TrainTask, k: int) -> Callable[[], float | None]:
    """Each fold's deadline: what is left of the budget, shared among the folds still to run and the final model
    (a fold trains on (k-1)/k of the examples, so it gets that share of a final run's time)."""
    if task.deadline is None:
        return lambda: None
    weights = [(k - 1) / k] * k + ([] if task.estimate_only else [1.0])  # a search trial has no final model
    state = {"next": 0}

    def deadline() -> float:
        i = state["next"]
        state["next"] += 1
        left = max(0.0, task.deadline - time.monotonic())
        return time.monotonic() + left * weights[i] / sum(weights[i:])

    return deadline


class CrossValidated:
    """``make()`` builds the strategy afresh for each fold and for the final model; ``fit`` returns the final
    model's result with ``cv`` (out-of-fold probabilities, fold scores, the chosen epoch count). With a
    validation split it is the plain strategy."""

    def __init__(self, make: Callable[[], Strategy]):
        self.make = make
        inner = make()
        self.name, self.config = inner.name, getattr(inner, "config", None)

    def fit(self, task: TrainTask) -> FitResult:
        if not task.cross_validated:
            return self.make().fit(task)
        t0 = time.monotonic()
        folds = task.folds(k=task.cv or TRAINED_FOLDS)
        k = len(folds)
        y = task.train.targets.numpy()
        probs = np.zeros((len(y), len(task.classes)))
        best_epochs, planned, fold_probs = [], [], []
        deadline = fold_deadlines(task, k)
        for i, (tr, va) in enumerate(folds, 1):
            info(f"{self.name}: fold {i}/{k} ({len(tr)} train / {len(va)} held out)")
            fold_task = task.fold(tr, va, deadline())
            strategy = self.make()
            per_epoch: list[np.ndarray] = []
            if hasattr(strategy, "on_validate"):  # every epoch's held-out predictions, not only the best epoch's
                strategy.on_validate = lambda epoch, logits, targets, keep=per_epoch: keep.append(
                    logits_to_probs(logits, task))
            result = strategy.fit(fold_task)
            fold_probs.append(per_epoch or [predict_probs(result.model, fold_task.val, task)])
            best_epochs.append(result.history.best_epoch + 1)
            at_best = fold_probs[-1][min(best_epochs[-1], len(fold_probs[-1])) - 1]
            notify("fold", i, {"score": probs_score(at_best, y[va], task.balanced), "epochs": best_epochs[-1],
                               "stopped": result.history.stopped})
            planned.append(len(result.history.epochs))
            task.accelerator.free_memory()  # the accelerator keeps every prepared model and optimizer otherwise
        epochs = int(np.ceil(np.median(best_epochs)))
        # each fold scored at the epoch count the final model trains for (a fold that stopped earlier: its last),
        # not at its own best epoch, which its held-out part chose and would flatter
        scores = []
        for (_, va), per_epoch in zip(folds, fold_probs, strict=True):
            probs[va] = per_epoch[min(epochs, len(per_epoch)) - 1] if len(per_epoch) > 1 else per_epoch[0]
            scores.append(probs_score(probs[va], y[va], task.balanced))
        t_folds = time.monotonic() - t0
        if task.estimate_only:  # a search trial needs the estimate, not the final model: the last fold's stands in
            final = result
        else:
            final_task = dataclasses.replace(task, stop_at=epochs, deadline=deadline())
            info(f"{self.name}: final model on all {len(y)} examples for {epochs} epoch(s) (the folds' median best)")
            final = self.make().fit(final_task)
        final.cv = CrossValidation(probs=probs, folds=k, repeats=1, fold_scores=scores,
                                   chosen={"strategy": self.name, "epochs": epochs, "fold_best_epochs": best_epochs,
                                           "fold_epochs_run": planned},
                                   method=(f"{self.name} trained on each fold and scored at the folds' median best "
                                           "epoch, which the same folds chose, so it leans slightly optimistic"))
        final.timings = {"cv_s": t_folds, **final.timings}
        return final
