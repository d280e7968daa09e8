"""Strategies: what trains and how. One interface (:class:`Strategy`), a registry of names.

==========  ==============================================================================================
linear      frozen backbone, cached features, a linear/logistic head
finetune    all layers, AdamW, warm-up + cosine, layer-wise LR decay, augmentation
gradual     head first, then layer groups unfrozen on a schedule (all optimizer groups exist from the start)
scratch     same architecture, random init: the baseline
auto        linear probe, then fine-tune from it when data and budget allow; keep the best on validation
==========  ==============================================================================================
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from ..errors import TransferkitError
from .auto import AutoConfig, AutoStrategy
from .base import FitResult, Strategy, TrainTask
from .finetune import FinetuneConfig, FinetuneStrategy, GradualConfig, GradualStrategy, ScratchConfig, ScratchStrategy
from .linear import LinearConfig, LinearStrategy

STRATEGIES: dict[str, tuple[type, type]] = {
    "linear": (LinearStrategy, LinearConfig),
    "finetune": (FinetuneStrategy, FinetuneConfig),
    "gradual": (GradualStrategy, GradualConfig),
    "scratch": (ScratchStrategy, ScratchConfig),
    "auto": (AutoStrategy, AutoConfig),
}


def create_strategy(name: str, **overrides: Any) -> Strategy:
    """``create_strategy("finetune", epochs=5)``; unknown names or options raise one clear error."""
    if name not in STRATEGIES:
        raise TransferkitError(f"Unknown strategy {name!r}: choose one of {', '.join(STRATEGIES)}.")
    cls, cfg_cls = STRATEGIES[name]
    known = {f.name for f in fields(cfg_cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TransferkitError(f"Strategy {name!r} has no option {unknown[0]!r}: its options are {', '.join(sorted(known))}.")
    return cls(replace(cfg_cls(), **overrides))


__all__ = ["STRATEGIES", "FitResult", "Strategy", "TrainTask", "create_strategy"]
