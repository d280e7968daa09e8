"""``finetune``, ``gradual`` and ``scratch``: the whole network trains, on augmented images.

- ``finetune``: every layer from the first epoch, AdamW, warm-up + cosine, layer-wise LR decay (LLRD).
- ``gradual``: the head first, then one layer group more every ``unfreeze_every`` epochs, from the output
  side down (ULMFiT-style). All optimizer groups exist from the start; only ``requires_grad`` changes.
- ``scratch``: the same architecture with random weights, the same loop without LLRD. The baseline every
  report compares transfer with.

Texts use the same code with other defaults (``text_defaults``: BERT-style learning rates, no augmentation),
as does the speaker encoder (``speaker_defaults``); each config below says what differs. Audio is augmented
on the waveform (time shift, gain, noise) and, on spectrograms, with SpecAugment masks instead of crops/flips.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..engine.loop import train
from ..engine.trainer import compile_seconds
from ..engine.optim import L2SP, adamw, compile_module, freeze, param_groups, trainable_parameters, warmup_cosine
from ..engine.optim import without_decay_on
from ..heads import Classifier, LinearHead
from .base import FitResult, TrainTask, epochs_within_budget, make_loaders, make_prepare, schedule_within_budget
from .base import refuse_l2sp, val_aggregate
from .space import Range


@dataclass
class FinetuneConfig:
    """Full fine-tuning with layer-wise learning-rate decay."""

    epochs: int = field(default=15, metadata={"help": "maximum epochs"})
    lr: float = field(default=1e-3, metadata={"help": "peak AdamW learning rate of the top layers; lower groups "
                                                      "get less (LLRD)"})
    head_lr: float | None = field(default=None, metadata={"help": "peak learning rate of the new head (default: lr)"})
    layer_decay: float = field(default=0.7, metadata={"help": "LR multiplier per layer group, from the head down"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (not on norms and biases)"})
    warmup_epochs: float = field(default=1.0, metadata={"help": "linear warm-up length, in epochs"})
    batch_size: int = field(default=32, metadata={"help": "images per step (smaller on tiny data: >= 8 "
                                                          "steps per epoch)"})
    patience: int = field(default=5, metadata={"help": "epochs without validation improvement before stopping"})
    label_smoothing: float = field(default=0.1, metadata={"help": "cross-entropy label smoothing"})
    dropout: float = field(default=0.2, metadata={"help": "dropout before the head"})
    augment: bool = field(default=True, metadata={"help": "images: random resized crop + flip; audio: time shift, "
                                                          "gain, noise, SpecAugment"})
    hflip: bool = field(default=True, metadata={"help": "allow horizontal flips (turn off for text, digits, ...)"})
    lp_ft: bool = field(default=False, metadata={"help": "start the head from the cross-validated linear probe on the "
                                                         "frozen features (LP-FT, as auto does) instead "
                                                         "of a random head"})
    l2sp: float = field(default=0.0, metadata={"help": "L2-SP: pull the backbone's weights toward their starting point "
                                                       "(pretrained, or the --init-from bundle's) with this strength "
                                                       "instead of decaying them toward zero (0: off; try 0.01-1)"})

    # Texts: BERT-style rates for the encoder, a faster head (a few dozen steps must train it), no augmentation.
    text_defaults: ClassVar[dict[str, Any]] = {
        "epochs": 10, "lr": 1e-4, "head_lr": 3e-3, "layer_decay": 0.9, "weight_decay": 0.01, "batch_size": 16,
        "patience": 4, "label_smoothing": 0.0, "dropout": 0.1, "augment": False,
    }
    # ImageNet -> spectrograms is a long way: the lower layers must move more (LLRD 0.85, not 0.7), over more
    # epochs (spoken digits, 20 per class: 0.857 with the image defaults, 0.990 with these)
    audio_defaults: ClassVar[dict[str, Any]] = {"epochs": 30, "layer_decay": 0.85, "patience": 8, "hflip": False}
    # Hugging Face audio transformers (AST, wav2vec2): BERT-style rates as for texts, with audio augmentation
    hf_audio_defaults: ClassVar[dict[str, Any]] = {**text_defaults, "augment": True, "hflip": False}
    # Resemblyzer's LSTM was trained with Adam at 1e-4: a gentle encoder rate, a faster head
    speaker_defaults: ClassVar[dict[str, Any]] = {"lr": 3e-4, "head_lr": 3e-3, "layer_decay": 0.8, "batch_size": 16,
                                                  "dropout": 0.1}

    # what `transferkit search` tries (transferkit.strategies.space), around the defaults above: AdamW rates of
    # image fine-tuning, LLRD, decay, the schedule's length (early stopping still ends a run), smoothing, augmentation
    search_space: ClassVar[dict[str, Any]] = {
        "lr": Range(1e-4, 3e-3, log=True), "layer_decay": Range(0.5, 0.95), "weight_decay": Range(1e-3, 0.1, log=True),
        "epochs": Range(5, 25), "label_smoothing": Range(0.0, 0.2), "augment": (True, False),
    }
    # BERT-style encoders: rates in 1e-5..3e-4 with a faster head, no smoothing nor augmentation
    text_search_space: ClassVar[dict[str, Any]] = {
        "lr": Range(1e-5, 3e-4, log=True), "head_lr": Range(3e-4, 1e-2, log=True), "layer_decay": Range(0.7, 1.0),
        "epochs": Range(3, 12), "label_smoothing": None, "augment": None,
    }
    audio_search_space: ClassVar[dict[str, Any]] = {"epochs": Range(10, 40), "layer_decay": Range(0.7, 0.95)}
    hf_audio_search_space: ClassVar[dict[str, Any]] = {**text_search_space, "augment": (True, False)}
    speaker_search_space: ClassVar[dict[str, Any]] = {"lr": Range(1e-4, 1e-3, log=True),
                                                      "head_lr": Range(1e-3, 1e-2, log=True)}


@dataclass
class GradualConfig(FinetuneConfig):
    """Gradual unfreezing: head first, then layer groups from the output side."""

    epochs: int = field(default=20, metadata={"help": "maximum epochs"})
    unfreeze_every: int = field(default=2, metadata={"help": "epochs between unfreezing one more layer group"})
    patience: int = field(default=8, metadata={"help": "epochs without validation improvement before stopping"})

    text_defaults: ClassVar[dict[str, Any]] = {**FinetuneConfig.text_defaults, "epochs": 12, "unfreeze_every": 1,
                                               "patience": 6}
    audio_defaults: ClassVar[dict[str, Any]] = {**FinetuneConfig.audio_defaults, "unfreeze_every": 1, "patience": 10}
    hf_audio_defaults: ClassVar[dict[str, Any]] = {**FinetuneConfig.hf_audio_defaults, "epochs": 12,
                                                   "unfreeze_every": 1, "patience": 6}
    speaker_defaults: ClassVar[dict[str, Any]] = {**FinetuneConfig.speaker_defaults, "unfreeze_every": 2}

    search_space: ClassVar[dict[str, Any]] = {**FinetuneConfig.search_space, "epochs": Range(8, 30),
                                              "unfreeze_every": Range(1, 4)}


@dataclass
class ScratchConfig(FinetuneConfig):
    """Random initialisation: the baseline transfer must beat."""

    epochs: int = field(default=30, metadata={"help": "maximum epochs (random weights need more)"})
    lr: float = field(default=2e-3, metadata={"help": "peak AdamW learning rate"})
    layer_decay: float = field(default=1.0, metadata={"help": "no LLRD: no layer knows more than another"})
    patience: int = field(default=10, metadata={"help": "epochs without validation improvement before stopping"})
    dropout: float = field(default=0.0, metadata={"help": "dropout before the head"})

    def __post_init__(self) -> None:
        refuse_l2sp(self)

    # random transformer weights: a long warm-up (a post-LN transformer stalls at chance with 5e-4 from the
    # start: measured on BBC News), more epochs, and patience for the plateau before it starts to learn
    text_defaults: ClassVar[dict[str, Any]] = {
        **FinetuneConfig.text_defaults, "epochs": 40, "lr": 1e-4, "head_lr": 3e-3, "layer_decay": 1.0,
        "warmup_epochs": 3.0, "patience": 15,
    }
    audio_defaults: ClassVar[dict[str, Any]] = {"hflip": False}  # the class defaults, not fine-tuning's LLRD
    hf_audio_defaults: ClassVar[dict[str, Any]] = {**text_defaults, "augment": True, "hflip": False}
    speaker_defaults: ClassVar[dict[str, Any]] = {"lr": 1e-3, "batch_size": 16}

    # random weights: higher rates, longer schedules, no layer-wise decay to search
    search_space: ClassVar[dict[str, Any]] = {
        "lr": Range(5e-4, 5e-3, log=True), "weight_decay": Range(1e-3, 0.1, log=True), "epochs": Range(15, 40),
        "label_smoothing": Range(0.0, 0.2), "augment": (True, False),
    }
    text_search_space: ClassVar[dict[str, Any]] = {"lr": Range(3e-5, 3e-4, log=True), "epochs": Range(20, 60),
                                                   "label_smoothing": None, "augment": None}
    audio_search_space: ClassVar[dict[str, Any]] = {}
    hf_audio_search_space: ClassVar[dict[str, Any]] = {**text_search_space, "augment": (True, False)}
    speaker_search_space: ClassVar[dict[str, Any]] = {}


class FinetuneStrategy:
    name = "finetune"
    config_class = FinetuneConfig

    def __init__(self, config: FinetuneConfig | None = None, init_head: nn.Module | None = None,
                 epoch_seconds: float | None = None, on_validate: Any = None):
        self.config = config or self.config_class()
        self.init_head = init_head  # e.g. a trained linear probe: LP-FT keeps features intact early on
        self.epoch_seconds = epoch_seconds  # a speed measured already (by auto), so it is not measured twice
        self.on_validate = on_validate  # sees each epoch's validation logits (auto: out-of-fold scores, early exit)

    def make_backbone(self, task: TrainTask):
        return copy.deepcopy(task.backbone)

    def fit(self, task: TrainTask) -> FitResult:
        cfg = self.config
        acc = task.accelerator
        backbone = self.make_backbone(task)
        if hasattr(backbone, "set_augment"):  # audio: SpecAugment masks on the spectrogram while training
            backbone.set_augment(cfg.augment)
        head = LinearHead(backbone.num_features, len(task.classes), dropout=cfg.dropout)
        # where the head starts: auto's probe, else (lp_ft) a probe fitted here, else a bundle's head grown to these
        # classes (--init-from), else a fresh one
        init_head, head_from = self.init_head, "probe" if self.init_head is not None else "fresh"
        if init_head is None and cfg.lp_ft and self.name != "scratch":
            from ..engine.features import extract_features
            from .linear import LinearConfig, fit_probe

            features, _ = extract_features(task.backbone, task.train, acc, description="features (LP-FT probe)")
            init_head, head_from = fit_probe(features, task, LinearConfig()).to_head(), "probe"
        head_scale = 1.0
        if init_head is None and task.start is not None and self.name != "scratch":
            (init_head, head_scale), head_from = task.start.for_training(task), "bundle"
        if init_head is not None:
            head.load_state_dict(init_head.state_dict())
        model = Classifier(backbone, head).to(memory_format=torch.channels_last)
        groups = backbone.layer_groups()
        penalty = L2SP(backbone, cfg.l2sp) if cfg.l2sp else None  # the start: pretrained or the bundle's weights
        opt = adamw(without_decay_on(param_groups(groups, list(head.parameters()), cfg.lr, cfg.weight_decay,
                                                  cfg.layer_decay, head_lr=cfg.head_lr), penalty), acc.device)
        train_loader, val_loader = make_loaders(task, cfg.batch_size, cfg.augment, cfg.hflip)
        epochs, epoch_s = epochs_within_budget(task, cfg.epochs, self.epoch_seconds, self.relative_cost(len(groups)))
        steps, warmup, check = schedule_within_budget(task, epochs, epoch_s, len(train_loader),
                                                      int(cfg.warmup_epochs * len(train_loader)))
        sched = warmup_cosine(opt, steps, warmup_steps=warmup)
        # --compile: the compiled wrapper trains (it shares the parameters); ``model`` itself is what is kept and
        # saved, so no ``_orig_mod.`` key reaches a checkpoint or a bundle
        net = compile_module(model) if task.compile else model
        t0 = time.monotonic()
        history, _ = train(
            net, opt, sched, train_loader, val_loader, acc,
            epochs=epochs, patience=cfg.patience, prepare=make_prepare(task, backbone), multi_label=task.multi_label,
            on_epoch_start=self.schedule(backbone), deadline=task.deadline, label_smoothing=cfg.label_smoothing,
            checkpoint_dir=task.work_dir / f"checkpoints-{self.name}" if task.work_dir else None,
            description=self.name, val_aggregate=val_aggregate(task), class_weights=task.class_weights,
            balanced=task.balanced, stop_at=task.stop_at, on_validate=self.on_validate, budget=check,
            penalty=penalty,
        )
        model = acc.unwrap_model(net, keep_torch_compile=False).cpu().to(memory_format=torch.contiguous_format)
        if hasattr(backbone, "set_augment"):
            model.backbone.set_augment(False)
        freeze(list(model.parameters()), frozen=False)
        timings = {"train_s": time.monotonic() - t0}
        if task.compile and (compile_s := compile_seconds(history.first_steps)) is not None:
            timings["compile_s"] = compile_s
        return FitResult(
            model=model, strategy=self.name, history=history,
            trainable_params=trainable_parameters(model),
            timings=timings,
            details={"config": cfg.__dict__, "layer_groups": len(groups), "lp_ft": head_from == "probe",
                     "head_from": head_from, "head_scale": head_scale,
                     "planned_epochs": epochs, "planned_steps": steps, "estimated_epoch_s": epoch_s,
                     "compiled": task.compile},
        )

    def schedule(self, backbone):
        return None

    def relative_cost(self, n_groups: int):
        """Cost of epoch ``e`` relative to a full fine-tuning epoch (None: every epoch costs the same)."""
        return None


class GradualStrategy(FinetuneStrategy):
    name = "gradual"
    config_class = GradualConfig

    def schedule(self, backbone):
        groups = backbone.layer_groups()
        modules = group_modules(backbone)
        every = max(1, self.config.unfreeze_every)

        def on_epoch_start(epoch: int) -> int:
            # stage 0: head only; stage k: the top k layer groups train too
            stage = min(len(groups), epoch // every)
            for i, params in enumerate(groups):
                frozen = i < len(groups) - stage
                freeze(params, frozen)
                if frozen:  # frozen layers keep their pretrained BatchNorm statistics
                    for m in modules[i]:
                        m.eval()
            return stage

        return on_epoch_start

    def relative_cost(self, n_groups: int):
        every = max(1, self.config.unfreeze_every)

        def cost(epoch: int) -> float:
            # the forward pass is about a third of a training step; the backward pass reaches only the
            # unfrozen share of the layer groups
            trained = min(n_groups, epoch // every) / n_groups
            return 1 / 3 + 2 / 3 * trained

        return cost


class ScratchStrategy(FinetuneStrategy):
    name = "scratch"
    config_class = ScratchConfig

    def make_backbone(self, task: TrainTask):
        torch.manual_seed(task.seed)
        # the same architecture, preprocessing and tokenizer: the same inputs as the transferred model sees
        return task.backbone.random_like()


def group_modules(backbone) -> list[list[nn.Module]]:
    """For each layer group of ``backbone`` (``layer_group_names()``), its BatchNorm modules: those whose mode
    matters when the group is frozen (gradual unfreezing keeps them in eval mode until their group trains)."""
    out = []
    for group in backbone.layer_group_names():
        owners = {n.rsplit(".", 1)[0] for n in group}
        mods = []
        for o in sorted(owners):
            m = backbone.body.get_submodule(o) if o else backbone.body
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                mods.append(m)
        out.append(mods)
    return out
