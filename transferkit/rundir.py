"""The output folder of a run (``fit``, ``compare``, ``rank``, ``pretrain``): checked before any work, held by one run
at a time, and, for the runs that write it whole (``fit``, ``pretrain``), swapped in whole at the end.

- :func:`held` (and :func:`holds_output`, the same as a decorator) is the one way in: the path made absolute and
  checked (:func:`check_out`: not a file, writable, not the current folder nor one holding it), locked
  (:func:`locked`: ``.NAME.lock`` beside it), a folder that is not a run's refused (:func:`refuse_foreign`, under the
  lock), and an interrupted run's leftovers tidied (:func:`tidy_leftovers`). Only the main process (rank 0 under a
  launcher, :func:`main_process`) does any of it: only that one writes.
- :func:`replaced` writes the new folder beside the old one (:func:`transferkit.io.atomic_dir`) and swaps it in, so a
  crash or ``kill -9`` at any moment leaves the previous run's complete folder or the new run's, never a mix. What
  the previous run did not write (the user's notes, an ``evaluate --out RUN/eval`` folder) is carried into the new
  folder first, by name in :data:`MANIFEST` (``.transferkit-run.json``, the top-level entries a run wrote).
- ``fit``'s epoch checkpoints, which ``--resume`` continues from, wait in ``.NAME.work`` beside the folder
  (:func:`work_folder`) with a record of the data and the settings that shape the model (:func:`claim_work`).
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import shutil
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

MANIFEST = ".transferkit-run.json"  # in a run folder: the top-level entries the run wrote


def main_process() -> bool:
    """True in the process that writes: the only one, or rank 0 (``RANK``, which torchrun and ``accelerate launch``
    set for every process they start). :func:`transferkit.engine.accel.is_main_process` without an accelerator."""
    return os.environ.get("RANK", "0").strip() in ("", "0")


def absolute(out: str | Path) -> Path:
    """``out`` as an absolute path, ``.`` and ``..`` resolved (not symbolic links): the name every file beside it is
    derived from (``.NAME.lock``, ``.NAME.tmp-*``, ``.NAME.work``)."""
    return Path(os.path.abspath(out))


def check_out(out: str | Path, flag: str = "--out") -> None:
    """Refuse an output folder that cannot be written, before any work: a file, a path inside a file, a parent
    folder this user may not write to (a run creates its folder, a lock and a temporary folder beside it), or the
    current folder or one holding it (a run replaces its folder whole).

    Raises:
        TransferkitError: one line naming ``out`` and what to do.
    """
    from .errors import TransferkitError

    out = absolute(out)
    if out.exists() and not out.is_dir():
        raise TransferkitError(f"{flag} {out} is a file, not a folder: choose a folder (it is created if missing).")
    here = Path.cwd().resolve()
    if out.resolve() == here or out.resolve() in here.parents:
        raise TransferkitError(f"{flag} {out} is the current folder{'' if out.resolve() == here else ' or holds it'}: "
                               f"a run replaces its folder whole, so choose a folder inside it (e.g. {flag} runs/exp).")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise TransferkitError(f"{flag} {out} lies inside {parent}, which is a file: choose a folder elsewhere.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise TransferkitError(f"{flag} {out}: {parent} is not writable here: choose a folder you can write to.")


def check_apart(out: Path, data: Any, flag: str = "--out") -> None:
    """Refuse an output folder inside the data folder (before anything is written there, the lock included): the
    next run on those data would read the run's own files as examples."""
    from .errors import TransferkitError

    if not isinstance(data, (str, os.PathLike)) or not Path(data).expanduser().is_dir():
        return
    folder = Path(data).expanduser().resolve()
    if out.resolve() == folder or folder in out.resolve().parents:
        raise TransferkitError(f"{flag} {out} lies inside the data folder {data}: the next run would read this run's "
                               f"files as data; choose a folder outside it (e.g. {flag} runs/exp).")


def lock_path(out: Path) -> Path:
    """The lock file of an output folder: ``.NAME.lock`` beside it (kept after the run: removing it could let two
    runs hold two different lock files at once)."""
    return out.parent / f".{out.name}.lock"


