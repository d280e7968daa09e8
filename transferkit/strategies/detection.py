"""Detection strategies: what trains in a detector (pretrained body -> new FPN + FCOS head).

==========  ==============================================================================================
frozen      the pretrained body stays as it is (weights and BatchNorm statistics); FPN and head train
finetune    everything trains; the body with layer-wise LR decay and its BatchNorm statistics frozen
gradual     FPN and head first, then one body layer group more every few epochs, from the top down
scratch     the same detector with random weights everywhere, BatchNorm trained: the baseline
auto        frozen first, then fine-tune from there (LP-FT); keep the better on validation mAP
==========  ==============================================================================================

BatchNorm statistics of a pretrained body stay frozen while it fine-tunes, as torchvision's detectors do
(``FrozenBatchNorm2d``): a few images per step give noisy statistics that would overwrite ImageNet's.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..engine.optim import L2SP, adamw, freeze, param_groups, trainable_parameters, warmup_cosine, without_decay_on
from .base import FitResult, TrainTask, refuse_l2sp


def image_sampler(task: TrainTask) -> Any:
    """Epoch-seeded shuffling, or with ``balance="sampler"`` images drawn by the class of their rarest object (over
    the training boxes), each class equally often (images without boxes form a class of their own)."""
    from ..data.labels import rarest_labels
    from ..engine.sampling import EpochBalancedSampler, EpochShuffleSampler

    if task.balance != "sampler":
        return EpochShuffleSampler(len(task.train), task.seed)
    return EpochBalancedSampler(rarest_labels([t.tolist() for t in task.train.targets]), task.seed)


@dataclass
class DetectFinetuneConfig:
    """Fine-tune the whole detector: the body with layer-wise LR decay, the new FPN and head at ``lr``."""

    epochs: int = field(default=30, metadata={"help": "maximum epochs"})
    lr: float = field(default=1e-3, metadata={"help": "peak AdamW learning rate of the FPN and head; body groups "
                                                      "get less (LLRD)"})
    layer_decay: float = field(default=0.8, metadata={"help": "LR multiplier per body layer group, from the top down"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay (not on norms and biases)"})
    warmup_epochs: float = field(default=1.0, metadata={"help": "linear warm-up length, in epochs"})
    batch_size: int = field(default=8, metadata={"help": "images per step"})
    patience: int = field(default=8, metadata={"help": "epochs without a better validation mAP before stopping"})
    augment: bool = field(default=True, metadata={"help": "colour jitter, zoom-out, IoU crop, flip (boxes move "
                                                          "with the pixels)"})
    hflip: bool = field(default=True, metadata={"help": "allow horizontal flips (turn off where left/right matters)"})
    grad_clip: float = field(default=10.0, metadata={"help": "clip the gradient norm (0: off)"})
    l2sp: float = field(default=0.0, metadata={"help": "L2-SP: pull the body's weights toward their starting point "
                                                       "(pretrained, or the --init-from bundle's) instead of decaying "
                                                       "them (0: off)"})


@dataclass
class DetectFrozenConfig(DetectFinetuneConfig):
    """Pretrained body frozen; only the FPN and head learn."""

    def __post_init__(self) -> None:
        if self.l2sp:
            from ..errors import TransferkitError

            raise TransferkitError("l2sp pulls the body's weights toward their start; frozen keeps the body fixed: "
                                   "leave l2sp out, or choose finetune or gradual.")


@dataclass
class DetectGradualConfig(DetectFinetuneConfig):
    """FPN and head first, then body layer groups from the top down."""

    unfreeze_every: int = field(default=2, metadata={"help": "epochs between unfreezing one more body layer group"})
    patience: int = field(default=10, metadata={"help": "epochs without a better validation mAP before stopping"})


@dataclass
class DetectScratchConfig(DetectFinetuneConfig):
    """Random weights everywhere: the baseline."""

    epochs: int = field(default=60, metadata={"help": "maximum epochs (random weights need more)"})
    layer_decay: float = field(default=1.0, metadata={"help": "no LLRD: no layer knows more than another"})
    patience: int = field(default=15, metadata={"help": "epochs without a better validation mAP before stopping"})

    def __post_init__(self) -> None:
        refuse_l2sp(self)


@dataclass
class DetectAutoConfig(DetectFinetuneConfig):
    """Frozen body first, then everything from there; the better one on validation mAP is kept."""

    frozen_share: float = field(default=0.3, metadata={"help": "share of the epochs (or budget) spent with "
                                                               "the body frozen"})


class DetectionStrategy:
    """``finetune``; the other strategies change what trains (:meth:`schedule`, :meth:`make_detector`) or where
    weights start."""

    name = "finetune"
    config_class: type = DetectFinetuneConfig
    modalities = ("detection",)
    frozen_body = False  # whether the body stays frozen throughout (timing the budget plan)

    def __init__(self, config: Any = None, init_state: dict[str, torch.Tensor] | None = None,
                 epoch_seconds: float | None = None):
        self.config = config or self.config_class()
        self.init_state = init_state  # e.g. the frozen run's weights: auto's LP-FT starts from them
        self.epoch_seconds = epoch_seconds

    def make_detector(self, task: TrainTask) -> nn.Module:
        det = copy.deepcopy(task.backbone)
        if self.init_state is not None:
            det.load_state_dict(self.init_state)
        return det

    def schedule(self, det: nn.Module):
        """Called at the start of each epoch, after ``model.train()``: what trains now. Returns the stage."""
        groups, norms = det.layer_groups(), _body_norms(det)

        def on_epoch_start(epoch: int) -> int:
            for m in norms:  # pretrained statistics stay (see the module docstring)
                m.eval()
            return len(groups)

        return on_epoch_start

    def fit(self, task: TrainTask) -> FitResult:
        from ..data.detection import DetectionDataset, collate
        from ..engine.accel import loader_options
        from ..engine.detection import train_detector

        cfg = self.config
        acc = task.accelerator
        det = self.make_detector(task)
        groups = det.layer_groups()
        freeze(list(det.parameters()), frozen=False)
        penalty = L2SP(det.body, cfg.l2sp) if cfg.l2sp else None
        opt = adamw(without_decay_on(param_groups(groups, det.new_parameters(), cfg.lr, cfg.weight_decay,
                                                  cfg.layer_decay), penalty), acc.device)
        n = len(task.train)
        bs = max(1, min(cfg.batch_size, n))
        loader = torch.utils.data.DataLoader(
            DetectionDataset(task.train, cfg.augment, cfg.hflip, det.preprocess.mean), batch_size=bs,
            sampler=image_sampler(task), drop_last=n > bs, collate_fn=collate,
            **loader_options(task.workers, acc.device))
        epochs, epoch_s = self.plan_epochs(task, det, bs)
        sched = warmup_cosine(opt, epochs * len(loader), warmup_steps=int(cfg.warmup_epochs * len(loader)))
        t0 = time.monotonic()
        history, _ = train_detector(
            det, opt, sched, loader, validator(task), acc, epochs=epochs, patience=cfg.patience,
            on_epoch_start=self.schedule(det), deadline=task.deadline, grad_clip=cfg.grad_clip,
            checkpoint_dir=task.work_dir / f"checkpoints-{self.name}" if task.work_dir else None, description=self.name,
            penalty=penalty)
        det = acc.unwrap_model(det).cpu().eval()
        trainable = trainable_parameters(det)
        freeze(list(det.parameters()), frozen=False)
        return FitResult(model=det, strategy=self.name, history=history, trainable_params=trainable,
                         timings={"train_s": time.monotonic() - t0},
                         details={"config": dict(cfg.__dict__), "layer_groups": len(groups), "planned_epochs": epochs,
                                  "estimated_epoch_s": epoch_s, "warm_start": self.init_state is not None})

    def plan_epochs(self, task: TrainTask, det: nn.Module, batch_size: int) -> tuple[int, float | None]:
        """The configured epochs, or as many as the time budget allows (at least one), so the LR schedule ends."""
        if task.deadline is None:
            return self.config.epochs, None
        per_epoch = self.epoch_seconds or estimate_epoch_seconds(task, det, batch_size, self.frozen_body)
        room = 0.9 * task.seconds_left()
        epochs = max(1, min(self.config.epochs, int(room // per_epoch)))
        if task.accelerator.num_processes > 1:  # every process must plan the same epochs (DDP steps together)
            from accelerate.utils import broadcast_object_list

            epochs, per_epoch = broadcast_object_list([epochs, per_epoch])
        return epochs, per_epoch



class FrozenStrategy(DetectionStrategy):
    name = "frozen"
    config_class = DetectFrozenConfig
    frozen_body = True  # no backward pass through the body: its epochs cost about half, and the plan knows it

    def schedule(self, det: nn.Module):
        body = list(det.body.parameters())
        freeze(body)
        modules = list(det.body.modules())

        def on_epoch_start(epoch: int) -> int:
            freeze(body)
            for m in modules:  # dropout and BatchNorm of the frozen body behave as at inference
                m.eval()
            return 0

        return on_epoch_start


class GradualStrategy(DetectionStrategy):
    name = "gradual"
    config_class = DetectGradualConfig

    def schedule(self, det: nn.Module):
        from .finetune import group_modules

        groups, norms = det.layer_groups(), _body_norms(det)
        per_group = group_modules(det)
        every = max(1, self.config.unfreeze_every)

        def on_epoch_start(epoch: int) -> int:
            stage = min(len(groups), epoch // every)  # stage 0: FPN + head; stage k: the top k body groups too
            for i, params in enumerate(groups):
                freeze(params, i < len(groups) - stage)
            for m in norms:
                m.eval()
            for i in range(len(groups) - stage):
                for m in per_group[i]:
                    m.eval()
            return stage

        return on_epoch_start


class ScratchStrategy(DetectionStrategy):
    name = "scratch"
    config_class = DetectScratchConfig

    def make_detector(self, task: TrainTask) -> nn.Module:
        torch.manual_seed(task.seed)
        return task.backbone.random_like()

    def schedule(self, det: nn.Module):
        return None  # random BatchNorm statistics must be learnt


class AutoStrategy:
    """``frozen`` for ``frozen_share`` of the epochs (or budget), then ``finetune`` from its weights; keeps the
    fine-tuned detector only if its validation mAP@[.5:.95] is higher."""

    name = "auto"
    modalities = ("detection",)

    def __init__(self, config: DetectAutoConfig | None = None):
        self.config = config or DetectAutoConfig()

    def fit(self, task: TrainTask) -> FitResult:
        from dataclasses import fields, replace

        cfg = self.config
        t0 = time.monotonic()
        base = {f.name: getattr(cfg, f.name) for f in fields(DetectFinetuneConfig)}
        first_epochs = max(1, round(cfg.epochs * cfg.frozen_share))
        first_task = task
        if task.deadline is not None:
            first_task = replace(task, deadline=time.monotonic() + cfg.frozen_share * task.seconds_left())
        # the frozen stage trains no body weight for L2-SP to pull: it applies to the stage that does
        frozen = FrozenStrategy(DetectFrozenConfig(**{**base, "epochs": first_epochs, "l2sp": 0.0})).fit(first_task)
        tuned = DetectionStrategy(DetectFinetuneConfig(**{**base, "epochs": max(1, cfg.epochs - first_epochs)}),
                                  init_state=frozen.model.state_dict()).fit(task)
        f_map, t_map = frozen.history.best.val_map, tuned.history.best.val_map
        chosen = tuned if t_map > f_map else frozen
        decision = (f"frozen body: validation mAP {f_map:.3f}; then fine-tuned from it: {t_map:.3f}")
        return FitResult(model=chosen.model, strategy=f"auto ({chosen.strategy})", history=chosen.history,
                         trainable_params=chosen.trainable_params,
                         timings={"train_s": time.monotonic() - t0},
                         details={"decision": decision, "chosen": chosen.strategy,
                                  "candidates": {r.strategy: r.details for r in (frozen, tuned)},
                                  "histories": {r.strategy: r.history.to_dict() for r in (frozen, tuned)}})


def validator(task: TrainTask):
    """``model -> (mAP@[.5:.95], mAP@.5)`` on the validation images (in the decoded pixels: the ranking is the same)."""
    from ..engine.detection import detect
    from ..evaluation.detection import map_metric

    val = task.val
    truth = [{"boxes": b, "labels": t} for b, t in zip(val.boxes, val.targets, strict=True)]

    def validate(model: nn.Module) -> tuple[float, float]:
        acc = task.accelerator
        preds = detect(model, val.images, device=acc.device, autocast=acc.autocast, description=None)
        metric = map_metric()
        metric.update(preds, truth)
        r = metric.compute()
        return max(0.0, float(r["map"])), max(0.0, float(r["map_50"]))

    return validate


def estimate_epoch_seconds(task: TrainTask, det: nn.Module, batch_size: int, frozen_body: bool = False) -> float:
    """Time one training step on a copy of the detector (with its body frozen when ``frozen_body``), scaled to an
    epoch plus validation."""
    from ..data.detection import DetectionDataset, collate
    from ..engine.detection import to_device

    model = copy.deepcopy(det).train().to(task.accelerator.device)
    freeze(list(model.body.parameters()), frozen_body)
    n = min(batch_size, len(task.train))
    images, targets = collate([DetectionDataset(task.train)[i] for i in range(n)])
    images, targets = to_device(images, targets, task.accelerator.device)
    times = []
    for _ in range(2):  # the first step warms up kernels; time the second
        t = time.monotonic()
        with task.accelerator.autocast():
            loss = sum(v.float() for v in model(images, targets).values())
        loss.backward()
        times.append(time.monotonic() - t)
    # inference on a validation image costs about a third of a training step
    return times[-1] / n * (len(task.train) + len(task.val) / 3)


def _body_norms(det: nn.Module) -> list[nn.Module]:
    return [m for m in det.body.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


DETECTION_STRATEGIES: dict[str, tuple[type, type]] = {
    "frozen": (FrozenStrategy, DetectFrozenConfig),
    "finetune": (DetectionStrategy, DetectFinetuneConfig),
    "gradual": (GradualStrategy, DetectGradualConfig),
    "scratch": (ScratchStrategy, DetectScratchConfig),
    "auto": (AutoStrategy, DetectAutoConfig),
}
