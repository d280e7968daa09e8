"""Stop at the first non-finite loss: past it every weight turns NaN, and whatever is saved predicts nonsense.

Every training loop (the engine's epochs, pre-training's steps) calls :func:`stop_if_diverged` after computing a
batch's loss and before stepping the optimizer, so the weights are never updated from a NaN or infinite loss and
no bundle or backbone is written from a diverged model.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import DivergedError

__all__ = ["DivergedError", "peak_lr", "stop_if_diverged"]  # DivergedError lives in transferkit.errors


def peak_lr(optimizer: Any) -> float:
    """The largest learning rate the optimizer's groups were given (a scheduler's ``initial_lr``): the one the user
    set, not where the warm-up stands."""
    return max(g.get("initial_lr", g["lr"]) for g in optimizer.param_groups)


def stop_if_diverged(loss: Any, accelerator: Any, *, where: str, optimizer: Any) -> None:
    """Raise :class:`DivergedError` (one line: where, the loss, the peak learning rate, what to do) when ``loss`` is
    not finite on any process; ``where`` is e.g. ``"epoch 2, batch 5"``. Every process raises together."""
    value = float(loss.detach().float().item())
    bad = not math.isfinite(value)
    if accelerator is not None and getattr(accelerator, "num_processes", 1) > 1:
        import torch

        flag = torch.tensor([1.0 if bad else 0.0], device=accelerator.device)
        bad = bool(accelerator.reduce(flag, "sum").item() > 0)
    if bad:
        raise DivergedError(f"Training diverged: the loss became {value} at {where} (learning rate "
                            f"{peak_lr(optimizer):.3g}); nothing was saved from it: lower --lr (e.g. ten times) and "
                            "run again.")