@contextmanager
def locked(out: str | Path, flag: str = "--out", remove: bool = False) -> Iterator[None]:
    """Hold ``out`` for one run: an exclusive ``flock`` on :func:`lock_path`, taken at once or refused. The system
    drops the lock when the process ends, however it ends (``kill -9`` included), so no stale lock is left.
    ``remove``: delete the lock file when done (an export, which should leave nothing but its folder); a run's stays.

    Raises:
        TransferkitError: another run (another process, or another open run in this one) holds ``out``.
    """
    from .errors import TransferkitError

    try:
        import fcntl
    except ImportError:  # Windows: no advisory lock; runs into one folder are the user's to keep apart
        yield
        return
    out = absolute(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path(out), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 20, 0).decode("ascii", "replace").strip()
            raise TransferkitError(f"{out} is in use by another run{f' (pid {pid})' if pid.isdigit() else ''}: wait "
                                   f"for it to finish or choose another {flag}.") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            if remove:  # still holding it: a run that opens the file from now on gets a new one
                Path(lock_path(out)).unlink(missing_ok=True)
    finally:
        os.close(fd)  # releases the lock


def leftovers(out: Path) -> list[Path]:
    """What an interrupted :func:`transferkit.io.atomic_dir` into ``out`` left beside it: ``.NAME.tmp-*`` (a folder
    being filled, or the old folder being deleted) and ``.NAME.old-*`` (the old folder, moved aside)."""
    if not out.parent.is_dir():
        return []
    return sorted(p for p in out.parent.iterdir()
                  if p.name.startswith((f".{out.name}.tmp-", f".{out.name}.old-")))


def tidy_leftovers(out: str | Path) -> list[str]:
    """Remove what an interrupted run left beside ``out`` (call it holding :func:`locked`, so no live run's folder
    is taken); when a kill fell between the two renames of a swap and ``out`` is missing, its old folder is put
    back. Returns one note per thing done, for the user."""
    out = absolute(out)
    notes = []
    for p in leftovers(out):
        if p.name.startswith(f".{out.name}.old-") and not out.exists():
            os.replace(p, out)
            notes.append(f"{out}: put back the previous run's folder ({p.name}), which an interrupted run had moved "
                         "aside")
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        notes.append(f"{out}: removed {p.name}, left by an interrupted run")
    return notes


def refuse_foreign(out: Path, marks: Collection[str]) -> None:
    """A run replaces its folder whole: refuse a folder that holds files but no earlier run (none of ``marks``, e.g.
    ``metrics.json``, nor a :data:`MANIFEST`), rather than replace what someone pointed ``--out`` at by mistake."""
    from .errors import TransferkitError

    if not out.is_dir() or any((out / m).exists() for m in (MANIFEST, *marks)):
        return
    # hidden entries: an older transferkit's checkpoints (.work), a desktop's own files
    theirs = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    if theirs:
        raise TransferkitError(f"--out {out} holds files that are not a transferkit run's (e.g. {theirs[0]}): a run "
                               "replaces its folder whole, so choose a new or empty folder.")


@contextmanager
def held(out: str | Path, flag: str = "--out", marks: Collection[str] | None = None,
         data: Any = None) -> Iterator[Path]:
    """Hold the output folder ``out`` for one run and yield it as an absolute path (use that one throughout): checked
    (:func:`check_out`), locked (:func:`locked`), refused when it is not a run's (:func:`refuse_foreign` with
    ``marks``, the files that say a folder is this kind of run's; ``None``: the run writes files into the folder,
    not the folder whole, so anything may be there) and rid of an interrupted run's leftovers. Every process but the
    main one (:func:`main_process`) only gets the path: only that one writes. ``data``: the run's data, when it is a
    folder ``out`` must not lie in it.

    Raises:
        TransferkitError: ``out`` is a file, lies inside one or inside the data folder, is not writable, is the
            current folder or holds it, is in use by another run, or (``marks`` given) holds files that are not a
            run's.
    """
    out = absolute(out)
    if not main_process():
        yield out
        return
    check_out(out, flag)
    check_apart(out, data, flag)
    with locked(out, flag):
        if marks is not None:
            refuse_foreign(out, marks)
        from .console import info

        for note in tidy_leftovers(out):
            info(note)
        yield out


