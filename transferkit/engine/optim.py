"""Small free functions for what trains and how fast: freezing, parameter groups, the LR schedule."""

from __future__ import annotations

import math

import torch
from torch import nn


def freeze(params: list[nn.Parameter], frozen: bool = True) -> None:
    for p in params:
        p.requires_grad_(not frozen)


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _split_decay(params: list[nn.Parameter]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    # Norm weights and biases (1-D) get no weight decay, as in timm and BERT recipes.
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return decay, no_decay


def param_groups(
    layer_groups: list[list[nn.Parameter]],
    head_params: list[nn.Parameter],
    lr: float,
    weight_decay: float,
    layer_decay: float = 1.0,
    head_lr: float | None = None,
) -> list[dict]:
    """Optimizer groups with layer-wise learning-rate decay (LLRD).

    The head trains at ``head_lr`` (default ``lr``); backbone group ``i`` of ``G`` (input side first) at
    ``lr * layer_decay**(G - i)``, so early, generic layers move least. Every group exists from the start, frozen or
    not: gradual unfreezing only toggles ``requires_grad``, so optimizer state and resume stay consistent. Each group
    records its ``layer`` index (``G`` for the head) for the unfreezing schedule.
    """
    n = len(layer_groups)
    groups = []
    for i, params in enumerate([*layer_groups, head_params]):
        group_lr = head_lr if (i == n and head_lr is not None) else lr * layer_decay ** (n - i)
        decay, no_decay = _split_decay(params)
        for ps, wd in ((decay, weight_decay), (no_decay, 0.0)):
            if ps:
                groups.append({"params": ps, "lr": group_lr, "weight_decay": wd, "layer": i})
    return groups


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int,
                  warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to each group's lr, then cosine decay to zero at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def adamw(params: list[dict] | list[nn.Parameter], device: torch.device | str | None = None,
          **kwargs) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` with the fastest update for ``device``: ``fused=True`` on CUDA (one kernel for every
    parameter instead of several per tensor), ``foreach=True`` elsewhere (batched ops across tensors on the CPU).

    The parameters may still be on the CPU when this is called: fused AdamW checks their device at the first
    ``step()``, after ``accelerator.prepare`` has moved the model. Every strategy and pre-training builds its
    optimizer here, so the choice is made in one place.

    Args:
        params: parameters or parameter groups (e.g. from :func:`param_groups`).
        device: where the parameters will train (``accelerator.device``); None: where the first one is now.
        **kwargs: AdamW's own settings (``lr``, ``weight_decay``, ...).

    Returns:
        The optimizer.

    Examples:

        >>> opt = adamw(model.parameters(), accelerator.device, lr=1e-3)
    """
    params = list(params)
    if device is None:
        first = params[0]["params"][0] if params and isinstance(params[0], dict) else (params[0] if params else None)
        device = first.device if first is not None else "cpu"
    fast = {"fused": True} if torch.device(device).type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(params, **fast, **kwargs)


def compile_module(module: nn.Module) -> nn.Module:
    """``torch.compile(module)``: the returned wrapper (an ``OptimizedModule``) shares ``module``'s parameters, so
    training it trains ``module``; keep ``module`` for saving (the wrapper's state_dict keys carry an ``_orig_mod.``
    prefix). The first forward pass compiles (tens of seconds to minutes; again when the mode or shapes change)."""
    return torch.compile(module)


class L2SP:
    """The L2-SP penalty (Li, Grandvalet and Davoine, ICML 2018): ``alpha / 2 * sum ||w - w0||^2`` over ``weights`` (a
    module or a list of parameters), ``w0`` being their values now (the starting point: pretrained weights, or a
    bundle's). Added to the training loss, it keeps fine-tuning near what transfer brought instead of decaying the
    weights toward zero. Parameters that do not train at a given step (frozen by gradual unfreezing) add nothing.

    The strategies that use it (``l2sp=`` on ``finetune``, ``gradual``, ``lora`` and ``auto``) drop AdamW's weight
    decay on these weights: the penalty takes its place, as in the paper; the new head keeps its decay.

    Examples:

        >>> penalty = L2SP(backbone, alpha=0.01)
        >>> loss = criterion(model(x), y) + penalty()
    """

    def __init__(self, weights: nn.Module | list[nn.Parameter], alpha: float):
        self.alpha = float(alpha)
        params = weights.parameters() if isinstance(weights, nn.Module) else weights
        self.pairs = [(p, p.detach().clone()) for p in params]
        self.params = {id(p) for p, _ in self.pairs}

    def __call__(self) -> torch.Tensor:
        total = None
        for i, (p, p0) in enumerate(self.pairs):
            if not p.requires_grad:
                continue
            if p0.device != p.device:  # the model moved to the accelerator after the snapshot
                p0 = p0.to(p.device)
                self.pairs[i] = (p, p0)
            term = (p.float() - p0.float()).pow(2).sum()
            total = term if total is None else total + term
        if total is None:
            return torch.zeros(())
        return 0.5 * self.alpha * total

    def covers(self, p: nn.Parameter) -> bool:
        return id(p) in self.params


def without_decay_on(groups: list[dict], penalty: L2SP | None) -> list[dict]:
    """``groups`` (from :func:`param_groups`) with no weight decay on the weights ``penalty`` pulls toward their
    start (L2-SP replaces decay there); unchanged without a penalty."""
    if penalty is None:
        return groups
    out = []
    for g in groups:
        pulled = [p for p in g["params"] if penalty.covers(p)]
        rest = [p for p in g["params"] if not penalty.covers(p)]
        if pulled:
            out.append({**g, "params": pulled, "weight_decay": 0.0})
        if rest:
            out.append({**g, "params": rest})
    return out
