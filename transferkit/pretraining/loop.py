"""The pre-training loop: steps, not epochs, under Accelerate.

Every process runs the same loop on its share of each global batch (:class:`~.data.StepSampler`); DDP averages
the gradients. Loss and metric sums are reduced across processes at each log point, so every process holds the
same record, and only the main process prints, writes checkpoints and, at the end, the backbone. A checkpoint
(model, optimizer, schedule, step, record) is written atomically every ``checkpoint_every`` steps and at each
epoch's end; ``resume`` continues from it. Dropout is seeded from ``(seed, step, rank)`` and augmentation from
``(seed, epoch, example)``, so a run killed at any moment and resumed on the same hardware ends with the weights an
uninterrupted run ends with (bit for bit on CPUs, tested; GPUs may pick non-deterministic cuDNN kernels).

Why this loop is not run by the training engine (:func:`transferkit.engine.trainer.fit`), which the
classification, detection and contrastive loops use: the engine's unit is the epoch, and pre-training's is the
step. The engine checkpoints after an epoch, resumes at an epoch's start by restoring the CPU RNG state, and
decides at each epoch's end (evaluation, best weights, early stopping, time budget). Pre-training needs none of
those decisions (no "better" epoch, no early stopping, no time budget: the last weights are the result) and
instead needs what the engine does not have: a checkpoint every ``checkpoint_every`` steps and resume at that
step inside an epoch (the loader restarts mid-epoch, ``make_loader(step)``, and dropout is re-seeded per step,
since a saved RNG state would not say where in the epoch it was), a log point every ``log_every`` steps with
sums reduced across processes, samples/s and an ETA, a ``log.txt`` cut back to the checkpoint on resume, the
fp16 loss scale and the run's settings in the checkpoint, and a record of sessions. Teaching the engine a second
cadence and a second resume model would make it harder to read than the two loops are apart. What is shared is
public: the atomic :func:`~transferkit.engine.trainer.write_checkpoint`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..engine.events import notify
from ..console import console, progress, quiet
from ..engine.accel import is_main_process
from ..engine.divergence import stop_if_diverged
from ..engine.trainer import write_checkpoint

CHECKPOINT = "last.pt"


@dataclass
class Plan:
    total_steps: int
    steps_per_epoch: int
    global_batch: int
    checkpoint_every: int
    log_every: int
    seed: int
    clip_grad: float | None = 1.0


def to_device(batch: Any, device: torch.device) -> Any:
    # non-blocking: on CUDA the loader pins its batches, so the copy overlaps the step; elsewhere a plain copy
    if isinstance(batch, dict):
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, int):
        return batch
    return batch.to(device, non_blocking=True)


def read_checkpoint(folder: Path) -> dict | None:
    path = folder / CHECKPOINT
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def _fmt_seconds(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def run(
    method,
    optimizer: torch.optim.Optimizer,
    scheduler,
    make_loader: Callable[[int], Any],
    accelerator,
    plan: Plan,
    *,
    checkpoint_dir: Path,
    state: dict | None,
    settings: dict,
    evaluate: Callable[[nn.Module], dict] | None = None,
    log_file: Path | None = None,
) -> dict:
    """Train ``method.model`` for ``plan.total_steps`` steps; return the run's record (log points, evaluations,
    throughput), continuing from the checkpoint ``state`` when given. ``make_loader(start_step)`` gives the loader of
    this process's batches from ``start_step`` on.
    ``evaluate(model)`` (optional) runs at each epoch's end and at the last step, on every process, with the
    unwrapped model, and returns metrics reduced across processes."""
    model, optimizer = accelerator.prepare(method.model, optimizer)
    record: dict[str, Any] = {"log": [], "evaluations": [], "sessions": []}
    step, done_seconds = 0, 0.0
    scaler = getattr(accelerator, "scaler", None)  # fp16 only: its loss scale is part of the state
    log_size = 0
    if state is not None:
        accelerator.unwrap_model(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, done_seconds, record = int(state["step"]), float(state["seconds"]), state["record"]
        log_size = int(state.get("log_bytes", 0))
    main = is_main_process(accelerator)
    if main and log_file is not None and log_file.exists():  # drop lines written after the checkpoint (or before a
        with log_file.open("r+b") as f:                       # fresh start): they are written again as the run replays
            f.truncate(log_size)
    start_step, session_start = step, time.monotonic()
    record["sessions"].append({"start_step": step, "processes": accelerator.num_processes})
    sums = torch.zeros(3, dtype=torch.float64, device=accelerator.device)
    interval_start, interval_steps = time.monotonic(), 0
    eta_rate: float | None = None  # samples/s, smoothed over log points
    eval_seconds = 0.0

    def say(line: str, bar=None) -> None:
        if not main:
            return
        if log_file is not None:  # appended as it happens: a killed run keeps its log up to the kill
            log_file.parent.mkdir(parents=True, exist_ok=True)
            with log_file.open("a", encoding="utf-8") as f:
                f.write(line + "\n")
        if not quiet():
            (bar.console if bar is not None else console).print(line, highlight=False, soft_wrap=True)

    def checkpoint() -> None:
        if main:
            write_checkpoint(checkpoint_dir / CHECKPOINT, {
                "model": accelerator.unwrap_model(model).state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "step": step, "record": record, "settings": settings,
                "seconds": done_seconds + time.monotonic() - session_start,
                "scaler": scaler.state_dict() if scaler is not None else {},
                "log_bytes": log_file.stat().st_size if log_file is not None and log_file.exists() else 0,
            })

    loader = make_loader(step)
    with progress(disable=not main) as bar:
        task = bar.add_task(f"pre-training ({method.name})", total=plan.total_steps, completed=step, status="")
        model.train()
        for batch in loader:
            torch.manual_seed(plan.seed * 1_000_003 + step * accelerator.num_processes + accelerator.process_index)
            batch = to_device(batch, accelerator.device)
            with accelerator.autocast():
                loss, correct, counted = method.loss(model, batch)
            stop_if_diverged(loss, accelerator, optimizer=optimizer, where=f"step {step + 1} (epoch "
                             f"{step // plan.steps_per_epoch + 1}, batch {step % plan.steps_per_epoch + 1})")
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            if plan.clip_grad:
                accelerator.clip_grad_norm_(model.parameters(), plan.clip_grad)
            optimizer.step()
            scheduler.step()
            sums += torch.tensor([loss.item() * counted, float(correct), counted], dtype=torch.float64,
                                 device=accelerator.device)
            step += 1
            interval_steps += 1
            epoch_end = step % plan.steps_per_epoch == 0
            if step % plan.log_every == 0 or step % plan.checkpoint_every == 0 or epoch_end or step == plan.total_steps:
                total = accelerator.reduce(sums, "sum").tolist()  # every process: same numbers
                sums.zero_()
                seconds = time.monotonic() - interval_start
                rate = interval_steps * plan.global_batch / max(seconds, 1e-9)
                # ETA from the recent pace (an average since the start would lag behind a change in load)
                recent = rate if eta_rate is None else 0.5 * eta_rate + 0.5 * rate
                eta_rate = recent
                eta = (plan.total_steps - step) * plan.global_batch / max(recent, 1e-9)
                entry = {"step": step, "epoch": round(step / plan.steps_per_epoch, 3),
                         "loss": total[0] / max(total[2], 1),
                         "metric": total[1] / max(total[2], 1), "lr": max(g["lr"] for g in optimizer.param_groups),
                         "samples_per_s": rate, "elapsed_s": done_seconds + time.monotonic() - session_start}
                record["log"].append(entry)
                notify("step", step, entry)
                say(f"step {step}/{plan.total_steps}  epoch {entry['epoch']:.2f}  loss {entry['loss']:.4f}  "
                    f"{method.metric} {entry['metric']:.3f}  lr {entry['lr']:.2e}  {rate:.1f} samples/s  "
                    f"ETA {_fmt_seconds(eta)}", bar)
                bar.update(task, completed=step, status=f"loss {entry['loss']:.3f} · {rate:.0f} samples/s")
                interval_start, interval_steps = time.monotonic(), 0
            else:
                bar.update(task, completed=step)
            if (epoch_end or step == plan.total_steps) and evaluate is not None:
                t_eval = time.monotonic()
                scores = evaluate(accelerator.unwrap_model(model))  # no DDP collectives: a process may have no share
                model.train()
                scores = {"step": step, "epoch": round(step / plan.steps_per_epoch, 3), **scores}
                record["evaluations"].append(scores)
                notify("evaluation", step, scores)
                shown = {k: v for k, v in scores.items() if k.startswith("val_") and isinstance(v, float)}
                say("  validation: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()), bar)
                interval_start = time.monotonic()  # evaluation time is not training throughput
                eval_seconds += interval_start - t_eval
            if step % plan.checkpoint_every == 0 or epoch_end:
                checkpoint()
    seconds = time.monotonic() - session_start
    train_seconds = seconds - eval_seconds
    record["sessions"][-1].update(end_step=step, seconds=seconds, eval_seconds=eval_seconds,
                                  samples_per_s=(step - start_step) * plan.global_batch / max(train_seconds, 1e-9))
    record["seconds"] = done_seconds + seconds
    return record
