"""The run, as transfer goes: resolve the task -> prepare data and backbone -> the strategy trains -> the task
scores -> bundle and report written. Nothing here asks what kind of data this is; the task (:mod:`transferkit.tasks`)
answers every such question.

``transferkit.fit`` (:mod:`transferkit.api`) maps its keyword arguments onto :class:`~transferkit.tasks.RunSettings`
and the task's options, then calls :func:`run`.

The run folder (``--out``) is one unit: checked before any work, held by one run at a time (a lock beside it),
written into a temporary folder beside it and swapped in whole at the end, so a crash or ``kill -9`` at any moment
leaves the previous run's complete folder or the new run's, never a mix. The epoch checkpoints that ``--resume``
continues from wait in ``.NAME.work`` beside the folder (with a record of the data and the settings that shape the
model) and go once the new folder is in place.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .tasks import RunSettings, Task


def run(data: Any, task: Task, settings: RunSettings, options: Any, backbones: list[str] | None = None) -> Any:
    """Train ``settings.strategy`` on ``data`` as ``task`` says, and return the trained model (its ``metrics`` hold
    everything ``metrics.json`` does). ``backbones``: several names, ranked on the training data first (LogME) and
    the best trained; the budget then counts from the end of the ranking.

    Raises:
        TransferkitError: bad input; ``settings.out`` is a file, lies inside one, is not writable, holds files that
            are not a run's, or is in use by another run; ``--resume`` with other data or settings.
    """
    from .engine.accel import is_main_process
    from .io import check_out, locked, tidy_leftovers

    if settings.out is None or not is_main_process():  # under a launcher only rank 0 writes, and holds the folder
        return run_held(data, task, settings, options, backbones)
    check_out(settings.out)
    refuse_foreign(settings.out)
    with locked(settings.out):
        from .console import info

        for note in tidy_leftovers(settings.out):
            info(note)
        return run_held(data, task, settings, options, backbones)


def run_held(data: Any, task: Task, settings: RunSettings, options: Any, backbones: list[str] | None = None) -> Any:
    """:func:`run`, its output folder (if any) checked and held."""
    from .console import info
    from .engine.accel import is_main_process, make_accelerator

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
    # the budget is for training the chosen backbone; ranking comes on top
    deadline = time.monotonic() + settings.seconds if settings.seconds is not None else None

    prepared = task.prepare(data, backbone, settings, options)
    timings.update(prepared.timings)
    task.check_prepared(prepared, settings, options)
    # the backbone's own defaults (e.g. the speaker encoder's learning rates), then the user's options
    strategy = task.create_strategy(settings.strategy, prepared.backbone, settings.strategy_options)
    accelerator = make_accelerator(settings.precision, seed=settings.seed, cpu=settings.cpu)
    work_dir = work_folder(settings.out) if settings.out is not None else None
    if work_dir is not None:  # a fresh run never picks up an older run's checkpoints; a resumed one only its own
        claim_work(work_dir, settings, run_identity(task, settings, options, prepared, backbone, accelerator),
                   is_main_process(accelerator))
    train = task.train_task(prepared, settings, options, accelerator, deadline, work_dir)

    wall_start, train_t0 = time.time(), time.monotonic()  # time-to-accuracy counts from here
    result = strategy.fit(train)
    timings.update(result.timings)

    extras = {"timings": timings, "t_start": t_start, "wall_start": wall_start, "train_t0": train_t0,
              "deadline": deadline, "ranking": ranking}
    model, metrics, plots = task.finish(result, prepared, settings, options, train, extras)
    if settings.out is not None and is_main_process(accelerator):  # under `accelerate launch`, only rank 0 writes
        files = write_run_folder(task, settings.out, model, metrics, prepared, plots)
        import shutil

        shutil.rmtree(work_dir, ignore_errors=True)  # checkpoints served resume; the bundle is the result
        info(f"report: {files['report']}")
    model.metrics = metrics
    return model


# -- the run folder as one unit ---------------------------------------------------------------------------------------

def work_folder(out: Path) -> Path:
    """Where a run into ``out`` keeps its epoch checkpoints until it ends: ``.NAME.work`` beside ``out`` (outside it,
    so they survive a killed run whatever state ``out`` is in, and the swap at the end leaves them alone)."""
    return out.parent / f".{out.name}.work"


def refuse_foreign(out: Path) -> None:
    """A run replaces its folder whole: refuse a folder that holds files but no earlier run (no ``metrics.json``),
    rather than delete what someone pointed ``--out`` at by mistake."""
    from .errors import TransferkitError

    if not out.is_dir() or (out / "metrics.json").is_file():
        return
    # hidden entries: an older transferkit's checkpoints (.work), a desktop's own files
    theirs = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    if theirs:
        raise TransferkitError(f"--out {out} holds files that are not a transferkit run's (e.g. {theirs[0]}): a run "
                               "replaces its folder whole, so choose a new or empty folder.")


def write_run_folder(task: Task, out: Path, model: Any, metrics: dict[str, Any], prepared: Any,
                     plots: dict[str, Any]) -> dict[str, str]:
    """Write the run's outputs into a temporary folder beside ``out`` and swap it in at the end, in one step (see
    :func:`transferkit.io.atomic_dir`). Every file of the folder carries the same ``run_id``. Returns the files as
    they lie in ``out``."""
    import uuid

    from .io import atomic_dir, write_failed

    metrics["run_id"] = uuid.uuid4().hex[:12]
    if isinstance(getattr(model, "meta", None), dict):
        model.meta["run_id"] = metrics["run_id"]  # the bundle's config.json says which run made it
    try:
        with atomic_dir(out) as tmp:
            files = task.write(tmp, model, metrics, prepared, plots)
    except OSError as err:
        raise write_failed(err, err.filename or out, "the run folder",
                           "rerun with --resume (the epochs already trained are kept)") from None
    return {k: str(out / Path(v).relative_to(tmp)) for k, v in files.items()}


def run_identity(task: Task, settings: RunSettings, options: Any, prepared: Any, backbone: Any,
                 accelerator: Any) -> dict[str, Any]:
    """What a checkpoint must share with the run that resumes it: every setting that shapes the model (the task, the
    backbone and its preprocessing, the strategy and its options, the classes, the splits' settings, precision,
    seed) and the data (per split, a short hash of each example's content and label)."""
    import dataclasses
    import hashlib
    import json

    opts = dataclasses.asdict(options) if dataclasses.is_dataclass(options) else {}
    opts.pop("labels", None)  # labels given with the data: the data's hashes cover them
    shaping = {"task": task.name, "backbone": backbone, "arch": settings.arch, "strategy": settings.strategy,
               "image_size": settings.image_size, "seed": settings.seed, "cv": settings.cv,
               "val_fraction": settings.val_fraction, "test_fraction": settings.test_fraction,
               "precision": str(accelerator.mixed_precision), "scratch_baseline": settings.scratch_baseline,
               **opts, **settings.strategy_options, "classes": prepared.classes,
               **{f"preprocess.{k}": v for k, v in prepared.backbone.preprocess.to_dict().items()}}

    classes = prepared.classes

    def named(y: Any) -> Any:  # by name, not index: one class more does not change every other example's label
        if isinstance(y, list):
            return [named(v) for v in y]
        return classes[y] if isinstance(y, int) and 0 <= y < len(classes) else y

    def hashes(enc: Any) -> list[str]:
        targets = getattr(enc, "targets", None)
        targets = targets.tolist() if hasattr(targets, "tolist") else targets or [None] * len(enc.fingerprints)
        return [hashlib.sha1(f"{fp}:{named(y)}".encode()).hexdigest()[:12]
                for fp, y in zip(enc.fingerprints, targets)]

    data = {part: hashes(enc) for part, enc in prepared.encoded.items() if enc is not None}
    return json.loads(json.dumps({"settings": shaping, "data": data}, default=str))


def claim_work(work_dir: Path, settings: RunSettings, identity: dict[str, Any], main: bool) -> None:
    """Make ``work_dir`` this run's: a fresh run empties it; ``--resume`` goes on only when the checkpoint's record
    (``run.json``) matches ``identity``, and otherwise says which settings differ and whether the data do."""
    import json
    import shutil

    from .console import info
    from .errors import TransferkitError
    from .io import write_json

    record = work_dir / "run.json"
    legacy = settings.out / ".work"  # where transferkit kept checkpoints before the run folder became one unit
    if settings.resume and main and legacy.is_dir() and not work_dir.exists():
        legacy.rename(work_dir)
    if settings.resume and record.is_file():
        try:
            then = json.loads(record.read_text(encoding="utf-8"))
            differ = differences(then, identity)
        except (OSError, ValueError, TypeError, AttributeError, KeyError):
            differ = [f"a record this version cannot read ({record})"]
        if differ:
            raise TransferkitError(f"--resume: the checkpoint in {work_dir} was trained {' and '.join(differ)}; rerun "
                                   "without --resume, or with the same settings and data.")
        return
    if not main:
        return
    if settings.resume and work_dir.is_dir():  # an older transferkit's checkpoints, without a record: as they are
        write_json(record, identity)
        return
    if settings.resume:
        info(f"--resume: no checkpoint of an interrupted run into {settings.out} ({work_dir}): starting afresh")
    shutil.rmtree(work_dir, ignore_errors=True)
    write_json(record, identity)


def differences(then: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The settings that differ (``epochs=3 (now 5)``) and how many examples differ, for :func:`claim_work`."""
    from collections import Counter

    def short(v: Any) -> str:
        text = repr(v)
        return text if len(text) <= 60 else text[:57] + "..."

    a, b = then["settings"], now["settings"]
    out = [f"with {k}={short(a.get(k))} (now {short(b.get(k))})"
           for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    n = 0
    for part in set(then["data"]) | set(now["data"]):
        x, y = Counter(then["data"].get(part, [])), Counter(now["data"].get(part, []))
        n += max(sum((x - y).values()), sum((y - x).values()))
    if n:
        out.append(f"on other data ({n} example{'s' if n != 1 else ''} differ{'' if n != 1 else 's'})")
    return out
