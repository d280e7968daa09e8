"""Strategies: what trains and how. One interface (:class:`Strategy`), a registry of names.

==========  ==============================================================================================
linear      frozen backbone, cached features, a linear/logistic head
finetune    all layers, AdamW, warm-up + cosine, layer-wise LR decay, augmentation
gradual     head first, then layer groups unfrozen on a schedule (all optimizer groups exist from the start)
scratch     same architecture, random init: the baseline
auto        linear probe, then fine-tune from it when data and budget allow; keep the best on validation
lora        (text) low-rank adapters in the attention layers + a head; adapter saved in peft format
contrastive (text) SetFit-style: contrastive pairs tune the encoder, then a linear head on its embeddings
==========  ==============================================================================================

Detectors have their own set (:mod:`.detection`): frozen, finetune, gradual, scratch and auto.

Every config is a dataclass with help text; the class defaults suit image CNNs, and other backbones start from
the config's ``<profile>_defaults`` (``text_defaults``, ``audio_defaults`` for a CNN on spectrograms,
``hf_audio_defaults``, ``speaker_defaults``).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from ..errors import TransferkitError, need
from .auto import AutoConfig, AutoStrategy
from .base import FitResult, StartHead, Strategy, TrainTask, check_modality, check_numbers, config_for
from .contrastive import ContrastiveConfig, ContrastiveStrategy
from .crossval import CrossValidated
from .finetune import FinetuneConfig, FinetuneStrategy, GradualConfig, GradualStrategy, ScratchConfig, ScratchStrategy
from .linear import LinearConfig, LinearStrategy
from .lora import LoraConfig, LoraStrategy

STRATEGIES: dict[str, tuple[type, type]] = {
    "linear": (LinearStrategy, LinearConfig),
    "finetune": (FinetuneStrategy, FinetuneConfig),
    "gradual": (GradualStrategy, GradualConfig),
    "scratch": (ScratchStrategy, ScratchConfig),
    "auto": (AutoStrategy, AutoConfig),
    "lora": (LoraStrategy, LoraConfig),
    "contrastive": (ContrastiveStrategy, ContrastiveConfig),
}
# strategies that train the network: cross-validated as a whole when no validation split is held out (linear and
# auto cross-validate inside, on cached features)
CROSS_VALIDATED = ("finetune", "gradual", "scratch", "lora", "contrastive")
TEXT_ONLY = tuple(name for name, (cls, _) in STRATEGIES.items() if getattr(cls, "modalities", None) == ("text",))


def strategy_names(modality: str = "image") -> list[str]:
    """The classification strategies built for ``modality`` (image, text, audio...), in the registry's order."""
    return [name for name, (cls, _) in STRATEGIES.items()
            if modality in getattr(cls, "modalities", ("image", "text", "audio"))]


def create_strategy(name: str, modality: str = "image", profile: str | None = None, **overrides: Any) -> Strategy:
    """``create_strategy("finetune", epochs=5)``; unknown names or options raise one clear error.

    ``modality`` (image, text, audio) refuses strategies built for other data; ``profile`` (the backbone's, by
    default the modality) picks the defaults, e.g. ``text_defaults`` (BERT-style learning rates). Detectors have
    their own registry: :func:`create_detection_strategy`.
    """
    if name == "frozen":
        raise TransferkitError("Strategy 'frozen' is for detection: for classification, linear keeps the backbone "
                               "frozen.")
    if name not in STRATEGIES:
        raise TransferkitError(f"Unknown strategy {name!r}: choose one of {', '.join(STRATEGIES)}.")
    cls, cfg_cls = STRATEGIES[name]
    check_modality(cls, modality)
    if getattr(cls, "needs", None):  # an optional package (lora: peft), named in one line with its extra
        need(*cls.needs)
    config = _configure(name, cfg_cls, profile or modality, overrides)
    if name in CROSS_VALIDATED:
        # without a validation split these choose their epoch count across folds (see strategies.crossval)
        return CrossValidated(lambda: cls(config))
    return cls(config)


def create_detection_strategy(name: str, **overrides: Any) -> Strategy:
    """A detector strategy (frozen, finetune, gradual, scratch, auto; see :mod:`.detection`) with ``overrides``."""
    from .detection import DETECTION_STRATEGIES

    if name not in DETECTION_STRATEGIES:
        raise TransferkitError(f"Strategy {name!r} is not one for detection: choose one of "
                               f"{', '.join(DETECTION_STRATEGIES)}.")
    cls, cfg_cls = DETECTION_STRATEGIES[name]
    return cls(_configure(name, cfg_cls, "detection", overrides))


def detection_strategy_names() -> list[str]:
    from .detection import DETECTION_STRATEGIES

    return list(DETECTION_STRATEGIES)


def _configure(name: str, cfg_cls: type, profile: str, overrides: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cfg_cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TransferkitError(f"Strategy {name!r} has no option {unknown[0]!r}: its options are "
                               f"{', '.join(sorted(known))}.")
    config = config_for(cfg_cls, profile, **overrides)
    check_numbers(config)
    return config


__all__ = ["STRATEGIES", "TEXT_ONLY", "config_for", "FitResult", "StartHead", "Strategy", "TrainTask",
           "create_detection_strategy", "create_strategy", "detection_strategy_names", "strategy_names"]
