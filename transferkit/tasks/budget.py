"""``--budget`` is the wall time of the whole run: reading the data, training, the scratch baseline when one is
asked for, scoring the validation and test sets, and writing the bundle and report.

:func:`plan_budget` splits it once the data are read and the backbone is built: what reading took is spent; the
scoring is timed up front (a forward pass of the backbone on a few training examples, scaled to the rows that will
be scored) and kept back with a few seconds for the report; what is left trains, shared equally with the scratch
baseline when there is one, so both are given the same time.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

REPORT_SECONDS = 4.0  # the bundle (safetensors), metrics.json, plots and report.md: about 2 s here; kept with margin


@dataclass
class BudgetPlan:
    """How a run's budget is spent (seconds); ``train_deadline``/``end`` are ``time.monotonic()`` values."""

    requested_s: float
    spent_s: float  # before training: reading and decoding the data, ranking backbones, building the backbone
    scoring_s: float  # kept back: scoring the validation and test sets (twice with a scratch baseline)
    report_s: float
    train_s: float  # the strategy's training time
    scratch_s: float  # the scratch baseline's training time (0 without one)
    train_deadline: float
    end: float  # when the run must be over

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in asdict(self).items() if k not in ("train_deadline", "end")}

    def needed_s(self) -> float:
        """What the run takes besides training: reading, scoring and the report."""
        return self.spent_s + self.scoring_s + self.report_s

    def describe(self) -> str:
        scratch = f" + {self.scratch_s:.0f}s for the scratch baseline" if self.scratch_s else ""
        return (f"budget {self.requested_s:.0f}s: {self.spent_s:.0f}s spent reading the data, {self.train_s:.0f}s to "
                f"train{scratch}, ~{self.scoring_s:.0f}s kept to score and ~{self.report_s:.0f}s for the report")


def plan_budget(seconds: float, t_start: float, scoring_s: float, scratch: bool) -> BudgetPlan:
    """Split ``seconds`` (counted from ``t_start``, a ``time.monotonic()`` value) between what was spent, training
    (and the scratch baseline, equally), scoring (``scoring_s``, measured by the task) and the report."""
    now = time.monotonic()
    end = t_start + seconds
    spent = now - t_start
    scoring = scoring_s * (2 if scratch else 1)
    left = max(0.0, end - now - scoring - REPORT_SECONDS)
    train = left / 2 if scratch else left
    return BudgetPlan(requested_s=seconds, spent_s=spent, scoring_s=scoring, report_s=REPORT_SECONDS, train_s=train,
                      scratch_s=left - train if scratch else 0.0, train_deadline=now + train, end=end)


def plan_run(task: Any, train: Any, prepared: Any, settings: Any, t_start: float) -> BudgetPlan:
    """The plan of a run with ``settings.seconds``: its scoring timed by ``task``, said in one line, and a warning
    when reading and scoring leave nothing to train."""
    from ..console import info, warn

    plan = plan_budget(settings.seconds, t_start, task.scoring_seconds(train, prepared),
                       settings.scratch_baseline and not settings.strategy.startswith("scratch"))
    info(plan.describe())
    if plan.train_s == 0:
        warn(f"budget {settings.seconds:g}s: reading the data took {plan.spent_s:.0f}s and scoring will take "
             f"~{plan.scoring_s:.0f}s, so no time is left to train: the strategy trains its minimum and the run ends "
             f"after the budget; give at least --budget {plan.needed_s() * 2:.0f}s")
    return plan


def seconds_per_row(backbone: Any, batch: Any, rows: int, device: Any, autocast: Any = None) -> float:
    """Seconds of one row's forward pass in evaluation mode (``batch`` of ``rows`` rows, after a warm-up), on
    ``device`` under ``autocast`` (a context-manager factory, e.g. ``accelerator.autocast``): what scoring costs per
    row (a head on top is negligible). The backbone goes back to its device and mode afterwards."""
    from contextlib import nullcontext

    import torch

    was_training = backbone.training
    home = next(backbone.parameters()).device
    backbone.to(device).eval()
    x = {k: v.to(device) for k, v in batch.items()} if isinstance(batch, dict) else batch.to(device)
    try:
        with torch.inference_mode(), (autocast or nullcontext)():
            backbone(x)  # warm-up: the first call allocates and picks kernels
            t = time.monotonic()
            backbone(x)
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize()  # kernels run asynchronously: wait for them before reading the clock
            return (time.monotonic() - t) / max(1, rows)
    finally:
        backbone.to(home).train(was_training)
