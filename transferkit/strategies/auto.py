"""``auto``: linear probe first; then, when the data and the time budget allow, fine-tune starting from that
probe's head (LP-FT, Kumar et al. 2022); keep the fine-tuned model only when it validates clearly better, else
the cheaper probe.

With a validation split, "clearly better" is by more than one standard error of the validation accuracy. Without
one (small data, the default), the choice and the epoch count are made across cross-validation folds: each fold
fine-tunes from a probe fitted on that fold's training part, and is scored per epoch on its held-out part; the
comparison stops at the first fold after which fine-tuning still trails the probe, and a fold's fine-tuning stops
once a third of its epochs has not caught the probe. Fine-tuning is kept only when its mean fold score beats the
probe's, on the same folds, by more than the standard error of the paired differences."""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from ..console import info
from .base import CrossValidation, FitResult, TrainTask, config_for, epochs_within_budget, estimate_epoch_seconds
from .base import probs_loss, probs_score
from .crossval import fold_deadlines, logits_to_probs
from .finetune import FinetuneConfig, FinetuneStrategy
from .linear import LinearConfig, LinearStrategy, fit_probe


@dataclass
class AutoConfig:
    """Budget-aware choice between a linear probe and fine-tuning."""

    min_per_class: int = field(default=5, metadata={"help": "fine-tune only with at least this many training "
                                                            "examples per class"})
    min_epochs: int = field(default=3, metadata={"help": "fine-tune only if the budget leaves time for "
                                                         "this many epochs"})
    max_epochs: int = field(default=15, metadata={"help": "upper bound on fine-tuning epochs"})
    finetune_lr: float = field(default=5e-4, metadata={"help": "peak LR when fine-tuning from the probe's head"})
    finetune_folds: int = field(default=3, metadata={"help": "without a validation split: folds on which fine-tuning "
                                                             "is compared with the probe (--cv sets them too)"})
    l2sp: float = field(default=0.0, metadata={"help": "L2-SP strength when fine-tuning (see finetune's l2sp; 0: off)"})

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
        linear = LinearStrategy(config_for(LinearConfig, task.profile))
        probe = linear.fit(task)
        candidates = {"linear": probe}
        counts = task.class_counts()
        # a run from a bundle may lack some of its classes (their rows are kept): the smallest class present counts
        per_class = int(counts[counts > 0].min())
        summary: dict[str, Any] = {}
        if per_class < cfg.min_per_class:
            decision = f"linear only: {per_class} training example(s) in the smallest class (< {cfg.min_per_class})"
        elif task.cross_validated:
            decision, ft, summary = self._cross_validated(task, probe, linear)
            if ft is not None:
                candidates["finetune"] = ft
        else:
            # the speed is measured only under a budget; without one, fine-tuning gets max_epochs
            epochs, epoch_s = epochs_within_budget(task, cfg.max_epochs)
            speed = f" (~{epoch_s:.1f}s/epoch)" if epoch_s else ""
            if epochs < cfg.min_epochs:
                decision = f"linear only: the budget leaves {task.seconds_left():.0f}s, fine-tuning needs{speed}"
            else:
                ft = FinetuneStrategy(self._finetune_config(task, epochs), init_head=probe.model.head,
                                      epoch_seconds=epoch_s,
                                      on_validate=behind_probe(probe.history.best, task, epochs)).fit(task)
                candidates["finetune"] = ft
                decision = f"fine-tuned {len(ft.history.epochs)} epoch(s) from the probe's head{speed}"
                if ft.history.stopped == BEHIND:
                    best = ft.history.best
                    decision += (f", stopped: after {len(ft.history.epochs)} of {epochs} it still trailed the probe "
                                 f"(val {best.val_acc:.3f} vs {probe.history.best.val_acc:.3f}, loss "
                                 f"{best.val_loss:.3f} vs {probe.history.best.val_loss:.3f})")
        if task.cross_validated:
            best_name = "finetune" if "finetune" in candidates else "linear"
        else:
            val_counts = torch.bincount(task.val.targets, minlength=len(task.classes)).tolist() \
                if task.balanced and not task.multi_label else None
            best_name = choose(candidates, len(task.val), val_counts)
        best = candidates[best_name]
        metric = "mAP" if task.multi_label else "balanced acc" if task.balanced else "acc"
        where = "cross-validated" if task.cross_validated else "val"
        score = float(np.mean(best.cv.fold_scores)) if best.cv is not None else best.history.best.val_acc
        info(f"auto: {decision}; kept {best_name} ({where} {metric} {score:.3f})")
        result = copy.copy(best)
        result.strategy = f"auto ({best_name})"
        # the time of everything auto did (both candidates), not only of the one it kept
        result.timings = {f"{k}_s": sum(v.timings.values()) for k, v in candidates.items()}
        result.timings["auto_overhead_s"] = time.monotonic() - t0 - sum(result.timings.values())
        if result.cv is not None:
            result.cv = dataclasses.replace(result.cv, chosen={**result.cv.chosen, "strategy": best_name,
                                                               "C": probe.details["probe"]["C"]})
        result.details = {
            **best.details,
            "decision": decision,
            "chosen": best_name,
            "candidates": summary or {k: {"val_acc": v.history.best.val_acc, "val_loss": v.history.best.val_loss,
                                          "seconds": sum(v.timings.values())} for k, v in candidates.items()},
        }
        return result

    def _finetune_config(self, task: TrainTask, epochs: int) -> FinetuneConfig:
        # LP-FT: the head starts trained, so it moves at the encoder's rate
        return config_for(FinetuneConfig, task.profile, epochs=epochs, lr=self.config.finetune_lr, head_lr=None,
                          warmup_epochs=0.5, dropout=0.0, l2sp=self.config.l2sp)

    def _cross_validated(self, task: TrainTask, probe: FitResult,
                         linear: LinearStrategy) -> tuple[str, FitResult | None, dict[str, Any]]:
        """Probe vs fine-tuning (and the epoch count) across folds; the final fine-tuned model when it wins."""
        cfg = self.config
        features = linear.features_[0]
        folds = task.folds(k=task.cv or cfg.finetune_folds)
        k = len(folds)
        epoch_s = None
        epochs = cfg.max_epochs
        if task.deadline is not None:  # k folds of (k-1)/k of the data, then the final model: k full epochs a round
            epoch_s = estimate_epoch_seconds(task)
            epochs = min(cfg.max_epochs, int(0.9 * task.seconds_left() / (k * epoch_s)))
            if epochs < cfg.min_epochs:
                return (f"linear only: the budget leaves {task.seconds_left():.0f}s; comparing fine-tuning on {k} "
                        f"folds needs about {k * cfg.min_epochs * epoch_s:.0f}s (~{epoch_s:.1f}s/epoch)"), None, {}
        y = task.train.targets.numpy()
        deadline = fold_deadlines(task, k)
        probe_scores: list[float] = []
        curves: list[list[float]] = []
        fold_probs: list[list[np.ndarray]] = []
        for i, (tr, va) in enumerate(folds, 1):
            fold_probe = fit_probe(features, task, linear.config, tr)
            p_probe = fold_probe.predict_proba(features[va])
            probe_scores.append(probs_score(p_probe, y[va], task.balanced))
            per_epoch: list[np.ndarray] = []
            patience = catch_up_epochs(epochs)
            target = probe_scores[-1]

            def on_validate(epoch: int, logits: torch.Tensor, targets: torch.Tensor,
                            per_epoch=per_epoch, target=target, patience=patience) -> str | None:
                p = logits_to_probs(logits, task)
                per_epoch.append(p)
                best = max(probs_score(q, targets.numpy(), task.balanced) for q in per_epoch)
                if epoch + 1 >= patience and best < target:
                    return BEHIND
                return None

            info(f"auto: fold {i}/{k}: fine-tuning from the fold's probe (probe {target:.3f})")
            fold_task = task.fold(tr, va, deadline())
            FinetuneStrategy(self._finetune_config(task, epochs), init_head=fold_probe.to_head(),
                             epoch_seconds=epoch_s * (k - 1) / k if epoch_s else None,
                             on_validate=on_validate).fit(fold_task)
            curves.append([probs_score(p, y[va], task.balanced) for p in per_epoch])
            fold_probs.append(per_epoch)
            task.accelerator.free_memory()  # the accelerator keeps every prepared model and optimizer otherwise
            if np.mean([max(c) for c in curves]) <= np.mean(probe_scores):
                return (f"linear only: fine-tuning did not beat the probe on {'fold 1' if i == 1 else f'folds 1-{i}'} "
                        f"of {k} (best {np.mean([max(c) for c in curves]):.3f} vs "
                        f"{np.mean(probe_scores):.3f})"), None, \
                    {"linear": {"cv_score": float(np.mean(probe_scores))},
                     "finetune": {"cv_score": float(np.mean([max(c) for c in curves])), "folds_run": i}}
        longest = max(len(c) for c in curves)  # a fold stopped early keeps its last score (and predictions)
        padded = np.array([c + [c[-1]] * (longest - len(c)) for c in curves])
        mean_curve = padded.mean(0)
        best_epoch = int(np.argmax(mean_curve))
        diffs = padded[:, best_epoch] - np.array(probe_scores)
        # the folds' training parts overlap, so their differences are correlated: Nadeau and Bengio's corrected
        # variance (1/k + n_held_out/n_train); and never below one held-out example, since accuracy on a few dozen
        # examples moves in steps and identical steps would give a standard error of zero
        n_va = min(len(va) for _, va in folds)
        var = float(diffs.var(ddof=1)) if k > 1 else 0.0
        se = max((var * (1 / k + n_va / (len(y) - n_va))) ** 0.5, 1.0 / n_va)
        summary = {"linear": {"cv_score": float(np.mean(probe_scores)), "fold_scores": probe_scores},
                   "finetune": {"cv_score": float(mean_curve[best_epoch]), "epochs": best_epoch + 1,
                                "fold_scores": padded[:, best_epoch].tolist(), "curve": mean_curve.round(4).tolist()},
                   "paired_difference": float(diffs.mean()), "standard_error": se, "folds": k}
        if not (diffs.mean() > 0 and diffs.mean() >= se):
            return (f"linear only: fine-tuning ({mean_curve[best_epoch]:.3f} at epoch {best_epoch + 1}) did not beat "
                    f"the probe ({np.mean(probe_scores):.3f}) on {k} folds by more than a standard "
                    f"error ({se:.3f})"), None, \
                summary
        probs = np.zeros((len(y), len(task.classes)))
        for (_, va), per_epoch in zip(folds, fold_probs, strict=True):
            probs[va] = per_epoch[min(best_epoch, len(per_epoch) - 1)]
        info(f"auto: fine-tuning wins on {k} folds ({mean_curve[best_epoch]:.3f} vs {np.mean(probe_scores):.3f}); "
             f"final model: {best_epoch + 1} epoch(s) on all {len(y)} examples")
        final_task = dataclasses.replace(task, stop_at=best_epoch + 1, deadline=deadline())
        ft = FinetuneStrategy(self._finetune_config(task, epochs), init_head=probe.model.head,
                              epoch_seconds=epoch_s).fit(final_task)
        ft.cv = CrossValidation(probs=probs, folds=k, repeats=1, fold_scores=padded[:, best_epoch].tolist(),
                                chosen={"strategy": "finetune", "epochs": best_epoch + 1, "planned_epochs": epochs},
                                method=(f"LP-FT fine-tuning on {k} folds, each from its fold's probe; the epoch count "
                                        "and the choice over the probe were made on the same folds, so the estimate "
                                        "leans optimistic"))
        return (f"fine-tuned {best_epoch + 1} epoch(s) from the probe's head: it beat the probe on {k} folds by "
                f"{diffs.mean():.3f} (standard error {se:.3f})"), ft, summary


