"""Batched, gradient-free forward passes over uint8 images: features for the probe, logits for prediction."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from ..backbones.protocol import PreprocessConfig
from ..console import progress
from ..data.images import normalize


@torch.no_grad()
def forward_batches(
    model: nn.Module,
    pixels: torch.Tensor,
    pre: PreprocessConfig,
    *,
    device: torch.device | str = "cpu",
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    batch_size: int = 64,
    description: str = "forward",
) -> torch.Tensor:
    """``model`` outputs (float32, on the CPU) for uint8 images ``(N, 3, H, W)``, in eval mode and
    channels_last, each batch under a fresh ``autocast()`` context (e.g. ``accelerator.autocast``), with a
    progress bar."""
    model = model.to(device).eval().to(memory_format=torch.channels_last)
    out = []
    with progress() as bar:
        task = bar.add_task(description, total=len(pixels), status="")
        for start in range(0, len(pixels), batch_size):
            x = normalize(pixels[start : start + batch_size].to(device), pre).contiguous(memory_format=torch.channels_last)
            with autocast():
                y = model(x)
            out.append(y.float().cpu())
            bar.advance(task, len(x))
    return torch.cat(out) if out else torch.zeros(0)
