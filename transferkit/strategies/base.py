"""What every strategy receives (:class:`TrainTask`) and returns (:class:`FitResult`).

A strategy never asks what kind of data it trains on: the task that built the TrainTask hands it its batches
(:class:`Batches`: loaders, the batch -> model input function, validation aggregation), and :func:`make_loaders`,
:func:`make_prepare` and :func:`val_aggregate` here only pass the question on."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from collections.abc import Callable
from typing import Any, Literal, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..backbones.protocol import BackboneSpec
from ..engine.loop import History
from ..errors import MAX_COUNT


PROBE_FOLDS = 5  # default folds where a fold costs seconds (the probe on cached features)
TRAINED_FOLDS = 3  # default folds where a fold is a training run (fine-tuning, LoRA, scratch...)


@dataclass
class StartHead:
    """The head a run from a bundle starts with (``transferkit fit --init-from``): ``head`` has a row per class of
    this run, and ``kept`` lists the classes whose rows are the bundle's (the other rows are a fresh head's)."""

    head: nn.Module
    kept: list[int]

    def head_for(self, dropout: float = 0.0) -> nn.Module:
        """A copy of the head with ``dropout`` before it (fine-tuning's own setting)."""
        from ..heads import LinearHead

        fc = self.head.fc
        out = LinearHead(fc.in_features, fc.out_features, dropout=dropout)
        out.load_state_dict(self.head.state_dict())
        return out

    def for_training(self, task: TrainTask, dropout: float = 0.0) -> tuple[nn.Module, float]:
        """The head gradient training starts from, and the factor its weights were scaled by.

        A bundle's head can speak far louder than a new row: a linear probe folds its feature standardisation into
        its weights (row norms in the hundreds, on the directions where the features hardly vary), so a small change
        of the features (augmentation, batch statistics in training mode) moves its logits by tens, and
        cross-entropy cannot lift a new class's row, which starts near zero, in any number of epochs. So the whole
        head is divided by one factor (a temperature: the order of the old classes' logits, and so every decision
        among them, is unchanged) until (1) the old classes' logits on the new training data have a standard
        deviation of at most :data:`START_LOGIT_SPREAD`, and (2) a row's norm times the features' mean norm, the
        most a logit can move, is at most :data:`START_LOGIT_REACH`. A head trained by gradient descent is
        usually left as it is."""
        head = self.head_for(dropout)
        from ..engine.features import extract_features

        features, _ = extract_features(task.backbone, task.train, task.accelerator,
                                       description="features (the bundle's head)")
        with torch.no_grad():
            w, b = head.fc.weight[self.kept], head.fc.bias[self.kept]
            spread = float((features.float() @ w.T + b).std())
            reach = float(w.norm(dim=1).max() * features.float().norm(dim=1).mean())
            scale = min(1.0, *(limit / value for limit, value in ((START_LOGIT_SPREAD, spread),
                                                                   (START_LOGIT_REACH, reach)) if value > 0))
            head.fc.weight.mul_(scale)
            head.fc.bias.mul_(scale)
        return head, scale


START_LOGIT_SPREAD = 5.0  # the standard deviation of a bundle head's logits that fine-tuning from it starts at, at most
START_LOGIT_REACH = 50.0  # a bundle head row's norm times the features' mean norm that fine-tuning starts at, at most


@dataclass
class TrainTask:
    """Everything a strategy may use. Built once per run by the task (:meth:`transferkit.tasks.Task.train_task`)."""

    spec: BackboneSpec
    backbone: Any  # Image/Text/AudioBackbone: pretrained, untouched; strategies copy it before changing it
    train: Any  # DecodedImages (uint8 pixels), EncodedTexts (token ids) or DecodedAudio (windows)
    # None: no held-out validation split (small data): strategies choose their settings by cross-validation on
    # ``train`` (``cv`` folds) and train the final model on all of it; their FitResult then carries ``cv``
    val: Any
    classes: list[str]
    accelerator: Any
    seed: int = 0
    deadline: float | None = None  # time.monotonic() value; None = no budget
    work_dir: Path | None = None  # checkpoints and caches of this run
    workers: int = 0  # loader processes (the task sets it from RunSettings.workers, by device when not given)
    compile: bool = False  # fine-tuning strategies train torch.compile(network) (RunSettings.compile)
    # imbalanced data: "weights" weighs the loss per class, "sampler" draws classes equally often (the task chooses,
    # see transferkit.tasks.classification.choose_balance; None: not chosen, the linear probe then weighs by its
    # own rule); ``balanced`` selects epochs and models by balanced accuracy instead of accuracy
    balance: str | None = None
    balanced: bool = False
    # folds when choosing by cross-validation; None: 5 for the probe (cheap), 3 for strategies that train the network
    # (each fold is a whole training run)
    cv: int | None = None
    groups: list[str] | None = None  # per training example: its patient (folds keep a patient together)
    stop_at: int | None = None  # train only this many epochs of the planned schedule (the folds' chosen epoch)
    batches: Batches | None = None  # the task's batches (see Batches); None for strategies that build their own
    start: StartHead | None = None  # a run from a bundle: the bundle's head, a row per class (strategies start there)
    # a search trial (transferkit.studies) scores settings: strategies that cross-validate may skip the final model
    # (their result's model is then the last fold's) since only the estimate is read
    estimate_only: bool = False

    @property
    def cross_validated(self) -> bool:
        """No validation split: settings are chosen across folds of the training data."""
        return self.val is None

    def folds(self, k: int | None = None, seed: int | None = None) -> list:
        """Stratified (and patient-grouped) folds of the training data, by iterative stratification for
        multi-label data; see :func:`transferkit.data.folds.cross_val_folds`."""
        from ..data.folds import cross_val_folds, fold_strata

        return cross_val_folds(fold_strata(self.train.targets.numpy()), k or self.cv or PROBE_FOLDS,
                               self.seed if seed is None else seed, self.groups)

    def fold(self, train_idx: Any, val_idx: Any, deadline: float | None = None) -> TrainTask:
        """This task on one fold: train on ``train_idx``, validate on ``val_idx`` (positions in ``train``)."""
        import dataclasses

        groups = [self.groups[i] for i in train_idx] if self.groups is not None else None
        return dataclasses.replace(self, train=self.train.subset(train_idx), val=self.train.subset(val_idx),
                                   groups=groups, deadline=deadline if deadline is not None else self.deadline,
                                   work_dir=None, stop_at=None)

    @property
    def class_weights(self) -> torch.Tensor | None:
        """Inverse-frequency class weights, mean 1 over the examples (``balance="weights"``), else None.
        Multi-label: each label's positive weight, its negatives over its positives, within 1 to
        :data:`~transferkit.heads.probe.MAX_POSITIVE_WEIGHT`, as the linear probe weighs them."""
        if self.balance != "weights":
            return None
        t = self.row_targets()  # counted in the rows the loss sees (audio: windows, a long recording weighs more)
        if self.multi_label:
            from ..heads.probe import MAX_POSITIVE_WEIGHT

            positives = t.sum(0).double()
            return ((len(t) - positives) / positives.clamp(min=1)).clamp(1, MAX_POSITIVE_WEIGHT).float()
        counts = torch.bincount(t, minlength=len(self.classes)).double().clamp(min=1)
        w = counts.sum() / (len(counts) * counts)
        return w.float()

    @property
    def preprocess(self) -> Any:
        return self.backbone.preprocess

    @property
    def modality(self) -> str:
        return self.backbone.modality

    @property
    def profile(self) -> str:
        """Which defaults suit this backbone: "image", "text", "audio" (a CNN on spectrograms), "speaker"..."""
        return getattr(self.backbone, "profile", self.modality)

    @property
    def multi_label(self) -> bool:
        return self.train.targets.ndim == 2

    def row_targets(self) -> torch.Tensor:
        """The target of every training row the network sees: the examples', or audio windows' (their recording's)."""
        own = getattr(self.batches, "row_targets", None)
        return own(self.train) if own is not None else self.train.targets

    def class_counts(self) -> torch.Tensor:
        """Training examples per class (multi-label: texts carrying each label)."""
        t = self.train.targets
        return t.sum(0).long() if t.ndim == 2 else torch.bincount(t, minlength=len(self.classes))

    def seconds_left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()


@dataclass
class FitResult:
    model: nn.Module  # a Classifier (backbone -> head) with the best weights
    strategy: str
    history: History
    trainable_params: int
    timings: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # extra bundle files, e.g. a LoRA adapter in peft format
    # cross-validated runs (no validation split): the estimate, see :class:`CrossValidation`
    cv: CrossValidation | None = None


@dataclass
class CrossValidation:
    """How a strategy chose its settings without a validation split, and what the folds say about the result.

    ``probs``: out-of-fold probabilities of every training example (averaged over repeats), from models trained
    as the final one was but without that example; the run scores these as its cross-validated estimate.
    ``fold_scores``: each fold's accuracy (multi-label: mAP; ``balanced``: balanced accuracy).
    ``chosen``: the settings the folds chose and the final model was trained with (C, epochs, strategy...).
    """

    probs: Any  # np.ndarray (N, K)
    folds: int
    repeats: int
    fold_scores: list[float]
    chosen: dict[str, Any] = field(default_factory=dict)
    method: str = ""  # one line: what was cross-validated

    def to_dict(self) -> dict[str, Any]:
        return {"folds": self.folds, "repeats": self.repeats, "fold_scores": [round(s, 4) for s in self.fold_scores],
                "chosen": self.chosen, "method": self.method}


def probs_score(probs: Any, y: Any, balanced: bool = False) -> float:
    """What the training loop scores validation by, from probabilities: accuracy (``balanced``: mean recall over
    the classes present), or mAP for multi-label targets (N, K) (see :func:`transferkit.engine.loop.score`)."""
    import numpy as np

    probs, y = np.asarray(probs), np.asarray(y)
    if y.ndim == 2:
        from ..evaluation.metrics import mean_average_precision

        return mean_average_precision(y > 0.5, probs)
    right = probs.argmax(1) == y
    if balanced:
        return float(np.mean([right[y == c].mean() for c in np.unique(y)]))
    return float(right.mean())


def probs_loss(probs: Any, y: Any) -> float:
    """Mean cross-entropy of probabilities (binary cross-entropy per label for multi-label targets)."""
    import numpy as np

    probs, y = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1 - 1e-12), np.asarray(y)
    if y.ndim == 2:
        return float(-np.mean(y * np.log(probs) + (1 - y) * np.log(1 - probs)))
    return float(-np.mean(np.log(probs[np.arange(len(y)), y])))


