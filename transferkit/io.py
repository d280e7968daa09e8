"""Crash-safe writes, for every file transferkit produces (bundles, reports, run records, exported data sets).

Everything lands under a temporary name beside its target first and is renamed into place with
:func:`os.replace` at the end, so a failed or interrupted run never leaves a half-written file or folder,
and an existing one is never half-overwritten: readers see the old version or the new one, nothing between.

Examples:

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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


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
            # them leaves only ``.NAME.old-PID``, which :func:`transferkit.rundir.tidy_leftovers` puts back
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


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes, read a megabyte at a time (the file may be larger than memory)."""
    import hashlib

    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


def write_failed(err: OSError, path: str | Path, what: str, then: str = "rerun") -> Exception:
    """The one line for an :class:`OSError` while writing ``what`` to ``path``: a full disk (or quota) says so and
    what to do; another error names itself. Returns a :class:`~transferkit.errors.TransferkitError` to raise."""
    import errno

    from .errors import TransferkitError

    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return TransferkitError(f"No space left on the disk of {Path(path).parent} while writing {what} ({path}): "
                                f"free space and {then}.")
    return TransferkitError(f"Could not write {what} ({path}): {err.strerror or err}; check the folder and {then}.")
