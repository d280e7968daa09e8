"""``linear``: the backbone stays frozen; its features are extracted once (and cached on disk), then a
:class:`~transferkit.heads.probe.LogisticProbe` is fitted on them: standardised features, logistic regression
with its L2 strength chosen by stratified k-fold cross-validation, refitted on every training example. Seconds
on a CPU, and the strongest choice with very few labels.

Without a validation split (small data, see :func:`transferkit.fit`) the probe's score is estimated by repeated
k-fold cross-validation around the whole fit (C chosen again inside each fold, so the estimate does not see the
examples it scores)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from ..engine.features import extract_features
from ..engine.loop import EpochRecord, History
from ..heads import Classifier
from ..heads.probe import LogisticProbe
from ..errors import check_number
from .base import PROBE_FOLDS, CrossValidation, FitResult, TrainTask, probs_loss, probs_score
from .space import Range


@dataclass
class LinearConfig:
    """Linear probe on cached features."""

    scoring: str = field(default="log_loss", metadata={"help": "what chooses C across folds: log_loss or accuracy"})
    class_weight: str = field(default="auto", metadata={"help": "auto (as the run's --balance: balanced with weights "
                                                                "or sampler, else none), balanced or none"})
    repeats: int = field(default=3, metadata={"help": "repeats of the k-fold cross-validation that estimates the score "
                                                      "when no validation split is held out"})
    cache: bool = field(default=True, metadata={"help": "cache features on disk, keyed by "
                                                        "backbone+preprocessing+file content"})
    c: float | None = field(default=None, metadata={"help": "inverse L2 strength of the logistic regression (None: "
                                                           "chosen by cross-validation from 13 values, 1e-4 to 1e2)"})

    # what `transferkit search` tries (transferkit.strategies.space): the probe's C, over the same span its own
    # cross-validation chooses from, and the loss that chooses nothing then
    search_space: ClassVar[dict[str, Any]] = {"c": Range(1e-4, 1e2, log=True),
                                              "class_weight": ("none", "balanced")}

    def __post_init__(self) -> None:
        from ..errors import TransferkitError

        if self.scoring not in ("log_loss", "accuracy"):
            raise TransferkitError(f"scoring {self.scoring!r} is unknown: choose log_loss or accuracy.")
        if self.class_weight not in ("auto", "balanced", "none"):
            raise TransferkitError(f"class_weight {self.class_weight!r} is unknown: choose auto, balanced or none.")
        if not isinstance(self.repeats, int) or self.repeats < 1:
            raise TransferkitError(f"repeats must be 1 or more (got {self.repeats!r}).")
        if self.c is not None:
            check_number("c", self.c, low=0, low_open=True, high=1e6, example="1.0")


def make_probe(task: TrainTask, cfg: LinearConfig, seed: int | None = None) -> LogisticProbe:
    """The probe for this task: its class weights follow the run's balance (a class-weighted loss or balanced
    sampling weigh classes, ``none`` does not), unless the config names a rule of its own."""
    weight = cfg.class_weight if cfg.class_weight != "auto" or task.balance is None else \
        "balanced" if task.balance in ("weights", "sampler") else "none"
    grid = {} if cfg.c is None else {"Cs": (float(cfg.c),)}  # one C: nothing left to cross-validate
    return LogisticProbe(**grid, cv=task.cv or PROBE_FOLDS, scoring=cfg.scoring,
                         class_weight=None if weight == "none" else weight, seed=task.seed if seed is None else seed)


def fit_probe(features: torch.Tensor, task: TrainTask, cfg: LinearConfig, idx: Any = None,
              seed: int | None = None) -> LogisticProbe:
    """A probe on the training examples at ``idx`` (all of them by default)."""
    y = task.train.targets.numpy()
    groups = task.groups
    if idx is not None:
        features, y = features[idx], y[idx]
        groups = [groups[i] for i in idx] if groups is not None else None
    probe = make_probe(task, cfg, seed).fit(features, y, num_classes=len(task.classes), groups=groups)
    if task.start is not None and not probe.multi_label_:
        keep_bundle_rows(probe, task.start, np.bincount(y, minlength=len(task.classes)))
    return probe


def keep_bundle_rows(probe: LogisticProbe, start: Any, counts: np.ndarray) -> None:
    """A run from a bundle (``--init-from``): each bundle class without a training example here keeps the bundle's
    row (its logit on these same features), instead of a row fitted to never fire; so the class stays predictable
    and every score of the probe (folds included) sees the same model that is saved."""
    w, b = start.head.fc.weight.detach().double().numpy(), start.head.fc.bias.detach().double().numpy()
    for k in start.kept:
        if counts[k] == 0:  # on standardised features z = (x - mean) / scale: w.x + b = (w * scale).z + (w.mean + b)
            probe.coef_[k] = w[k] * probe.scale_
            probe.intercept_[k] = w[k] @ probe.mean_ + b[k]


def cross_validate_probe(features: torch.Tensor, task: TrainTask, cfg: LinearConfig) -> CrossValidation:
    """Out-of-fold probabilities of every training example, ``cfg.repeats`` times over ``task.cv`` folds
    (averaged), each from a probe that chose its own C without that fold."""
    y = task.train.targets.numpy()
    runs, scores = [], []
    # beyond a few hundred examples one round of folds is already a steady estimate, and each costs a minute
    repeats = cfg.repeats if len(y) <= 500 else 1
    for r in range(repeats):
        probs = np.zeros((len(y), len(task.classes)))
        for tr, va in task.folds(seed=task.seed + r):
            probe = fit_probe(features, task, cfg, tr, seed=task.seed + r)
            probs[va] = probe.predict_proba(features[va])
            scores.append(probs_score(probs[va], y[va], task.balanced))
        runs.append(probs)
    # the first round's predictions are scored (averaging the rounds would score an ensemble, softer and better
    # than the single final model); the other rounds add their fold scores to the spread
    return CrossValidation(probs=runs[0], folds=len(scores) // repeats, repeats=repeats, fold_scores=scores,
                           method="linear probe, C chosen again inside each fold")


class LinearStrategy:
    name = "linear"

    def __init__(self, config: LinearConfig | None = None):
        self.config = config or LinearConfig()

    def fit(self, task: TrainTask) -> FitResult:
        cfg = self.config
        acc = task.accelerator
        t0 = time.monotonic()
        # cache features: the backbone is frozen, so one pass over each example is all the probe needs
        ftr, hit_tr = extract_features(task.backbone, task.train, acc, cache=cfg.cache, description="features (train)")
        fva, hit_va = (extract_features(task.backbone, task.val, acc, cache=cfg.cache, description="features (val)")
                       if task.val is not None else (None, True))
        self.features_ = (ftr, fva)  # auto reuses them for its fold probes
        t_feat = time.monotonic() - t0
        t1 = time.monotonic()
        probe = fit_probe(ftr, task, cfg)
        cv = cross_validate_probe(ftr, task, cfg) if task.cross_validated else None
        y = task.train.targets.numpy()
        p_train = probe.predict_proba(ftr)
        if fva is not None:
            p_val, y_val = probe.predict_proba(fva), task.val.targets.numpy()
        else:  # the cross-validated estimate stands where a validation score would
            p_val, y_val = cv.probs, y
        if cv is not None:
            cv.chosen = {"strategy": "linear", "C": probe.C_}
        seconds = time.monotonic() - t1
        # one "epoch": the probe is solved exactly, so there is no curve, only where it ended
        history = History([EpochRecord(0, probs_loss(p_train, y), probs_score(p_train, y, task.balanced),
                                       probs_loss(p_val, y_val), probs_score(p_val, y_val, task.balanced),
                                       0.0, seconds, 0, time.time())], best_epoch=0)
        head = probe.to_head()
        return FitResult(
            model=Classifier(task.backbone, head),
            strategy=self.name,
            history=history,
            trainable_params=sum(p.numel() for p in head.parameters()),
            timings={"features_s": t_feat, "train_s": seconds},
            details={"feature_cache_hit": bool(hit_tr and hit_va), "config": cfg.__dict__, "probe": probe.summary()},
            cv=cv,
        )