def config_for(cfg_cls: type, profile: str = "image", **overrides: Any) -> Any:
    """A strategy config with the defaults for this kind of backbone (``text_defaults`` for text encoders,
    ``speaker_defaults`` for the speaker encoder, ``audio_defaults`` for a CNN on spectrograms; the class
    defaults suit image CNNs), then ``overrides``. Only the class's own table counts, never a parent's: the
    scratch baseline must not inherit fine-tuning's layer-wise decay."""
    base = dict(vars(cfg_cls).get(f"{profile}_defaults", {})) if profile != "image" else {}
    return cfg_cls(**{**base, **overrides})


# the range of every numeric strategy option, by name: (low, high, low excluded, high excluded, whole, example)
NUMBER_RANGES: dict[str, tuple[float | None, float | None, bool, bool, bool, str]] = {
    **{name: (1, MAX_COUNT, False, False, True, "") for name in (
        "epochs", "max_epochs", "min_epochs", "batch_size", "repeats", "r", "alpha", "pairs_per_example",
        "max_pairs", "min_per_class", "unfreeze_every", "patience")},
    "finetune_folds": (2, MAX_COUNT, False, False, True, "3"),
    **{name: (0, None, True, False, False, "1e-4") for name in ("lr", "head_lr", "finetune_lr")},
    **{name: (0, None, False, False, False, "") for name in ("weight_decay", "grad_clip", "warmup_epochs",
                                                             "warmup_fraction")},
    **{name: (0, 1, False, True, False, "0.1") for name in ("dropout", "lora_dropout", "label_smoothing",
                                                            "frozen_share")},
    "layer_decay": (0, 1, True, False, False, "0.7"),
    "l2sp": (0, 1e6, False, False, False, "0.01"),
}


