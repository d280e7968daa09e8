"""Crash-safe writes, for every file transferkit produces (bundles, reports, run records, exported data sets).

Everything lands under a temporary name beside its target first and is renamed into place with
:func:`os.replace` at the end, so a failed or interrupted run never leaves a half-written file or folder,
and an existing one is never half-overwritten: readers see the old version or the new one, nothing between.

Example::

    >>> from transferkit.io import atomic_dir, write_json
    >>> with atomic_dir("runs/exp/model") as tmp:      # a fresh temporary folder beside runs/exp/model
    ...     write_json(tmp / "config.json", {"lr": 1e-3})
    >>> # on leaving the block the folder is renamed into place; on an exception it is removed instead
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target`` in one rename.

    Args:
        target: the folder to create or replace. Its parent is created when missing. An existing ``target``
            is replaced whole (moved aside, then deleted once the new one is in place).

    Yields:
        The temporary folder to fill (same file system as ``target``, so the final rename is atomic).

    Raises:
        Whatever the ``with`` block raises, after the temporary folder is removed; ``target`` is then untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the usual permissions
        if target.exists():
            if exchange(tmp, target):  # one step: a kill at any moment leaves the old folder or the new one
                shutil.rmtree(tmp, ignore_errors=True)  # ``tmp`` now holds the old folder
                return
            # no atomic exchange here (not Linux, or a file system without it): two renames, and a kill between
            # them leaves only ``.NAME.old-PID``, which :func:`tidy_leftovers` puts back
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths on one file system in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system
    or file system cannot, and nothing has changed then."""
    import ctypes
    import errno
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc before 2.28, or another C library
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then :func:`os.replace`.

    Args:
        path: the file to create or replace; its parent folder is created when missing.
        data: the whole content.

    Raises:
        OSError: the folder is not writable or the disk is full; ``path`` then keeps its old content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` for ``text``, encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON (numpy arrays and scalars, tensors and paths included; see :func:`jsonable`).

    Raises:
        TypeError: ``obj`` holds something JSON cannot represent; nothing is written then.
    """
    atomic_write_text(path, json.dumps(obj, indent=2, default=jsonable) + "\n")


def jsonable(o: Any) -> Any:
    """The ``default=`` for :func:`json.dumps`: arrays, tensors and numpy scalars as lists/numbers, paths as strings.

    Raises:
        TypeError: any other type (what :func:`json.dumps` expects from a ``default``).
    """
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# -- the output folder of a run (fit, compare, pretrain, rank) ------------------------------------------------------

def check_out(out: str | Path, flag: str = "--out") -> None:
    """Refuse an output folder that cannot be written, before any work: a file, a path inside a file, or a parent
    folder this user may not write to (a run creates its folder, a lock and a temporary folder beside it).

    Raises:
        TransferkitError: one line naming ``out`` and what to do.
    """
    from .errors import TransferkitError

    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise TransferkitError(f"{flag} {out} is a file, not a folder: choose a folder (it is created if missing).")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise TransferkitError(f"{flag} {out} lies inside {parent}, which is a file: choose a folder elsewhere.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise TransferkitError(f"{flag} {out}: {parent} is not writable here: choose a folder you can write to.")


def lock_path(out: Path) -> Path:
    """The lock file of an output folder: ``.NAME.lock`` beside it (kept after the run: removing it could let two
    runs hold two different lock files at once)."""
    return out.parent / f".{out.name}.lock"


@contextmanager
def locked(out: str | Path, flag: str = "--out") -> Iterator[None]:
    """Hold ``out`` for one run: an exclusive ``flock`` on :func:`lock_path`, taken at once or refused. The system
    drops the lock when the process ends, however it ends (``kill -9`` included), so no stale lock is left.

    Raises:
        TransferkitError: another run (another process, or another open run in this one) holds ``out``.
    """
    from .errors import TransferkitError

    try:
        import fcntl
    except ImportError:  # Windows: no advisory lock; runs into one folder are the user's to keep apart
        yield
        return
    out = Path(out)
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
        yield
    finally:
        os.close(fd)  # releases the lock


def leftovers(out: Path) -> list[Path]:
    """What an interrupted :func:`atomic_dir` into ``out`` left beside it: ``.NAME.tmp-*`` (a folder being filled, or
    the old folder being deleted) and ``.NAME.old-*`` (the old folder, moved aside)."""
    if not out.parent.is_dir():
        return []
    return sorted(p for p in out.parent.iterdir()
                  if p.name.startswith((f".{out.name}.tmp-", f".{out.name}.old-")))


def tidy_leftovers(out: str | Path) -> list[str]:
    """Remove what an interrupted run left beside ``out`` (call it holding :func:`locked`, so no live run's folder
    is taken); when a kill fell between the two renames of a swap and ``out`` is missing, its old folder is put
    back. Returns one note per thing done, for the user."""
    out = Path(out)
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


def write_failed(err: OSError, path: str | Path, what: str, then: str = "rerun") -> Exception:
    """The one line for an :class:`OSError` while writing ``what`` to ``path``: a full disk (or quota) says so and
    what to do; another error names itself. Returns a :class:`~transferkit.errors.TransferkitError` to raise."""
    import errno

    from .errors import TransferkitError

    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return TransferkitError(f"No space left on the disk of {Path(path).parent} while writing {what} ({path}): "
                                f"free space and {then}.")
    return TransferkitError(f"Could not write {what} ({path}): {err.strerror or err}; check the folder and {then}.")


def holds_output(param: str = "out", flag: str = "--out") -> Callable[[F], F]:
    """Decorate a function that writes a folder named by its argument ``param``: for the whole call that folder is
    checked (:func:`check_out`), held (:func:`locked`) and rid of an interrupted run's leftovers
    (:func:`tidy_leftovers`). ``None`` (nothing written) skips all three, as does every process but the main one
    under a launcher (rank 0 by ``RANK``, as :func:`transferkit.engine.accel.is_main_process` decides without an
    accelerator): only that one writes."""
    import functools
    import inspect

    def wrap(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def held(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            out = bound.arguments.get(param)
            if out is None or os.environ.get("RANK", "0").strip() not in ("", "0"):
                return fn(*args, **kwargs)
            check_out(out, flag)
            with locked(out, flag):
                from .console import info

                for note in tidy_leftovers(out):
                    info(note)
                return fn(*args, **kwargs)

        return held  # type: ignore[return-value]

    return wrap
