"""``auto``: linear probe first; then, when the data and the time budget allow, fine-tune starting from that
probe's head (LP-FT, Kumar et al. 2022); keep the fine-tuned model only when it validates clearly better
(by more than one standard error of the validation accuracy), else the cheaper probe."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar


import torch

from ..console import info
from .base import FitResult, TrainTask, config_for, epochs_within_budget
from .finetune import FinetuneConfig, FinetuneStrategy
from .linear import LinearConfig, LinearStrategy


@dataclass
class AutoConfig:
    """Budget-aware choice between a linear probe and fine-tuning."""

    min_per_class: int = field(default=5, metadata={"help": "fine-tune only with at least this many training examples per class"})
    min_epochs: int = field(default=3, metadata={"help": "fine-tune only if the budget leaves time for this many epochs"})
    max_epochs: int = field(default=15, metadata={"help": "upper bound on fine-tuning epochs"})
    finetune_lr: float = field(default=5e-4, metadata={"help": "peak LR when fine-tuning from the probe's head"})

    text_defaults: ClassVar[dict[str, Any]] = {"finetune_lr": 1e-4, "max_epochs": 8}
    audio_defaults: ClassVar[dict[str, Any]] = {"max_epochs": 25}
    hf_audio_defaults: ClassVar[dict[str, Any]] = {"finetune_lr": 1e-4, "max_epochs": 8}
    speaker_defaults: ClassVar[dict[str, Any]] = {"finetune_lr": 3e-4}


class AutoStrategy:
    name = "auto"

    def __init__(self, config: AutoConfig | None = None):
        self.config = config or AutoConfig()

    def fit(self, task: TrainTask) -> FitResult:
        cfg = self.config
        t0 = time.monotonic()
        probe = LinearStrategy(config_for(LinearConfig, task.profile)).fit(task)
        candidates = {"linear": probe}
        decision = ""
        per_class = int(task.class_counts().min())
        if per_class < cfg.min_per_class:
            decision = f"linear only: {per_class} training example(s) in the smallest class (< {cfg.min_per_class})"
        else:
            # the speed is measured only under a budget; without one, fine-tuning gets max_epochs
            epochs, epoch_s = epochs_within_budget(task, cfg.max_epochs)
            speed = f" (~{epoch_s:.1f}s/epoch)" if epoch_s else ""
            if epochs < cfg.min_epochs:
                decision = f"linear only: the budget leaves {task.seconds_left():.0f}s, fine-tuning needs{speed}"
            else:
                # LP-FT: the head starts trained, so it moves at the encoder's rate
                ft_cfg = config_for(FinetuneConfig, task.profile, epochs=epochs, lr=cfg.finetune_lr, head_lr=None,
                                    warmup_epochs=0.5, dropout=0.0)
                ft = FinetuneStrategy(ft_cfg, init_head=probe.model.head, epoch_seconds=epoch_s).fit(task)
                candidates["finetune"] = ft
                decision = f"fine-tuned {len(ft.history.epochs)} epoch(s) from the probe's head{speed}"
        val_counts = torch.bincount(task.val.targets, minlength=len(task.classes)).tolist() \
            if task.balanced and not task.multi_label else None
        best_name = choose(candidates, len(task.val), val_counts)
        best = candidates[best_name]
        metric = "balanced acc" if val_counts else "acc"
        info(f"auto: {decision}; kept {best_name} (val {metric} {best.history.best.val_acc:.3f})")
        result = copy.copy(best)
        result.strategy = f"auto ({best_name})"
        # the time of everything auto did (both candidates), not only of the one it kept
        result.timings = {f"{k}_s": sum(v.timings.values()) for k, v in candidates.items()}
        result.timings["auto_overhead_s"] = time.monotonic() - t0 - sum(result.timings.values())
        result.details = {
            **best.details,
            "decision": decision,
            "chosen": best_name,
            "candidates": {k: {"val_acc": v.history.best.val_acc, "val_loss": v.history.best.val_loss,
                               "seconds": sum(v.timings.values())} for k, v in candidates.items()},
        }
        return result


def choose(candidates: dict[str, FitResult], n_val: int, val_counts: list[int] | None = None) -> str:
    """Keep the linear probe unless fine-tuning validates better by more than the validation noise.

    With 20 validation images one image is 5 points of accuracy: a fine-tuned model that wins by one image
    is not shown to be better, and the probe is cheaper and harder to overfit. So fine-tuning must beat the
    probe's validation accuracy by at least one standard error, sqrt(p (1 - p) / n).

    When both are right on every validation example, accuracy cannot separate them; then the validation loss
    (how confidently right) decides, and fine-tuning must at least halve it.

    With ``val_counts`` (examples per class; medical runs select by balanced accuracy, the mean of per-class
    recalls), the standard error is that of a mean of recalls, (1/K) sqrt(sum r (1 - r) / n_c), at least one
    example of the smallest class: one minority example moves balanced accuracy far more than one in n.
    """
    lin = candidates["linear"].history.best
    if "finetune" not in candidates:
        return "linear"
    ft = candidates["finetune"].history.best
    if lin.val_acc == 1.0 and ft.val_acc == 1.0:
        return "finetune" if ft.val_loss <= 0.5 * lin.val_loss else "linear"
    if val_counts:
        present = [n for n in val_counts if n > 0]
        r = lin.val_acc
        se = max(sum(r * (1 - r) / n for n in present) ** 0.5 / len(present), 1.0 / (len(present) * min(present)))
    else:
        se = max((lin.val_acc * (1 - lin.val_acc) / max(1, n_val)) ** 0.5, 1.0 / max(1, n_val))
    return "finetune" if ft.val_acc >= lin.val_acc + se - 1e-9 else "linear"