def refuse_l2sp(config: Any) -> None:
    """Scratch strategies: L2-SP pulls weights toward where transfer started them, and a scratch run has no such
    start (its weights are random)."""
    if getattr(config, "l2sp", 0):
        from ..errors import TransferkitError

        raise TransferkitError("l2sp pulls weights toward their pretrained start; scratch starts from random weights: "
                               "leave l2sp out.")


def check_numbers(config: Any) -> None:
    """Refuse a strategy option that is not a finite number in its range (NaN, infinity, ``lr=-1``, ``epochs=0``,
    ``batch_size=0``) before any work, with one line naming the option and its range."""
    from ..errors import check_number

    for f in fields(config):
        value = getattr(config, f.name)
        if f.name in NUMBER_RANGES and value is not None:
            low, high, low_open, high_open, whole, example = NUMBER_RANGES[f.name]
            check_number(f.name, value, low=low, high=high, low_open=low_open, high_open=high_open, whole=whole,
                         example=example)


def check_modality(strategy: Any, modality: str) -> None:
    """Refuse data a strategy was not built for (its class says which, in ``modalities``)."""
    allowed = getattr(strategy, "modalities", ("image", "text", "audio"))
    if modality not in allowed:
        from ..errors import TransferkitError

        raise TransferkitError(f"Strategy {strategy.name!r} works with {' and '.join(allowed)} data for now: "
                               f"for {modality} data choose linear, finetune, gradual, scratch or auto.")


