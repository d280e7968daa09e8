"""``contrastive``: SetFit-style few-shot learning (Tunstall et al. 2022), in two steps.

1. Contrastive pairs tune the encoder: pairs of training texts with the same label should embed close
   (cosine similarity 1), pairs with different labels far apart (0); multi-label pairs aim at the Jaccard
   similarity of their label sets. With n labelled texts there are about n^2 / 2 pairs, which is where the
   extra signal comes from when n is tiny.
2. A linear head is trained on the tuned encoder's embeddings (the ``linear`` strategy, unchanged).
"""

from __future__ import annotations

import copy
import dataclasses
import random
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..engine.accel import loader_options
from ..engine.inference import text_batch
from ..engine.trainer import fit
from ..engine.optim import adamw, param_groups, trainable_parameters, warmup_cosine
from ..errors import TransferkitError
from ..heads import Classifier
from .base import FitResult, TrainTask, check_modality, config_for
from .linear import LinearConfig, LinearStrategy
from .space import Range


@dataclass
class ContrastiveConfig:
    """Contrastive pairs tune the encoder, then a linear head is fitted on its embeddings."""

    pairs_per_example: int = field(default=20, metadata={"help": "positive and as many negative pairs drawn per "
                                                                 "training text (SetFit's num_iterations)"})
    max_pairs: int = field(default=800, metadata={"help": "upper bound on pairs per epoch (CPU time grows with it)"})
    epochs: int = field(default=1, metadata={"help": "passes over the pairs"})
    lr: float = field(default=2e-5, metadata={"help": "peak AdamW learning rate of the encoder"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not on norms and biases)"})
    batch_size: int = field(default=16, metadata={"help": "pairs per step"})
    warmup_fraction: float = field(default=0.1, metadata={"help": "share of the steps spent warming up"})

    # what `transferkit search` tries (transferkit.strategies.space): the encoder's rate, passes, pairs drawn
    search_space: ClassVar[dict[str, Any]] = {"lr": Range(5e-6, 1e-4, log=True), "epochs": Range(1, 3),
                                              "pairs_per_example": Range(10, 40)}


def make_pairs(targets: torch.Tensor, per_example: int, max_pairs: int, seed: int) -> list[tuple[int, int, float]]:
    """Balanced positive/negative pairs ``(i, j, target similarity)``, drawn with a fixed seed.

    Rounds over the training texts in shuffled order; each round gives every text one partner with the same
    label(s) and one with other labels, until ``per_example`` rounds or ``max_pairs`` pairs. Single-label
    targets: 1 for the same class, 0 otherwise. Multi-label: the Jaccard similarity of the label sets.
    """
    rng = random.Random(seed)
    n = len(targets)
    keys = ([int(t) for t in targets] if targets.ndim == 1
            else [tuple(torch.nonzero(t).flatten().tolist()) for t in targets])
    by_key: dict[object, list[int]] = {}
    for i, k in enumerate(keys):
        by_key.setdefault(k, []).append(i)
    others = {k: [i for i in range(n) if keys[i] != k] for k in by_key}  # O(n x distinct keys), once

    def similarity(i: int, j: int) -> float:
        if targets.ndim == 1:
            return float(keys[i] == keys[j])
        a, b = set(keys[i]), set(keys[j])
        return len(a & b) / len(a | b) if a | b else 1.0

    pairs: list[tuple[int, int, float]] = []
    order = list(range(n))
    for _ in range(per_example):
        rng.shuffle(order)
        for i in order:
            same = by_key[keys[i]]
            if len(same) > 1:
                j = same[rng.randrange(len(same) - 1)]
                j = same[-1] if j == i else j  # any member but i itself
                pairs.append((i, j, similarity(i, j)))
            if others[keys[i]]:
                j = rng.choice(others[keys[i]])
                pairs.append((i, j, similarity(i, j)))
            if len(pairs) >= max_pairs:
                return pairs[:max_pairs]
    return pairs


class PairDataset(Dataset):
    def __init__(self, data, pairs: list[tuple[int, int, float]]):
        self.ids, self.mask, self.pairs = data.input_ids, data.attention_mask, pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, k: int):
        i, j, y = self.pairs[k]
        return self.ids[i], self.mask[i], self.ids[j], self.mask[j], torch.tensor(y, dtype=torch.float32)


