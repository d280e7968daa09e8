"""The training engine: one epoch loop for every method that trains in epochs.

The engine owns what every such loop must get right the same way: epochs, the time budget, early stopping,
keeping the best epoch's weights, an atomic checkpoint per epoch with exact resume, progress bars, and
Accelerate (prepare, autocast, backward, reduction across processes, all ranks leaving together). What differs
between methods is passed in as a :class:`Method`: the training step, the per-epoch evaluation, the epoch record
type and the rule that says which epoch is better. Classification (:func:`transferkit.engine.loop.train`),
detection (:func:`transferkit.engine.detection.train_detector`) and the contrastive strategy's pair tuning use it.

Example (a method that regresses ``y`` on ``x``, keeping the epoch with the lowest training loss)::

    @dataclass
    class Epoch:
        epoch: int
        train_loss: float
        lr: float
        seconds: float

    class Regression:
        record = Epoch

        def start_epoch(self, epoch): pass
        def step(self, model, batch):
            x, y = batch
            return nn.functional.mse_loss(model(x), y), len(y)
        def train_scores(self, seen): return {}
        def evaluate(self, model, epoch): return {}, None
        def better(self, a, b): return b is None or a.train_loss < b.train_loss
        def status(self, rec): return f"loss {rec.train_loss:.3f}"

    history, best = fit(Regression(), model, optimizer, scheduler, loader, make_accelerator(), epochs=10)
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import nn

from ..console import progress
from .accel import is_main_process
from .divergence import stop_if_diverged
from .events import notify

CHECKPOINT = "last.pt"
FIRST_STEPS = 5  # step times kept in History.first_steps


def compile_seconds(first_steps: list[float]) -> float | None:
    """What the first training step cost beyond a normal one (the median of the later ones): torch.compile's
    tracing and code generation when the network was compiled. None with fewer than two steps."""
    if len(first_steps) < 2:
        return None
    rest = sorted(first_steps[1:])
    return max(0.0, first_steps[0] - rest[len(rest) // 2])


@dataclass
class History:
    """The epoch records of a run (dataclasses of the method's ``record`` type), the index of the epoch whose
    weights were kept, and why training stopped: "completed", "early stopping", "time budget", or the reason a
    method's evaluation gave."""

    epochs: list[Any] = field(default_factory=list)
    best_epoch: int = -1
    stopped: str = "completed"
    # seconds of the first few training steps this process ran (each ends in loss.item(), so the GPU has finished):
    # the first minus a later one is the start-up cost, e.g. torch.compile's (see compile_seconds)
    first_steps: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: an epoch that was not validated (the final model of a cross-validated run) has None scores."""
        epochs = [{k: None if isinstance(v, float) and v != v else v for k, v in asdict(r).items()}
                  for r in self.epochs]
        return {"epochs": epochs, "best_epoch": self.best_epoch, "stopped": self.stopped}

    @property
    def best(self) -> Any:
        return self.epochs[self.best_epoch]


class Method(Protocol):
    """What a training method supplies to :func:`fit`; the engine does the rest.

    ``record`` is the epoch record dataclass. The engine fills its fields ``epoch``, ``train_loss``, ``lr`` and
    ``seconds``, and ``stage`` and ``finished_at`` (``time.time()`` at the epoch's end) where the record declares
    them; the method's :meth:`train_scores` and :meth:`evaluate` give the other fields by name.

    ``better(a, b)`` says whether record ``a`` beats the best so far ``b`` (None before the first epoch). A method
    that sets ``better = None`` keeps its last epoch and never stops early; the engine then keeps no extra copy of
    the weights (a large encoder would need twice its memory).
    """

    record: type
    better: Callable[[Any, Any | None], bool] | None

    def start_epoch(self, epoch: int) -> None:
        """Reset the running training metric (called after ``model.train()`` and ``on_epoch_start``)."""

    def step(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
        """One batch -> (mean loss to minimise, number of examples it averages over); runs under autocast. May add
        to the method's own running metric. A method that adds a regulariser's term to the loss sets ``self.added``
        to its value: the history records the loss without it."""

    def train_scores(self, seen: float) -> dict[str, float]:
        """The running metric over the epoch, the same on every process (reduce it), e.g. ``{"train_acc": ...}``.
        ``seen`` is the number of training examples over all processes."""

    def evaluate(self, model: nn.Module, epoch: int) -> tuple[dict[str, float], str | None]:
        """Score the epoch's weights (``model`` as prepared by Accelerate): the record's validation fields, and a
        reason to stop now (None to go on)."""

    def status(self, record: Any) -> str:
        """A few words for the progress bar after an epoch, e.g. ``"loss 0.412 val_acc 0.870"``."""


def fit(
    method: Method,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    train_loader: Any,
    accelerator,
    *,
    epochs: int,
    patience: int | None = None,
    deadline: float | None = None,
    budget: Literal["epoch", "step"] = "epoch",
    on_epoch_start: Callable[[int], int] | None = None,
    grad_clip: float | None = None,
    checkpoint_dir: str | Path | None = None,
    description: str = "training",
) -> tuple[History, dict[str, torch.Tensor]]:
    """Train ``model`` for up to ``epochs`` epochs with ``method``; return the history and the kept weights
    (already loaded into ``model``).

    Args:
        method: the training step, evaluation, record type and comparison rule (:class:`Method`).
        model, optimizer, scheduler, train_loader: prepared here with ``accelerator``; the scheduler steps once
            per batch. Prepare other loaders (validation) before calling.
        epochs: the last epoch to train (a schedule planned for more may be cut short here).
        patience: stop after this many epochs without a better one ("early stopping"); None never stops early.
        deadline: a ``time.monotonic()`` value; see ``budget``.
        budget: ``"epoch"`` stops before an epoch that would not finish by ``deadline`` (as long as the last);
            ``"step"`` stops before a step that would not, and the cut epoch is recorded as it stands.
        on_epoch_start: ``on_epoch_start(epoch)`` may change what trains (gradual unfreezing) and returns the stage
            number recorded; called after ``model.train()``, so it may put frozen BatchNorm layers back in eval.
        grad_clip: clip the gradient norm of the optimizer's parameters to this (None: no clipping).
        checkpoint_dir: write ``last.pt`` there after each epoch (model, optimizer, scheduler, RNG, history, best
            weights), and resume from it when it exists: a resumed run ends with an uninterrupted run's weights.
        description: the progress bar's label.

    Returns:
        ``(history, weights)``: the run's :class:`History` and the state dict of the kept epoch.
    """
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    ckpt = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir else None
    history, best_state = resume_checkpoint(ckpt, bare_module(accelerator, model), optimizer, scheduler, method.record)
    start_epoch = len(history.epochs)
    bad_epochs = 0 if history.best_epoch < 0 else len(history.epochs) - 1 - history.best_epoch
    params = [p for g in optimizer.param_groups for p in g["params"]]
    declared = {f.name for f in dataclasses.fields(method.record)}
    with progress() as bar:
        task = bar.add_task(description, total=epochs, completed=start_epoch, status="")
        steps = bar.add_task("  steps", total=len(train_loader), status="")
        for epoch in range(start_epoch, epochs):
            t0 = time.monotonic()
            if hasattr(train_loader, "set_epoch"):
                train_loader.set_epoch(epoch)
            model.train()
            stage = on_epoch_start(epoch) if on_epoch_start else 0
            method.start_epoch(epoch)
            total_loss, seen, out_of_time = 0.0, 0, False
            bar.reset(steps, total=len(train_loader), description=f"  epoch {epoch + 1}")
            for i_batch, batch in enumerate(train_loader):
                t_step = time.monotonic()
                with accelerator.autocast():
                    loss, n = method.step(model, batch)
                stop_if_diverged(loss, accelerator, where=f"epoch {epoch + 1}, batch {i_batch + 1}",
                                 optimizer=optimizer)
                optimizer.zero_grad(set_to_none=True)
                accelerator.backward(loss)
                if grad_clip:
                    accelerator.clip_grad_norm_(params, grad_clip)
                optimizer.step()
                scheduler.step()
                # a regulariser's term (L2-SP) trains but is not the data's loss the history records
                total_loss += (loss.item() - getattr(method, "added", 0.0)) * n
                seen += n
                if len(history.first_steps) < FIRST_STEPS:
                    history.first_steps.append(time.monotonic() - t_step)
                bar.update(steps, advance=1, status=f"loss {total_loss / seen:.3f}")
                if budget == "step" and deadline is not None:
                    now = time.monotonic()
                    if any_process(accelerator, now + (now - t_step) > deadline):
                        out_of_time = True
                        break
            # sum over processes, so every rank records the same training loss and scores
            sums = accelerator.reduce(torch.tensor([total_loss, seen], dtype=torch.float64, device=accelerator.device),
                                      "sum")
            total_loss, seen = sums.tolist()
            values = {"epoch": epoch, "train_loss": total_loss / max(1, seen), **method.train_scores(seen)}
            scores, verdict = method.evaluate(model, epoch)
            if verdict is not None or accelerator.num_processes > 1:
                # every process leaves together (evaluations are gathered, so they agree anyway)
                verdict = (verdict or "stopped by the caller") if any_process(accelerator, bool(verdict)) else None
            values.update(scores, lr=max(g["lr"] for g in optimizer.param_groups), seconds=time.monotonic() - t0,
                          stage=stage, finished_at=time.time())
            rec = method.record(**{k: v for k, v in values.items() if k in declared})
            history.epochs.append(rec)
            notify("epoch", epoch, dataclasses.asdict(rec))
            if method.better is None or method.better(rec, history.best if history.best_epoch >= 0 else None):
                history.best_epoch = epoch
                # the last epoch: its weights are the model's own, so no copy until the run ends
                keep = method.better is not None
                best_state = copy.deepcopy(bare_module(accelerator, model).state_dict()) if keep else None
                bad_epochs = 0
            else:
                bad_epochs += 1
            bar.update(task, advance=1, status=method.status(rec))
            if ckpt is not None and is_main_process(accelerator):
                save_checkpoint(ckpt, bare_module(accelerator, model), optimizer, scheduler, history, best_state)
            if verdict:
                history.stopped = verdict
                break
            if patience is not None and any_process(accelerator, bad_epochs >= patience):
                history.stopped = "early stopping"
                break
            if budget == "step" and out_of_time:
                history.stopped = "time budget"
                break
            if (budget == "epoch" and deadline is not None
                    and any_process(accelerator, time.monotonic() + rec.seconds > deadline)):
                history.stopped = "time budget"
                break
    if method.better is None:  # the last epoch is kept: the model holds it; the caller gets a copy, as of a best epoch
        return history, copy.deepcopy(bare_module(accelerator, model).state_dict())
    assert best_state is not None
    bare_module(accelerator, model).load_state_dict(best_state)
    return history, best_state


def bare_module(accelerator, model: nn.Module) -> nn.Module:
    """The module a prepared (and maybe compiled) ``model`` wraps: what checkpoints, best weights and bundles hold,
    so their state_dict keys never carry DDP's ``module.`` or torch.compile's ``_orig_mod.`` prefixes, and a run
    with ``--compile`` resumes from a checkpoint written without it and the other way round."""
    return accelerator.unwrap_model(model, keep_torch_compile=False)


def any_process(accelerator, flag: bool) -> bool:
    """True on every process when ``flag`` is true on any process: all ranks must leave a loop together (one
    leaving alone would leave the others waiting in the next collective for ever)."""
    if accelerator.num_processes == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(t, "sum").item() > 0)


def save_checkpoint(path: Path, model: nn.Module, optimizer, scheduler, history: History,
                    best: dict[str, torch.Tensor] | None) -> None:
    """Write an epoch checkpoint atomically: model, optimizer, scheduler, the CPU RNG, the history and the best
    weights so far (None: the method keeps its last epoch, which is ``model``). :func:`resume_checkpoint` reads it."""
    write_checkpoint(path, {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": torch.get_rng_state(),
        "history": history.to_dict(),
        "best": best,
    })


def resume_checkpoint(ckpt: Path | None, model: nn.Module, optimizer, scheduler,
                      record: type) -> tuple[History, dict[str, torch.Tensor] | None]:
    """Load an epoch checkpoint (model, optimizer, scheduler, RNG) when ``ckpt`` exists; return the history so far
    (epochs as ``record`` dataclasses) and the best weights. A fresh history and None when there is none."""
    if ckpt is None or not ckpt.is_file():
        return History(), None
    import pickle

    from ..errors import TransferkitError

    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        history = History([record(**r) for r in state["history"]["epochs"]], state["history"]["best_epoch"])
        return history, state["best"]
    except (RuntimeError, KeyError, ValueError, TypeError, EOFError, pickle.UnpicklingError) as err:
        # another model, or a damaged file
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()] or [type(err).__name__]
        reason = (lines[1] if len(lines) > 1 and lines[0].endswith(":") else lines[0])[:160]  # torch's first detail
        raise TransferkitError(f"--resume: the checkpoint {ckpt} does not fit this run ({reason}); rerun without "
                               "--resume, or with the settings it was trained with.") from None


def write_checkpoint(path: Path, state: dict) -> None:
    """``torch.save`` under a temporary name, then one rename: a crash mid-write leaves the previous checkpoint.

    Raises:
        TransferkitError: the disk is full (or another write error); the temporary file is removed and the previous
            checkpoint kept, so ``--resume`` continues from it once there is room.
    """
    from ..io import write_failed

    tmp = path.with_suffix(".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # through a Python file: a full disk then raises OSError(ENOSPC), not torch's unexplained RuntimeError
        with open(tmp, "wb") as f:
            torch.save(state, f)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise write_failed(err, path, "a checkpoint", "rerun with --resume (it continues from the last checkpoint)") \
            from None
