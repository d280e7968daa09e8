"""Batched, gradient-free forward passes: features for the probe, logits for prediction.

Images arrive as uint8 tensors at the backbone's input size; texts as :class:`EncodedTexts` (token ids), run in
batches of similar length so little time goes to padding, and returned in the original order; audio as
:class:`DecodedAudio` windows, whose outputs are averaged per recording.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from ..backbones.protocol import PreprocessConfig
from ..console import progress
from ..data.images import normalize


@torch.no_grad()
def _forward(
    model: nn.Module,
    n: int,
    batch_at: Callable[[torch.Tensor], Any],
    order: torch.Tensor,
    autocast: Callable[[], AbstractContextManager],
    batch_size: int,
    description: str,
) -> torch.Tensor:
    """Outputs (float32, CPU) for examples ``0..n-1`` run in ``order``, returned in input order, with a progress
    bar; each batch under a fresh ``autocast()`` context (e.g. ``accelerator.autocast``)."""
    out: list[torch.Tensor] = []
    with progress() as bar:
        task = bar.add_task(description, total=n, status="")
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            with autocast():
                y = model(batch_at(idx))
            out.append(y.float().cpu())
            bar.advance(task, len(idx))
    if not out:
        return torch.zeros(0)
    result = torch.empty((n, *out[0].shape[1:]), dtype=torch.float32)
    result[order] = torch.cat(out)
    return result


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
    """``model`` outputs for uint8 images ``(N, 3, H, W)``, in eval mode and channels_last."""
    model = model.to(device).eval().to(memory_format=torch.channels_last)

    def batch_at(idx: torch.Tensor) -> torch.Tensor:
        return normalize(pixels[idx].to(device), pre).contiguous(memory_format=torch.channels_last)

    return _forward(model, len(pixels), batch_at, torch.arange(len(pixels)), autocast, batch_size, description)


def text_batch(ids: torch.Tensor, mask: torch.Tensor, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """Token ids and mask -> model input, trimmed to the longest text in the batch."""
    length = max(1, int(mask.sum(1).max().item())) if len(mask) else 1
    batch = {"input_ids": ids[:, :length].long(), "attention_mask": mask[:, :length].long()}
    return {k: v.to(device) for k, v in batch.items()} if device is not None else batch


def forward_texts(
    model: nn.Module,
    data: Any,
    *,
    device: torch.device | str = "cpu",
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    batch_size: int = 32,
    description: str = "forward",
) -> torch.Tensor:
    """``model`` outputs for :class:`~transferkit.data.text.EncodedTexts`, longest texts first (batches of
    similar length waste little on padding), returned in the input order."""
    model = model.to(device).eval()
    order = torch.argsort(data.attention_mask.sum(1), descending=True, stable=True)

    def batch_at(idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return text_batch(data.input_ids[idx], data.attention_mask[idx], device)

    return _forward(model, len(data), batch_at, order, autocast, batch_size, description)


def forward_audio(
    model: nn.Module,
    data: Any,
    *,
    device: torch.device | str = "cpu",
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    batch_size: int = 32,
    description: str = "forward",
) -> torch.Tensor:
    """``model`` outputs for :class:`~transferkit.data.audio.DecodedAudio`: run on every window, then averaged over
    each recording's windows (mean logits for a classifier, mean features for a backbone)."""
    model = model.to(device).eval()
    n_windows = len(data.waves)

    def batch_at(idx: torch.Tensor) -> torch.Tensor:
        return data.waves[idx].to(device).float()

    out = _forward(model, n_windows, batch_at, torch.arange(n_windows), autocast, batch_size, description)
    return average_windows(out, data.owner, len(data))


def average_windows(out: torch.Tensor, owner: torch.Tensor, n: int) -> torch.Tensor:
    """Per-window rows ``(M, D)`` -> per-recording means ``(n, D)``."""
    sums = torch.zeros((n, *out.shape[1:]), dtype=out.dtype).index_add_(0, owner, out)
    counts = torch.bincount(owner, minlength=n).clamp(min=1).to(out.dtype)
    return sums / counts.view(-1, *([1] * (out.dim() - 1)))


def forward_inputs(model: nn.Module, data: Any, pre: Any, **kwargs: Any) -> torch.Tensor:
    """Dispatch on the data: uint8 images (``DecodedImages``), tokenised texts (``EncodedTexts``) or audio
    windows (``DecodedAudio``)."""
    if hasattr(data, "waves"):
        kwargs["batch_size"] = min(kwargs.get("batch_size", 32), 32)
        return forward_audio(model, data, **kwargs)
    if hasattr(data, "input_ids"):
        kwargs["batch_size"] = min(kwargs.get("batch_size", 32), 32)
        return forward_texts(model, data, **kwargs)
    return forward_batches(model, data.pixels, pre, **kwargs)