def holds_output(param: str = "out", flag: str = "--out", marks: Collection[str] | None = None,
                 data: str = "data") -> Callable[[F], F]:
    """Decorate a function that writes a folder named by its argument ``param``: for the whole call that folder is
    :func:`held` (apart from the folder its argument ``data`` names, if any) and the function gets it as an absolute
    path. ``None`` (nothing written) skips it all."""

    def wrap(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            if bound.arguments.get(param) is None:
                return fn(*args, **kwargs)
            with held(bound.arguments[param], flag, marks, bound.arguments.get(data)) as out:
                bound.arguments[param] = out
                return fn(*bound.args, **bound.kwargs)

        return call  # type: ignore[return-value]

    return wrap


# -- a folder written whole ------------------------------------------------------------------------------------------

@contextmanager
def replaced(out: Path, ours: Collection[str] = ()) -> Iterator[Path]:
    """Yield a temporary folder beside ``out`` to fill; on success it replaces ``out`` in one step (see
    :func:`transferkit.io.atomic_dir`), with a :data:`MANIFEST` of what the block wrote.

    What the old folder holds that its run did not write (by its manifest; without one, from an older transferkit:
    every name the new folder does not hold) is carried over (hard links, else copies) and named in one note;
    ``ours``: names a run of this kind leaves in its folder that are never carried (its checkpoints). A kill before
    the swap leaves the old folder as it was.

    Raises:
        Whatever the block raises, after the temporary folder is removed; ``out`` is then untouched.
    """
    from .io import atomic_dir, write_json

    carried: list[str] = []
    with atomic_dir(out) as tmp:
        yield tmp
        written = sorted(p.name for p in tmp.iterdir())
        if out.is_dir():
            before = _written_by(out)
            for p in sorted(out.iterdir(), key=lambda p: p.name):
                if p.name in (MANIFEST, *ours) or p.name in written or (before is not None and p.name in before):
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.copytree(p, tmp / p.name, symlinks=True, copy_function=_link_or_copy)
                else:
                    _link_or_copy(p, tmp / p.name)
                carried.append(p.name)
        write_json(tmp / MANIFEST, {"written": written})
    if carried:
        from .console import info

        info(f"{out}: kept {', '.join(carried)} from the previous folder (not written by a run)")


def _written_by(out: Path) -> set[str] | None:
    """The names a run wrote into ``out`` (its :data:`MANIFEST`); None when there is no readable one."""
    try:
        written = json.loads((out / MANIFEST).read_text(encoding="utf-8"))["written"]
        return {str(n) for n in written}
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _link_or_copy(src: Any, dst: Any) -> None:
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
        return
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links
        shutil.copy2(src, dst)


# -- fit's run folder ---------------------------------------------------------------------------------------------

def beside(out: str | Path | None) -> Path:
    """Where files shared by many runs go (a study database, tracker logs): the folder that holds ``out``, or
    ``runs`` without one."""
    return Path(out).resolve().parent if out is not None else Path("runs")


def work_folder(out: Path) -> Path:
    """Where a run into ``out`` keeps its epoch checkpoints until it ends: ``.NAME.work`` beside ``out`` (outside it,
    so they survive a killed run whatever state ``out`` is in, and the swap at the end leaves them alone)."""
    return out.parent / f".{out.name}.work"


def write_run_folder(task: Any, out: Path, model: Any, metrics: dict[str, Any], prepared: Any,
                     plots: dict[str, Any], extra: dict[str, bytes] | None = None) -> dict[str, str]:
    """Write a run's outputs (``task.write``, and ``extra`` files: name -> bytes) into a temporary folder beside
    ``out`` and swap it in at the end (:func:`replaced`). Every file of the folder carries the same ``run_id``.
    Returns the files as they lie in ``out``.

    Raises:
        TransferkitError: a write failed (a full disk says so); ``out`` is then untouched.
    """
    import uuid

    from .io import write_failed

    metrics["run_id"] = uuid.uuid4().hex[:12]
    if isinstance(getattr(model, "meta", None), dict):
        model.meta["run_id"] = metrics["run_id"]  # the bundle's config.json says which run made it
    try:
        with replaced(out, ours=(".work",)) as tmp:  # .work: where an older transferkit kept checkpoints
            files = task.write(tmp, model, metrics, prepared, plots)
            for name, data in (extra or {}).items():
                (tmp / name).write_bytes(data)
                files[Path(name).stem] = str(tmp / name)
    except OSError as err:
        raise write_failed(err, err.filename or out, "the run folder",
                           "rerun with --resume (the epochs already trained are kept)") from None
    return {k: str(out / Path(v).relative_to(tmp)) for k, v in files.items()}


def run_identity(task: Any, settings: Any, options: Any, prepared: Any, backbone: Any,
                 accelerator: Any) -> dict[str, Any]:
    """What a checkpoint must share with the run that resumes it: every setting that shapes the model (the task, the
    backbone and its preprocessing, the strategy and its options, the classes, the splits' settings, precision,
    seed) and the data (per split, a short hash of each example's content and label)."""
    import dataclasses

    opts = dataclasses.asdict(options) if dataclasses.is_dataclass(options) else {}
    opts.pop("labels", None)  # labels given with the data: the data's hashes cover them
    shaping = {"task": task.name, "backbone": backbone, "arch": settings.arch, "strategy": settings.strategy,
               "image_size": settings.image_size, "seed": settings.seed, "cv": settings.cv,
               "val_fraction": settings.val_fraction, "test_fraction": settings.test_fraction,
               "precision": str(accelerator.mixed_precision), "scratch_baseline": settings.scratch_baseline,
               **opts, **settings.strategy_options, "classes": prepared.classes,
               **{f"preprocess.{k}": v for k, v in prepared.backbone.preprocess.to_dict().items()}}
    if settings.init_from is not None:  # a run from a bundle: which bundle (its weights, not only where it was)
        from .io import file_digest

        weights = Path(settings.init_from) / "model.safetensors"
        shaping |= {"init_from": str(Path(settings.init_from).resolve()), "init_from_sha256": file_digest(weights)}
        if settings.replay is not None:  # the replayed examples are in the training data's hashes below
            shaping |= {"replay": str(settings.replay), "replay_fraction": settings.replay_fraction}

    data = data_hashes(prepared)
    return json.loads(json.dumps({"settings": shaping, "data": data}, default=str))


def data_hashes(prepared: Any) -> dict[str, list[str]]:
    """Per split, a short hash of each example's content and label (by class name, so one class more does not change
    every other example's label): what identifies a run's data (``--resume``, a search's study)."""
    import hashlib

    classes = prepared.classes

    def named(y: Any) -> Any:
        if isinstance(y, list):
            return [named(v) for v in y]
        return classes[y] if isinstance(y, int) and 0 <= y < len(classes) else y

    def hashes(enc: Any) -> list[str]:
        targets = getattr(enc, "targets", None)
        targets = targets.tolist() if hasattr(targets, "tolist") else targets or [None] * len(enc.fingerprints)
        return [hashlib.sha1(f"{fp}:{named(y)}".encode()).hexdigest()[:12]
                for fp, y in zip(enc.fingerprints, targets)]

    return {part: hashes(enc) for part, enc in prepared.encoded.items() if enc is not None}


def claim_work(work_dir: Path, out: Path, resume: bool, identity: dict[str, Any], main: bool) -> None:
    """Make ``work_dir`` (the checkpoints of a run into ``out``) this run's: a fresh run empties it; ``resume`` goes
    on only when the checkpoint's record (``run.json``) matches ``identity``, and otherwise says which settings
    differ and whether the data do.

    Raises:
        TransferkitError: ``resume`` onto a checkpoint of other settings or data.
    """
    from .console import info
    from .errors import TransferkitError
    from .io import write_json

    record = work_dir / "run.json"
    legacy = out / ".work"  # where transferkit kept checkpoints before the run folder became one unit
    if resume and main and legacy.is_dir() and not work_dir.exists():
        legacy.rename(work_dir)
    if resume and record.is_file():
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
    if resume and work_dir.is_dir():  # an older transferkit's checkpoints, without a record: as they are
        write_json(record, identity)
        return
    if resume:
        info(f"--resume: no checkpoint of an interrupted run into {out} ({work_dir}): starting afresh")
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
