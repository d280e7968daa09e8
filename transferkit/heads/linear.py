"""A linear (logistic) classification head, and :class:`Classifier` = backbone -> head."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class LinearHead(nn.Module):
    """Dropout, then one linear layer from pooled features to class logits."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.config = {"type": "linear", "in_features": int(in_features), "num_classes": int(num_classes),
                       "dropout": float(dropout)}
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_features, num_classes)
        # Small init: the first steps then barely disturb the pretrained features they sit on.
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(features))


def class_probabilities(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Logits -> probabilities in float32: one sigmoid per class for a multi-label model, else a softmax."""
    logits = logits.float()
    return torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=1)


def build_head(config: dict[str, Any]) -> nn.Module:
    """Rebuild a head from the ``config`` dict stored in a bundle."""
    if config.get("type") != "linear":
        raise ValueError(f"unknown head type {config.get('type')!r}")
    return LinearHead(config["in_features"], config["num_classes"], config.get("dropout", 0.0))


class Classifier(nn.Module):
    """Backbone input (normalised images ``(B, 3, H, W)`` or a tokenised batch) -> logits ``(B, num_classes)``."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, inputs: Any) -> torch.Tensor:
        return self.head(self.backbone(inputs))

