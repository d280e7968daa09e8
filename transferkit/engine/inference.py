"""Batched, gradient-free forward passes: features for the probe, logits for prediction.

Images arrive as uint8 tensors at the backbone's input size; texts as
:class:`~transferkit.data.text.EncodedTexts` (token ids), run in batches of similar length so little time goes to
padding, and returned in the original order; audio as :class:`~transferkit.data.audio.DecodedAudio` windows, whose
outputs are averaged per recording.
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


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``t`` on ``device``; to a GPU from pinned memory without blocking, so the copy of the next batch overlaps
    the current batch's compute (the caller's ``.cpu()`` of the outputs is where the stream is waited for).
    ``t`` is a fresh batch (indexing copies), so pinning it costs one host copy and no one else sees it."""
    device = torch.device(device)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def text_batch(ids: torch.Tensor, mask: torch.Tensor,
               device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """Token ids and mask -> model input, trimmed to the longest text in the batch."""
    length = max(1, int(mask.sum(1).max().item())) if len(mask) else 1
    batch = {"input_ids": ids[:, :length].long(), "attention_mask": mask[:, :length].long()}
    return {k: to_device(v, device) for k, v in batch.items()} if device is not None else batch


def average_windows(out: torch.Tensor, owner: torch.Tensor, n: int) -> torch.Tensor:
    """Per-window rows ``(M, D)`` -> per-recording means ``(n, D)``."""
    sums = torch.zeros((n, *out.shape[1:]), dtype=out.dtype).index_add_(0, owner, out)
    counts = torch.bincount(owner, minlength=n).clamp(min=1).to(out.dtype)
    return sums / counts.view(-1, *([1] * (out.dim() - 1)))


def forward_inputs(
    model: nn.Module,
    data: Any,
    pre: PreprocessConfig | Any = None,
    *,
    device: torch.device | str = "cpu",
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    batch_size: int = 64,
    description: str = "forward",
) -> torch.Tensor:
    """``model`` outputs (eval mode, no gradients) for data prepared by a run, in input order:

    - ``DecodedImages``: uint8 pixels normalised with ``pre`` (the backbone's mean/std), channels_last;
    - ``EncodedTexts``: longest texts first, so batches of similar length waste little on padding;
    - ``DecodedAudio``: every window, then averaged over each recording's windows (mean logits for a
      classifier, mean features for a backbone).

    Texts and audio run in batches of at most 32. Encoded data of any other kind (a task of one's own) supply their
    batches themselves: ``data.model_input(indices, device)``.
    """
    model = model.to(device).eval()
    audio = hasattr(data, "waves")
    if hasattr(data, "model_input"):
        n, order = len(data), torch.arange(len(data))

        def batch_at(idx: torch.Tensor) -> Any:
            return data.model_input(idx, device)

    elif audio:
        n, order, batch_size = len(data.waves), torch.arange(len(data.waves)), min(batch_size, 32)

        def batch_at(idx: torch.Tensor) -> torch.Tensor:
            return to_device(data.waves[idx], device).float()

    elif hasattr(data, "input_ids"):
        order, batch_size = torch.argsort(data.attention_mask.sum(1), descending=True, stable=True), min(batch_size, 32)
        n = len(data)

        def batch_at(idx: torch.Tensor) -> dict[str, torch.Tensor]:
            return text_batch(data.input_ids[idx], data.attention_mask[idx], device)

    else:
        model = model.to(memory_format=torch.channels_last)
        n, order = len(data.pixels), torch.arange(len(data.pixels))

        def batch_at(idx: torch.Tensor) -> torch.Tensor:
            return normalize(to_device(data.pixels[idx], device), pre).contiguous(memory_format=torch.channels_last)

    out = _forward(model, n, batch_at, order, autocast, batch_size, description)
    return average_windows(out, data.owner, len(data)) if audio else out
