"""Decoded rows on disk: one file per decoded split, read a batch at a time, so memory is bounded by the batch.

An entry is ``cache_root()/"pixels"/KEY.rows``: the rows (each ``row_shape`` of ``dtype``, row ``i`` at byte
``i * row_bytes``), then a JSON header, then a 16-byte trailer (the header's length and a magic word). The header
holds the shape, dtype, the positions kept and skipped, and a CRC-32 of a sample of rows. The key
(:func:`transferkit.data.images.decode` builds it) covers the decoding version, the preprocessing and every
input's content hash, so a changed file or setting writes another entry and a second run on the same data decodes
nothing.

Written whole or not at all: rows go to ``.KEY.PID.tmp`` beside the entry, are flushed and fsynced, the header is
appended last, and only then is the file renamed into place (``os.replace``), so the final name never shows a
half-written entry. A reader checks the trailer, the header, the file's size (``rows * row_bytes`` plus the header)
and the sampled rows' checksums before use; any mismatch is a note and a fresh decode, never a crash. Checksumming
every row would read the whole file (10 GB for 60k images at 224 px) before the first batch; the size check catches
truncation, and the sample (:data:`CHECKED_ROWS` rows spread over the file, first and last included) catches a file
garbled or zero-filled by a crash of the machine.

:class:`PixelFile` reads rows with ``os.pread`` (contiguous runs coalesced) rather than ``np.memmap``: pages of a
mapping count in the process's resident memory and would grow with the data set; reads through the page cache do
not.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cache import cache_root

# Below this many decoded bytes, a split is held in memory as one tensor; above it, read from its file in the cache
# batch by batch. Measured at 112 px on the shared 2-core machine, page cache warm (5,000 rows): one image by index
# (a DataLoader's __getitem__) 2.7 us from the tensor, 17 us from the file, against 430 us or more for its
# random-resized-crop and flip; a random batch of 64 (inference) 3.7 ms from the tensor, 0.5 ms from the file. So the
# file costs about 3% of the data loading of an epoch; memory keeps that 3% where it is cheap to hold. 256 MB is
# 1,700 images at 224 px, 6,800 at 112 px, or 2.3 hours of audio at 16 kHz.
MEMORY_LIMIT_BYTES = 256 * 2**20
MAGIC = b"TKROWS01"
TRAILER = struct.Struct("<Q8s")  # header length, magic
CHECKED_ROWS = 16  # rows whose CRC-32 the header holds and a reader verifies: 16 x 37.6 KB at 112 px, under 1 ms
_warned: set[str] = set()  # cache folders already reported unusable: one warning per folder and process


def store_folder(kind: str = "pixels") -> Path | None:
    """``cache_root()/kind``, created; None, with one warning per process, when it cannot be a writable folder
    (then decoded rows stay in memory)."""
    from ..console import warn

    folder = cache_root() / kind
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(13, "not writable")
    except OSError as err:
        if str(folder) not in _warned:
            _warned.add(str(folder))
            warn(f"{kind} cache {folder} cannot be used ({err.strerror or err}): decoded data stay in memory; remove "
                 "what is in the way or set TRANSFERKIT_CACHE to a writable folder")
        return None
    return folder


def checked_rows(n: int, kept: list[int]) -> list[int]:
    """The rows whose checksums an entry holds: up to :data:`CHECKED_ROWS` kept rows, spread evenly, ends included."""
    if not kept:
        return []
    picks = np.unique(np.linspace(0, len(kept) - 1, min(CHECKED_ROWS, len(kept))).round().astype(int))
    return [kept[i] for i in picks]


class RowWriter:
    """Rows written at their positions into ``.KEY.PID.tmp``; :meth:`commit` makes the entry appear whole.

    Examples:

        >>> w = RowWriter(folder, key, 10, (3, 112, 112), torch.uint8)
        >>> w.write(0, pixels_of_image_0)
        >>> path = w.commit(kept=[0], skipped=[], extra={})
    """

    def __init__(self, folder: Path, key: str, rows: int, row_shape: tuple[int, ...], dtype: torch.dtype):
        remove_dead_temps(folder)
        self.path = folder / f"{key}.rows"
        self.tmp = folder / f".{key}.{os.getpid()}.tmp"
        self.rows, self.row_shape, self.dtype = rows, tuple(row_shape), dtype
        self.row_bytes = int(np.prod(row_shape)) * torch.empty((), dtype=dtype).element_size()
        self.fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(self.fd, rows * self.row_bytes)  # sparse until written; skipped rows stay zeros
        except OSError:
            self.abort()
            raise

    def write(self, i: int, row: torch.Tensor | np.ndarray) -> None:
        """Row ``i``, or consecutive rows from ``i`` (``row`` holding a whole number of rows); rows written past the
        size given at the start make the entry longer."""
        data = row.contiguous().numpy() if isinstance(row, torch.Tensor) else np.ascontiguousarray(row)
        view = memoryview(data).cast("B")
        if len(view) == 0 or len(view) % self.row_bytes:
            raise ValueError(f"{len(view)} bytes, not a whole number of {self.row_bytes}-byte rows")
        done = 0
        while done < len(view):  # pwrite may write less than asked (a signal, a full disk answers with an error)
            done += os.pwrite(self.fd, view[done:], i * self.row_bytes + done)
        self.rows = max(self.rows, i + len(view) // self.row_bytes)

    def commit(self, kept: list[int], skipped: list[int], extra: dict[str, Any],
               checked: list[int] | range | None = None) -> Path:
        """Checksum a sample of rows (of ``checked``, default ``kept``), append the header, fsync and rename into
        place; returns the entry's path."""
        sums = {str(i): zlib.crc32(os.pread(self.fd, self.row_bytes, i * self.row_bytes))
                for i in checked_rows(self.rows, list(checked) if checked is not None else kept)}
        header = json.dumps({"rows": self.rows, "row_shape": list(self.row_shape),
                             "dtype": str(self.dtype).removeprefix("torch."), "kept": kept, "skipped": skipped,
                             "crc32": sums, **extra}).encode()
        end = self.rows * self.row_bytes
        os.pwrite(self.fd, header + TRAILER.pack(len(header), MAGIC), end)
        os.fsync(self.fd)  # the rows and header are on disk before the name says the entry is complete
        os.close(self.fd)
        self.fd = -1
        os.replace(self.tmp, self.path)
        try:
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:  # some filesystems refuse fsync on a folder: the entry is complete all the same
            pass
        return self.path

    def read_back(self, rows: Any) -> torch.Tensor:
        """Rows ``rows`` as written so far, read from the temp file (before :meth:`abort`): what a write that failed
        midway keeps in memory."""
        return PixelFile(self.tmp, self.row_shape, self.dtype, rows)[:]

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.tmp.unlink(missing_ok=True)