class ContrastiveStrategy:
    name = "contrastive"
    modalities = ("text",)

    def __init__(self, config: ContrastiveConfig | None = None):
        self.config = config or ContrastiveConfig()

    def fit(self, task: TrainTask) -> FitResult:
        check_modality(self, task.modality)
        cfg = self.config
        t0 = time.monotonic()
        encoder = copy.deepcopy(task.backbone)
        pairs = make_pairs(task.train.targets, cfg.pairs_per_example, cfg.max_pairs, task.seed)
        if not pairs:
            raise TransferkitError("No contrastive pairs: every class needs at least one training example and there "
                                   "must be two classes.")
        losses = self.tune(encoder, pairs, task) if cfg.epochs > 0 else []
        t_tune = time.monotonic() - t0
        # step 2: a fresh linear probe on the tuned encoder (its features differ from the pretrained ones)
        # the bundle's head rows (--init-from) belong to the encoder before tuning: the probe refits every row here
        head_task = dataclasses.replace(task, backbone=encoder.eval(), start=None)
        # without a validation split the run's estimate comes from cross-validating this whole strategy
        # (strategies.crossval), so the probe's own repeated estimate would only cost time
        probe = LinearStrategy(config_for(LinearConfig, "text", cache=False, repeats=1)).fit(head_task)
        model = Classifier(encoder, probe.model.head)
        return FitResult(
            model=model, strategy=self.name, history=probe.history,
            trainable_params=trainable_parameters(model),
            timings={"contrastive_s": t_tune, **probe.timings},
            details={"config": cfg.__dict__, "pairs": len(pairs), "positive_pairs": sum(p[2] == 1.0 for p in pairs),
                     "contrastive_loss": losses},
        )

    def tune(self, encoder: nn.Module, pairs: list[tuple[int, int, float]], task: TrainTask) -> list[float]:
        """Cosine-similarity regression on pairs (sentence-transformers' CosineSimilarityLoss); returns loss per
        epoch. Runs on the engine with no validation (the last weights are kept) and the time budget checked
        before each step: one epoch over many pairs can be most of the budget."""
        cfg = self.config
        loader = DataLoader(PairDataset(task.train, pairs), batch_size=cfg.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(task.seed),
                            **loader_options(task.workers, task.accelerator.device))
        opt = adamw(param_groups(encoder.layer_groups(), [], cfg.lr, cfg.weight_decay), task.accelerator.device)
        steps = cfg.epochs * len(loader)
        sched = warmup_cosine(opt, steps, warmup_steps=int(cfg.warmup_fraction * steps))
        history, _ = fit(PairTuning(), encoder, opt, sched, loader, task.accelerator, epochs=cfg.epochs,
                         deadline=task.deadline, budget="step", description="contrastive pairs")
        return [rec.train_loss for rec in history.epochs]


@dataclass
class PairEpoch:
    epoch: int
    train_loss: float  # mean squared error of the pairs' cosine similarities, over every process's pairs
    lr: float
    seconds: float


class PairTuning:
    """The engine :class:`~transferkit.engine.trainer.Method` of the pair tuning: no validation, the last weights
    kept (``better = None``)."""

    record = PairEpoch
    better = None

    def start_epoch(self, epoch: int) -> None:
        pass

    def step(self, model: nn.Module, batch) -> tuple[torch.Tensor, int]:
        ids_a, mask_a, ids_b, mask_b, y = batch
        # both sides in one forward pass (rows share the set's padding width; trimmed to the longest)
        emb = model(text_batch(torch.cat([ids_a, ids_b]), torch.cat([mask_a, mask_b]))).float()
        a, b = emb[: len(y)], emb[len(y):]
        return nn.functional.mse_loss(nn.functional.cosine_similarity(a, b), y), len(y)

    def train_scores(self, seen: float) -> dict[str, float]:
        return {}

    def evaluate(self, model: nn.Module, epoch: int) -> tuple[dict[str, float], str | None]:
        return {}, None

    def status(self, record: PairEpoch) -> str:
        return f"loss {record.train_loss:.4f}"