BEHIND = "behind the probe"  # the history's ``stopped`` when fine-tuning could not catch the probe


def catch_up_epochs(epochs: int) -> int:
    """How many epochs fine-tuning gets to catch the probe before it is stopped: a third of the planned ones, at
    least two (LP-FT's first epoch often dips while the encoder starts to move)."""
    return max(2, epochs // 3)


def behind_probe(probe: Any, task: TrainTask, epochs: int):
    """An ``on_validate`` for fine-tuning with a validation split: stop once :func:`catch_up_epochs` have passed
    and fine-tuning's best validation score so far is still below the probe's and its best validation loss still
    above it (the probe is then kept: the rest of the budget would be spent on a model that is not chosen).
    ``probe``: the probe's best :class:`~transferkit.engine.loop.EpochRecord`."""
    patience = catch_up_epochs(epochs)
    seen: list[tuple[float, float]] = []

    def on_validate(epoch: int, logits: torch.Tensor, targets: torch.Tensor) -> str | None:
        p, y = logits_to_probs(logits, task), targets.numpy()  # scored as the probe was
        seen.append((probs_score(p, y, task.balanced), probs_loss(p, y)))
        if (epoch + 1 >= patience and max(a for a, _ in seen) < probe.val_acc
                and min(loss for _, loss in seen) > probe.val_loss):
            return BEHIND
        return None

    return on_validate


def choose(candidates: dict[str, FitResult], n_val: int, val_counts: list[int] | None = None) -> str:
    """Keep the linear probe unless fine-tuning validates better by more than the validation noise.

    With 20 validation images one image is 5 points of accuracy: a fine-tuned model that wins by one image
    is not shown to be better, and the probe is cheaper and harder to overfit. So fine-tuning must beat the
    probe's validation accuracy by at least one standard error, sqrt(p (1 - p) / n).

    When both are right on every validation example, accuracy cannot separate them; then the validation loss
    (how confidently right) decides, and fine-tuning must at least halve it.

    With ``val_counts`` (examples per class; balanced runs select by balanced accuracy, the mean of per-class
    recalls), the standard error is that of a mean of recalls, (1/K) sqrt(sum r (1 - r) / n_c), at least one
    example of the smallest class: one minority example moves balanced accuracy far more than one in n.
    Multi-label runs select by mAP, for which the same margin is an approximation (a proportion's standard
    error over the validation examples).
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