def remove_dead_temps(folder: Path) -> None:
    """Remove ``.KEY.PID.tmp`` files left by processes that no longer run (a killed decode)."""
    for tmp in folder.glob(".*.tmp"):
        try:
            pid = int(tmp.name.rsplit(".", 2)[-2])
        except ValueError:
            continue
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except OSError:  # alive, owned by someone else
            pass


def read_header(path: Path) -> tuple[dict[str, Any] | None, str]:
    """An entry's header when its trailer, header, size and sampled checksums hold, else ``(None, what is wrong)``."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < TRAILER.size:
                return None, "is truncated"
            length, magic = TRAILER.unpack(os.pread(f.fileno(), TRAILER.size, size - TRAILER.size))
            if magic != MAGIC or length > size - TRAILER.size:
                return None, "has no valid trailer"
            header = json.loads(os.pread(f.fileno(), length, size - TRAILER.size - length))
            row_bytes = int(np.prod(header["row_shape"])) * torch.empty((), dtype=getattr(torch, header["dtype"])
                                                                        ).element_size()
            if size != header["rows"] * row_bytes + length + TRAILER.size:
                return None, f"is {size} bytes, not {header['rows']} rows of {row_bytes}"
            for i, crc in header["crc32"].items():
                if zlib.crc32(os.pread(f.fileno(), row_bytes, int(i) * row_bytes)) != crc:
                    return None, f"row {i} does not match its checksum"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # unreadable, not JSON, fields missing
        return None, "is damaged"
    return header, ""


class PixelFile:
    """Rows of an entry on disk that behave like the ``(N, *row_shape)`` tensor they replace: ``len``, ``shape``,
    ``dtype``, and indexing with an int, a slice, a list, a numpy array or a LongTensor (or a tuple whose first
    part is one of these) gives a fresh tensor read from disk. ``index`` maps position -> row in the file (the
    kept rows, or a cross-validation fold of them), so :meth:`subset` is a view that copies nothing.

    It pickles as its path, row shape and index map; each process opens the file itself on first read (DataLoader
    workers, forked or spawned). Raises ``IndexError`` for a position out of range.

    Examples:

        >>> px = PixelFile(path, (3, 112, 112), torch.uint8, index=[0, 2, 3])
        >>> px[[0, 2]].shape
        torch.Size([2, 3, 112, 112])
    """

    def __init__(self, path: Path | str, row_shape: tuple[int, ...], dtype: torch.dtype, index: Any):
        self.path = str(path)
        self.row_shape = tuple(int(s) for s in row_shape)
        self.dtype = dtype
        self.index = np.asarray(index, dtype=np.int64)
        self.row_bytes = int(np.prod(self.row_shape)) * torch.empty((), dtype=dtype).element_size()
        self._handle: _Handle | None = None

    # -- what the tensor answered -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.index), *self.row_shape))

    def dim(self) -> int:
        return 1 + len(self.row_shape)

    def __getitem__(self, key: Any) -> torch.Tensor:
        if isinstance(key, tuple):
            first, rest = key[0], key[1:]
            out = self[first]
            return out[rest] if isinstance(first, (int, np.integer)) else out[(slice(None), *rest)]
        if isinstance(key, (int, np.integer)):
            i = int(key)
            if not -len(self.index) <= i < len(self.index):
                raise IndexError(f"index {i} is out of range for {len(self.index)} rows")
            return self._row(int(self.index[i]))
        if isinstance(key, torch.Tensor):
            key = key.cpu().numpy()
        if isinstance(key, np.ndarray) and key.ndim == 0 and np.issubdtype(key.dtype, np.integer):
            return self[int(key)]  # tensor(3) picks a row, as it does from a tensor
        return self._read(self.index[key] if isinstance(key, slice) else self.index[np.asarray(key)])

    def subset(self, idx: Any) -> PixelFile:
        """The rows at positions ``idx``: the same file, another index map (no pixels copied)."""
        view = PixelFile(self.path, self.row_shape, self.dtype, self.index[np.asarray(idx, dtype=np.int64)])
        view._handle = self._handle  # the same open file: a fold reads what its parent checked
        return view

    def tensor(self) -> torch.Tensor:
        """Every row, read into memory."""
        return self[:]

    # -- reading ----------------------------------------------------------------------------------------------
    def _file(self) -> int:
        if self._handle is None or self._handle.pid != os.getpid():  # first read here, or in a forked worker
            self._handle = _Handle(self.path)
        return self._handle.fd

    def _row(self, row: int) -> torch.Tensor:
        # one image (a DataLoader's __getitem__): 12 us against 68 us through _read's run finding (112 px)
        buf = bytearray(self.row_bytes)
        got = os.preadv(self._file(), [buf], row * self.row_bytes)
        if got != self.row_bytes:
            raise OSError(f"{self.path} ends before row {row}: it was changed while in use")
        return torch.frombuffer(buf, dtype=self.dtype).view(self.row_shape)

    def _read(self, rows: np.ndarray) -> torch.Tensor:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = torch.empty((len(rows), *self.row_shape), dtype=self.dtype)
        if len(rows) == 0:
            return out
        buf = memoryview(out.numpy()).cast("B")
        fd, rb = self._file(), self.row_bytes
        # runs of consecutive rows become one read each: an ordered batch of 64 is one system call
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for start, stop in zip(np.r_[0, breaks], np.r_[breaks, len(rows)], strict=True):
            want, dest, offset = (stop - start) * rb, int(start) * rb, int(rows[start]) * rb
            while want:
                got = os.preadv(fd, [buf[dest : dest + want]], offset)
                if got == 0:
                    raise OSError(f"{self.path} ends before row {offset // rb}: it was changed while in use")
                want, dest, offset = want - got, dest + got, offset + got
        return out

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "row_shape": self.row_shape, "dtype": self.dtype, "index": self.index}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["row_shape"], state["dtype"], state["index"])

    def __repr__(self) -> str:
        return f"PixelFile({Path(self.path).name}, shape={tuple(self.shape)}, dtype={self.dtype})"


class _Handle:
    """An open file shared by a :class:`PixelFile` and its views, closed with the last of them, in its own process."""

    def __init__(self, path: str):
        self.fd, self.pid = os.open(path, os.O_RDONLY), os.getpid()

    def __del__(self) -> None:
        if self.pid == os.getpid():
            try:
                os.close(self.fd)
            except OSError:
                pass


def open_rows(path: Path, header: dict[str, Any], index: Any) -> PixelFile:
    """A :class:`PixelFile` of the entry at ``path`` (its header read by :func:`read_header`), opened now: the run
    keeps reading the file it checked even if the entry is removed or replaced meanwhile."""
    rows = PixelFile(path, tuple(header["row_shape"]), getattr(torch, header["dtype"]), index)
    rows._file()
    return rows


def take(rows: torch.Tensor | PixelFile, idx: Any) -> torch.Tensor | PixelFile:
    """``rows[idx]`` for a tensor (a copy), a view for a :class:`PixelFile`."""
    if isinstance(rows, PixelFile):
        return rows.subset(idx)
    return rows[torch.as_tensor(np.asarray(idx, dtype=np.int64))]


def chunks(rows: torch.Tensor | PixelFile, size: int = 256):
    """``rows`` (a tensor, a :class:`PixelFile` or an array) as tensors of at most ``size`` rows, in order (bounded
    memory for a pass over a file store)."""
    if not isinstance(rows, (torch.Tensor, PixelFile)):
        rows = torch.as_tensor(rows)
    for start in range(0, len(rows), size):
        yield rows[start : start + size]
