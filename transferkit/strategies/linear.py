"""``linear``: the backbone stays frozen; its features are extracted once (and cached on disk), then a
linear/logistic head is trained on them. Seconds on a CPU, and the strongest choice with very few labels."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch.utils.data import DataLoader, TensorDataset

from ..engine.features import extract_features
from ..engine.loop import train
from ..engine.optim import warmup_cosine
from ..engine.sampling import EpochBalancedSampler, EpochShuffleSampler
from ..heads import Classifier, LinearHead
from .base import FitResult, TrainTask


@dataclass
class LinearConfig:
    """Linear probe on cached features."""

    epochs: int = field(default=100, metadata={"help": "passes over the cached features"})
    lr: float = field(default=3e-3, metadata={"help": "AdamW learning rate of the head"})
    weight_decay: float = field(default=1e-3, metadata={"help": "L2 regularisation of the head (decoupled)"})
    batch_size: int = field(default=64, metadata={"help": "features per step"})
    patience: int = field(default=20, metadata={"help": "epochs without validation improvement before stopping"})
    cache: bool = field(default=True, metadata={"help": "cache features on disk, keyed by backbone+preprocessing+file content"})

    # sentence embeddings are unit-length: the head needs larger weights, so a larger step, to be confident
    text_defaults: ClassVar[dict[str, Any]] = {"lr": 3e-2}
    speaker_defaults: ClassVar[dict[str, Any]] = {"lr": 3e-2}  # speaker embeddings are unit-length too


class LinearStrategy:
    name = "linear"

    def __init__(self, config: LinearConfig | None = None):
        self.config = config or LinearConfig()

    def fit(self, task: TrainTask) -> FitResult:
        cfg = self.config
        acc = task.accelerator
        t0 = time.monotonic()
        ftr, hit_tr = extract_features(task.backbone, task.train, acc, cache=cfg.cache, description="features (train)")
        fva, hit_va = extract_features(task.backbone, task.val, acc, cache=cfg.cache, description="features (val)")
        t_feat = time.monotonic() - t0
        head = LinearHead(task.backbone.num_features, len(task.classes))
        bs = min(cfg.batch_size, len(ftr))
        if task.balance == "sampler" and not task.multi_label:
            sampler = EpochBalancedSampler(task.train.targets, task.seed)
        else:
            sampler = EpochShuffleSampler(len(ftr), task.seed)
        train_loader = DataLoader(TensorDataset(ftr, task.train.targets), batch_size=bs, sampler=sampler)
        val_loader = DataLoader(TensorDataset(fva, task.val.targets), batch_size=256)
        opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps = cfg.epochs * len(train_loader)
        sched = warmup_cosine(opt, steps, warmup_steps=min(10, steps // 10))
        t1 = time.monotonic()
        history, _ = train(
            head, opt, sched, train_loader, val_loader, acc, epochs=cfg.epochs, patience=cfg.patience,
            deadline=task.deadline, description="linear head", multi_label=task.multi_label,
            class_weights=task.class_weights, balanced=task.balanced,
        )
        head = acc.unwrap_model(head).cpu()
        model = Classifier(task.backbone, head)
        return FitResult(
            model=model,
            strategy=self.name,
            history=history,
            trainable_params=sum(p.numel() for p in head.parameters()),
            timings={"features_s": t_feat, "train_s": time.monotonic() - t1},
            details={"feature_cache_hit": bool(hit_tr and hit_va), "config": cfg.__dict__},
        )