class Strategy(Protocol):
    """What trains: a name (registered in ``STRATEGIES``) and ``fit``, given everything about one training run.

    Attributes:
        name: the name users pass as ``--strategy``.
    """

    name: str

    def fit(self, task: TrainTask) -> FitResult:
        """Train on ``task`` (data, backbone, accelerator, budget) and return the model with its history."""
        ...


class Batches(Protocol):
    """What a task hands strategies about its data (see :class:`transferkit.tasks.Task`)."""

    def loaders(self, task: TrainTask, batch_size: int, augment: bool = False,
                hflip: bool = True) -> tuple[DataLoader, DataLoader | None]: ...

    def batch_input(self, backbone: Any) -> Callable[[Any], Any]: ...

    def aggregate(self, task: TrainTask) -> Callable | None: ...

    def sample(self, data: Any, n: int) -> Any: ...

    def rows(self, data: Any) -> int: ...


def _batches(task: TrainTask) -> Batches:
    if task.batches is None:
        from ..errors import TransferkitError

        raise TransferkitError("This TrainTask has no batches: build it with its task (transferkit.tasks).")
    return task.batches


def rows(task: TrainTask, data: Any) -> int:
    """How many rows the network sees for ``data``: audio windows, else examples."""
    return _batches(task).rows(data)


def make_loaders(task: TrainTask, batch_size: int, augment: bool = False,
                 hflip: bool = True) -> tuple[DataLoader, DataLoader | None]:
    """Training loader (epoch-seeded shuffling, augmentation when ``augment``) and validation loader (None when
    the task has no validation split), as the task builds them."""
    return _batches(task).loaders(task, batch_size, augment, hflip)


def val_aggregate(task: TrainTask) -> Callable | None:
    """How validation rows merge before scoring (audio: a recording's windows), or None."""
    return _batches(task).aggregate(task)


def make_prepare(task: TrainTask, backbone: Any = None) -> Callable[[Any], Any]:
    """Loader batch -> model input (normalised channels_last images, trimmed token ids, float waveforms), for
    ``backbone`` (default: the task's)."""
    return _batches(task).batch_input(backbone if backbone is not None else task.backbone)


def sample_batch(task: TrainTask, n: int = 16) -> Any:
    """The first ``n`` training examples as model input (for timing and shape checks)."""
    return make_prepare(task)(_batches(task).sample(task.train, n))


def estimate_epoch_seconds(task: TrainTask, batch: int = 16) -> float:
    """Time one forward+backward step on a copy of the backbone and scale to an epoch (plus validation)."""
    model = copy.deepcopy(task.backbone).train().to(memory_format=torch.channels_last)
    device = next(model.parameters()).device  # the probe may have moved the backbone to the GPU already
    x = sample_batch(task, batch)
    x = {k: v.to(device) for k, v in x.items()} if isinstance(x, dict) else x.to(device)
    n = len(x["input_ids"]) if isinstance(x, dict) else len(x)
    acc = task.accelerator
    times = []
    for _ in range(2):  # the first step warms up kernels; time the second
        t = time.monotonic()
        with acc.autocast():
            loss = model(x).float().mean()
        loss.backward()
        times.append(time.monotonic() - t)
    per_example = times[-1] / n
    # validation costs about a third of a training step per example
    return per_example * (rows(task, task.train) + (rows(task, task.val) if task.val is not None else 0) / 3)


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


def schedule_within_budget(task: TrainTask, epochs: int, per_epoch: float | None, steps_per_epoch: int,
                           warmup_steps: int) -> tuple[int, int, Literal["epoch", "step"]]:
    """The LR schedule's length and warm-up in steps, and how the engine checks the budget (``"epoch"`` or
    ``"step"``, see :func:`transferkit.engine.trainer.fit`).

    Whole epochs, checked before each one, as planned by :func:`epochs_within_budget`. When not even one epoch fits
    what is left of the budget (a large training set, a short budget), as many steps as fit, the schedule complete
    at the last of them and the budget checked after every step: the run ends on time with a part of an epoch,
    instead of overrunning by the rest of it."""
    total = epochs * steps_per_epoch
    if task.deadline is None or not per_epoch or epochs > 1:
        return total, warmup_steps, "epoch"
    room = 0.9 * task.seconds_left()
    if per_epoch <= room:
        return total, warmup_steps, "epoch"
    steps = max(1, int(steps_per_epoch * room / per_epoch))
    return steps, min(warmup_steps, steps // 4), "step"
