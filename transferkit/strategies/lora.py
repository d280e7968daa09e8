"""``lora``: low-rank adapters (peft) in the encoder's attention layers, plus a new classification head.

Only the adapters and the head train (about 0.3% of MiniLM's weights). The head is part of the model from the
start, so it cannot be lost on save: the bundle holds the encoder with the adapters merged into its weights
(what ``transferkit.load`` rebuilds, predicting exactly what the returned model predicts) and, in
``adapter/``, the adapter in peft's own format with the head beside it, for use with
``PeftModel.from_pretrained(base_encoder, "model/adapter")`` (not for a run from a bundle, ``--init-from``: its
adapter was trained on the bundle's weights, not the base encoder's).
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from ..engine.loop import train
from ..engine.optim import L2SP, adamw, freeze, param_groups, trainable_parameters, warmup_cosine, without_decay_on
from ..errors import TransferkitError, need
from ..heads import Classifier, LinearHead
from .base import FitResult, TrainTask, check_modality, epochs_within_budget, make_loaders, make_prepare
from .base import schedule_within_budget
from .space import Range


@dataclass
class LoraConfig:
    """LoRA adapters (Hu et al. 2021) in the attention projections, and a linear head."""

    r: int = field(default=8, metadata={"help": "rank of each adapter"})
    alpha: int = field(default=16, metadata={"help": "scaling: the update is (alpha / r) * B A"})
    lora_dropout: float = field(default=0.1, metadata={"help": "dropout on the adapter's input"})
    target_modules: str = field(default="auto", metadata={"help": "comma-separated module names, or auto (peft's "
                                                                  "choice for the architecture, e.g. "
                                                                  "query,value for BERT)"})
    epochs: int = field(default=15, metadata={"help": "maximum epochs"})
    lr: float = field(default=1e-3, metadata={"help": "peak AdamW learning rate of the adapters"})
    head_lr: float = field(default=3e-3, metadata={"help": "peak learning rate of the head"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not on biases)"})
    warmup_epochs: float = field(default=1.0, metadata={"help": "linear warm-up length, in epochs"})
    batch_size: int = field(default=16, metadata={"help": "texts per step"})
    patience: int = field(default=5, metadata={"help": "epochs without validation improvement before stopping"})
    dropout: float = field(default=0.1, metadata={"help": "dropout before the head"})
    l2sp: float = field(default=0.0, metadata={"help": "L2-SP: pull the adapters toward their starting point with "
                                                       "this strength instead of decaying them (0: off)"})

    # what `transferkit search` tries (transferkit.strategies.space): the adapters' rank and rate, the schedule
    search_space: ClassVar[dict[str, Any]] = {"r": (4, 8, 16), "lr": Range(1e-4, 3e-3, log=True),
                                              "epochs": Range(5, 20), "lora_dropout": Range(0.0, 0.2)}


def apply_lora(body: nn.Module, cfg: LoraConfig) -> nn.Module:
    """Wrap ``body`` (a transformers model) with LoRA adapters; returns the peft model. Freezes everything else."""
    need(*LoraStrategy.needs)
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets = None if cfg.target_modules == "auto" else [t.strip() for t in cfg.target_modules.split(",") if t.strip()]
    config = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.lora_dropout, target_modules=targets,
                            bias="none")
    try:
        with warnings.catch_warnings():  # peft asks transformers a deprecated question; not the user's concern
            warnings.simplefilter("ignore", FutureWarning)
            return get_peft_model(body, config)
    except ValueError as err:  # unknown architecture for "auto", or target names not in the model
        raise TransferkitError(f"LoRA cannot find its target modules ({str(err).splitlines()[0][:120]}): pass "
                               "target_modules=... naming the attention projections of this encoder.") from None


class LoraStrategy:
    name = "lora"
    modalities = ("text",)
    needs = ("peft", "lora", "Strategy 'lora'")  # module, extra, what needs it: checked when the strategy is chosen

    def __init__(self, config: LoraConfig | None = None):
        self.config = config or LoraConfig()

    def fit(self, task: TrainTask) -> FitResult:
        check_modality(self, task.modality)
        cfg = self.config
        acc = task.accelerator
        backbone = copy.deepcopy(task.backbone)
        peft_body = apply_lora(backbone.body, cfg)
        backbone.body = peft_body
        # a run from a bundle (--init-from) starts from its head, grown to these classes
        head, head_scale = (task.start.for_training(task, cfg.dropout) if task.start is not None
                            else (LinearHead(backbone.num_features, len(task.classes), dropout=cfg.dropout), 1.0))
        model = Classifier(backbone, head)
        adapters = [p for n, p in peft_body.named_parameters() if "lora_" in n]
        freeze([p for n, p in peft_body.named_parameters() if "lora_" not in n])
        penalty = L2SP(adapters, cfg.l2sp) if cfg.l2sp else None
        opt = adamw(without_decay_on(param_groups([adapters], list(head.parameters()), cfg.lr, cfg.weight_decay, 1.0,
                                                  head_lr=cfg.head_lr), penalty), task.accelerator.device)
        train_loader, val_loader = make_loaders(task, cfg.batch_size)
        # adapters save the weight gradients, not the backward pass: an epoch costs about a full fine-tuning epoch
        epochs, epoch_s = epochs_within_budget(task, cfg.epochs)
        steps, warmup, check = schedule_within_budget(task, epochs, epoch_s, len(train_loader),
                                                      int(cfg.warmup_epochs * len(train_loader)))
        sched = warmup_cosine(opt, steps, warmup_steps=warmup)
        trainable = trainable_parameters(model)
        t0 = time.monotonic()
        history, _ = train(
            model, opt, sched, train_loader, val_loader, acc, epochs=epochs, patience=cfg.patience,
            prepare=make_prepare(task, backbone), deadline=task.deadline, multi_label=task.multi_label,
            checkpoint_dir=task.work_dir / "checkpoints-lora" if task.work_dir else None, description="lora",
            stop_at=task.stop_at, budget=check, penalty=penalty,
        )
        model = acc.unwrap_model(model).cpu().eval()
        # the adapter in peft's format, for use on the hub's base encoder; a run from a bundle (--init-from) trained
        # it on the bundle's weights instead, so it would not reproduce this model there: none is written then
        files = adapter_files(model.backbone.body, model.head, base_model_id(task.spec)) if task.start is None else {}
        # merge: the bundle is one plain encoder + head, rebuilt without peft; predictions equal this model's
        model.backbone.body = model.backbone.body.merge_and_unload()
        freeze(list(model.parameters()), frozen=False)
        return FitResult(
            model=model, strategy=self.name, history=history, trainable_params=trainable,
            timings={"train_s": time.monotonic() - t0},
            details={"config": cfg.__dict__, "planned_epochs": epochs, "estimated_epoch_s": epoch_s,
                     "adapter_params": sum(p.numel() for p in adapters), "head_scale": head_scale},
            files=files,
        )


def adapter_files(peft_body: nn.Module, head: nn.Module, base_name: str) -> dict[str, bytes]:
    """The adapter in peft's format plus the head, as files for the bundle's ``adapter/`` folder."""
    from safetensors.torch import save

    out: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        peft_body.peft_config["default"].base_model_name_or_path = base_name
        peft_body.save_pretrained(tmp, save_embedding_layers=False)  # embeddings are not adapted
        for f in Path(tmp).rglob("*"):
            if f.is_file() and f.name != "README.md":
                out[f"adapter/{f.relative_to(tmp)}"] = f.read_bytes()
    out["adapter/head.safetensors"] = save({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()})
    out["adapter/head.json"] = json.dumps(head.config, indent=2).encode()
    return out


def base_model_id(spec) -> str:
    """What ``PeftModel.from_pretrained`` needs as the base: a hub id or a local folder."""
    from ..backbones.text import TEXT_BACKBONES

    if spec.source == "text-package":
        return TEXT_BACKBONES[spec.name]["hub"]
    return spec.arch


def load_adapter(base_body: nn.Module, folder: str | Path) -> tuple[nn.Module, nn.Module]:
    """``(peft_body, head)`` from a bundle's ``adapter/`` folder on top of the base encoder ``base_body``, in eval mode.

    >>> body, head = load_adapter(create_backbone("all-MiniLM-L6-v2").body, "runs/news/model/adapter")  # doctest: +SKIP
    """
    need(*LoraStrategy.needs)
    from peft import PeftModel
    from safetensors.torch import load_file

    from ..heads import build_head

    folder = Path(folder)
    body = PeftModel.from_pretrained(base_body, str(folder))
    head = build_head(json.loads((folder / "head.json").read_text()))
    head.load_state_dict(load_file(str(folder / "head.safetensors")))
    return body.eval(), head.eval()
