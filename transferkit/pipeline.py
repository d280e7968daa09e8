"""The run, as transfer goes: resolve the task -> prepare data and backbone -> the strategy trains -> the task
scores -> bundle and report written. Nothing here asks what kind of data this is; the task (:mod:`transferkit.tasks`)
answers every such question.

``transferkit.fit`` (:mod:`transferkit.api`) maps its keyword arguments onto :class:`~transferkit.tasks.RunSettings`
and the task's options, then calls :func:`run`.

The run folder (``--out``) is one unit (:mod:`transferkit.rundir`): checked before any work, held by one run at a
time (a lock beside it), written into a temporary folder beside it and swapped in whole at the end, so a crash or
``kill -9`` at any moment leaves the previous run's complete folder or the new run's, never a mix; what the previous
run did not write (notes, an ``evaluate --out RUN/eval`` folder) is carried into the new one. The epoch checkpoints
that ``--resume`` continues from wait in ``.NAME.work`` beside the folder (with a record of the data and the
settings that shape the model) and go once the new folder is in place.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from .tasks import RunSettings, Task


def run(data: Any, task: Task, settings: RunSettings, options: Any, backbones: list[str] | None = None) -> Any:
    """Train ``settings.strategy`` on ``data`` as ``task`` says, and return the trained model (its ``metrics`` hold
    everything ``metrics.json`` does). ``backbones``: several names, ranked on the training data first (LogME) and
    the best trained. ``settings.seconds`` bounds the whole run, ranking, reading and scoring included
    (:mod:`transferkit.tasks.budget` says how it is split).

    Raises:
        TransferkitError: bad input; ``settings.out`` is a file, lies inside one, is not writable, holds files that
            are not a run's, is the current folder or holds it, or is in use by another run; ``--resume`` with other
            data or settings.
    """
    if settings.out is None:
        return run_held(data, task, settings, options, backbones)
    from .rundir import held

    # under a launcher only rank 0 holds the folder and writes it
    with held(settings.out, marks=("metrics.json",), data=data) as out:
        return run_held(data, task, dataclasses.replace(settings, out=out), options, backbones)


def run_held(data: Any, task: Task, settings: RunSettings, options: Any, backbones: list[str] | None = None) -> Any:
    """:func:`run`, its output folder (if any) checked, held and absolute."""
    from .console import info
    from .engine.accel import is_main_process, make_accelerator
    from .rundir import claim_work, run_identity, work_folder, write_run_folder

    t_start = time.monotonic()
    task.check(settings, options)
    task.create_strategy(settings.strategy, None, settings.strategy_options)  # bad options fail before heavy work
    timings: dict[str, float] = {}
    ranking, backbone = None, settings.backbone
    if backbones:
        task.check_backbones(backbones)
        from .ranking import score_backbones

        ranking = score_backbones(data, backbones, task, settings, options)
        backbone = ranking["ranking"][0]
        timings["rank_s"] = time.monotonic() - t_start
        info(f"backbone: {backbone} ranks first of {len(backbones)} by LogME")

    prepared = task.prepare(data, backbone, settings, options)
    timings.update(prepared.timings)
    task.check_prepared(prepared, settings, options)
    # the backbone's own defaults (e.g. the speaker encoder's learning rates), then the user's options
    strategy = task.create_strategy(settings.strategy, prepared.backbone, settings.strategy_options)
    accelerator = make_accelerator(settings.precision, seed=settings.seed, cpu=settings.cpu)
    work_dir = work_folder(settings.out) if settings.out is not None else None
    if work_dir is not None:  # a fresh run never picks up an older run's checkpoints; a resumed one only its own
        claim_work(work_dir, settings.out, settings.resume,
                   run_identity(task, settings, options, prepared, backbone, accelerator), is_main_process(accelerator))
    train = task.train_task(prepared, settings, options, accelerator, None, work_dir)
    task.before_training(train, prepared, settings, timings)
    plan = None
    if settings.seconds is not None:  # the budget is the whole run's, ranking and reading included
        from .tasks.budget import plan_run

        plan = plan_run(task, train, prepared, settings, t_start)
        train = dataclasses.replace(train, deadline=plan.train_deadline)

    wall_start, train_t0 = time.time(), time.monotonic()  # time-to-accuracy counts from here
    result = strategy.fit(train)
    timings.update(result.timings)

    extras = {"timings": timings, "t_start": t_start, "wall_start": wall_start, "train_t0": train_t0,
              "budget": plan, "ranking": ranking}
    model, metrics, plots = task.finish(result, prepared, settings, options, train, extras)
    extra = settings.after_training(model, metrics) if settings.after_training is not None else None
    if settings.out is not None and is_main_process(accelerator):  # under `accelerate launch`, only rank 0 writes
        files = write_run_folder(task, settings.out, model, metrics, prepared, plots, extra or {})
        import shutil

        shutil.rmtree(work_dir, ignore_errors=True)  # checkpoints served resume; the bundle is the result
        info(f"report: {files['report']}")
    model.metrics = metrics
    return model
