"""Audio input with soundfile (no torchaudio): read, mix down to mono, resample, pad or crop, cut into windows.

Every recording is read once per run at the backbone's own sample rate (:func:`read_clips`), then cut into
windows of the run's clip length (:func:`window_clips`). Every failure names the file and says what to do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import gcd
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..console import warn
from ..errors import DataError, TransferkitError
from .parallel import in_order

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".au"}
# Sample rates a recording may declare. Sensors (ECG, accelerometers) store 100-500 Hz, telephones 8 kHz, studios up
# to 384 kHz; a file declaring 1 Hz is tiny on disk but, resampled to the model's 16 kHz, 16,000 times longer (a
# 31 kB WAV cost 4.3 GB and 5 minutes).
MIN_SAMPLE_RATE = 100
MAX_SAMPLE_RATE = 768_000


def read_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Samples of ``path`` as float32 mono at ``sample_rate`` Hz (channels averaged, polyphase resampling).

    Raises :class:`DataError` for a missing or empty file, an unreadable or corrupt one, an mp3 this
    libsndfile cannot decode, or a file without samples.
    """
    data, rate = _load(Path(path))
    return resample(data.mean(axis=1), rate, sample_rate)


def _load(path: Path) -> tuple[np.ndarray, int]:
    """``(samples (N, channels) float32, sample rate)`` of an audio file, or one clear :class:`DataError`."""
    import soundfile as sf

    if not path.is_file():
        raise DataError(f"Audio file {path} does not exist: check the path.")
    if path.stat().st_size == 0:
        raise DataError(f"Audio file {path} is empty (0 bytes): re-export it or remove it (or pass --skip-bad).")
    if path.suffix.lower() == ".mp3" and "MP3" not in sf.available_formats():
        raise DataError(f"{path}: this soundfile/libsndfile cannot decode mp3; convert it (ffmpeg -i in.mp3 out.wav) "
                        "or install soundfile>=0.12 (libsndfile 1.1+).")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        reason = str(err).split(":")[-1].strip() or type(err).__name__
        raise DataError(f"{path} is not a readable audio file ({reason}): re-export it as wav/flac or remove it "
                        "(or pass --skip-bad).") from None
    if data.shape[0] == 0:
        raise DataError(f"Audio file {path} has no samples: re-export it or remove it (or pass --skip-bad).")
    check_sample_rate(rate, f"Audio file {path}")
    check_finite(data, f"Audio file {path}")
    return data, int(rate)


def check_sample_rate(rate: int, what: str) -> None:
    """Refuse a sample rate no recorder makes (:data:`MIN_SAMPLE_RATE` to :data:`MAX_SAMPLE_RATE`): resampling it
    to the model's rate would cost memory and time out of all proportion to the file."""
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise DataError(f"{what} declares a sample rate of {rate} Hz, outside {MIN_SAMPLE_RATE:,} to "
                        f"{MAX_SAMPLE_RATE:,} Hz: re-export it at its real rate or remove it (or pass --skip-bad).")


def check_finite(samples: np.ndarray, what: str) -> None:
    """Refuse samples holding NaN or infinity (a float WAV can): one such sample turns every score into NaN."""
    finite = np.isfinite(samples)
    if not finite.all():
        first = int(np.argmin(finite.reshape(len(samples), -1).all(axis=1)))
        bad = samples.reshape(len(samples), -1)[first]
        kind = "NaN" if np.isnan(bad).any() else "infinite"
        raise DataError(f"{what} holds {kind} samples (first at sample {first}): re-export it or remove it (or pass "
                        "--skip-bad).")


def resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Polyphase resampling (anti-aliased) from ``rate`` to ``target`` Hz."""
    if rate == target:
        return np.ascontiguousarray(x, dtype=np.float32)
    from scipy.signal import resample_poly

    g = gcd(int(rate), int(target))
    return resample_poly(x, target // g, rate // g).astype(np.float32)


def peak_dbfs(x: np.ndarray) -> float:
    """Peak level in dB relative to full scale (-inf for digital silence)."""
    peak = float(np.max(np.abs(x))) if len(x) else 0.0
    return float("-inf") if peak == 0 else 20 * np.log10(peak)


def is_silent(x: np.ndarray, threshold_db: float = -60.0) -> bool:
    """True when the clip never rises above ``threshold_db`` (silence, or a recording with the gain at zero)."""
    return peak_dbfs(x) < threshold_db


def fix_length(x: np.ndarray, n: int) -> np.ndarray:
    """Exactly ``n`` samples: zero-padded at the end, or the centre ``n`` samples of a longer clip."""
    if len(x) >= n:
        start = (len(x) - n) // 2
        return x[start : start + n]
    return np.pad(x, (0, n - len(x)))


def windows(x: np.ndarray, n: int, hop: int | None = None) -> np.ndarray:
    """Cut a long recording into windows of ``n`` samples every ``hop`` (default ``n``): ``(W, n)``.

    A clip no longer than one window gives one (padded) window; the last window is padded, so no audio is
    dropped. Predictions on the windows are then aggregated per recording.
    """
    from .wavestore import window_starts

    if len(x) <= n:
        return fix_length(x, n)[None]
    return np.stack([np.pad(x[s : s + n], (0, max(0, s + n - len(x)))) for s in window_starts(len(x), n, hop or n)])


# ---------------------------------------------------------------------------------------------- decoding a set


def normalize_loudness(x: np.ndarray, target_dbfs: float) -> np.ndarray:
    """Raise a quiet recording's RMS level to ``target_dbfs`` (never lowers a loud one; silence stays silence)."""
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0
    if rms == 0.0:
        return x
    gain_db = target_dbfs - 20 * np.log10(rms)
    return x if gain_db <= 0 else (x * 10 ** (gain_db / 20)).astype(np.float32)


def trim_silence(x: np.ndarray, below_peak_db: float, frame: int = 160) -> np.ndarray:
    """Cut leading and trailing frames quieter than ``below_peak_db`` under the loudest frame."""
    if len(x) < 2 * frame:
        return x
    n = len(x) // frame
    energy = np.sqrt(np.mean(np.square(x[: n * frame].reshape(n, frame), dtype=np.float64), axis=1))
    loud = np.flatnonzero(energy > energy.max() * 10 ** (-below_peak_db / 20))
    if len(loud) == 0:
        return x
    return x[loud[0] * frame : min(len(x), (loud[-1] + 1) * frame)]


@dataclass
class Clips:
    """Recordings read once at the backbone's sample rate (mono, loudness and silence handled as it asks).

    Their samples are one float16 sequence, ``source`` (a 1-D tensor, or rows of the audio cache on disk, see
    :mod:`transferkit.data.wavestore`); recording ``r`` is ``lengths[r]`` samples from ``offsets[r]``.
    """

    source: Any  # torch.Tensor (1-D float16) or PixelFile of wavestore.BLOCK-sample rows
    offsets: np.ndarray
    lengths: np.ndarray
    fingerprints: list[str]
    kept: list[int]  # position of each clip in its source (unreadable files skipped leave gaps)
    skipped: list[str]
    source_rates: dict[str, int]  # "48000 Hz x 2 ch" -> number of files
    silent: list[str]
    names: list[str]  # each clip's file, or "array #i"

    @classmethod
    def from_arrays(cls, samples: list[np.ndarray], fingerprints: list[str] | None = None,
                    names: list[str] | None = None) -> Clips:
        """Recordings already at the model's rate (tests, a task of one's own), held in memory."""
        from .wavestore import as_float16

        lengths = np.array([len(x) for x in samples], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        source = torch.from_numpy(np.concatenate([as_float16(np.asarray(x)) for x in samples]))
        n = len(samples)
        return cls(source, offsets, lengths, fingerprints or [""] * n, list(range(n)), [], {}, [],
                   names or [f"array #{i}" for i in range(n)])

    def __len__(self) -> int:
        return len(self.lengths)

    def durations(self, sample_rate: int) -> np.ndarray:
        return self.lengths / sample_rate

    def clip(self, r: int) -> np.ndarray:
        """Recording ``r``'s samples (float32)."""
        from .wavestore import read_span

        return read_span(self.source, int(self.offsets[r]), int(self.lengths[r])).float().numpy()


@dataclass
class DecodedAudio:
    """Windows of every recording, ready for the network.

    ``waves``: (M, clip_samples) float16 windows (a :class:`~transferkit.data.wavestore.Waves`, read from the
    recordings when indexed); ``owner``: (M,) the recording each window belongs to; ``targets``: (N,) per recording;
    ``fingerprints``/``kept``/``names``: per recording. Outputs on the windows are averaged per recording
    (:func:`transferkit.engine.inference.forward_inputs`).
    """

    waves: Any
    owner: torch.Tensor
    targets: torch.Tensor
    fingerprints: list[str]
    skipped: list[str] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.targets)

    def window_targets(self) -> torch.Tensor:
        return self.targets[self.owner]

    def subset(self, idx: Any) -> DecodedAudio:
        """The recordings at positions ``idx`` (a cross-validation fold), with their windows."""
        import dataclasses

        idx = [int(i) for i in idx]
        new = torch.full((len(self.targets),), -1, dtype=torch.long)
        new[idx] = torch.arange(len(idx))
        rows = (new[self.owner] >= 0).nonzero().flatten()
        # windows in recording order, so the owners stay grouped as window_clips made them
        rows = rows[torch.argsort(new[self.owner[rows]], stable=True)]
        return dataclasses.replace(self, waves=self.waves.subset(rows.numpy()), owner=new[self.owner[rows]],
                                   targets=self.targets[idx], fingerprints=[self.fingerprints[i] for i in idx],
                                   skipped=[], kept=[self.kept[i] for i in idx] if self.kept else [],
                                   names=[self.names[i] for i in idx] if self.names else [], info=dict(self.info))


def shifted_views(data: DecodedAudio, fractions: tuple[float, ...] = (-0.25, 0.25)) -> list[DecodedAudio]:
    """The recordings' windows moved by each of ``fractions`` of a window (test-time augmentation; the identity is
    not among them). A window never leaves its recording: its start stays within the recording's samples, and its
    valid length is cut at the recording's end (zero padding after, as the first cut)."""
    import dataclasses

    from .wavestore import Waves

    w = data.waves
    owner = data.owner.numpy()
    ends = w.starts + w.valid
    lo = np.full(len(data), np.iinfo(np.int64).max)
    hi = np.zeros(len(data), dtype=np.int64)
    np.minimum.at(lo, owner, w.starts)
    np.maximum.at(hi, owner, ends)
    views = []
    for f in fractions:
        starts = np.clip(w.starts + round(f * w.n), lo[owner], np.maximum(lo[owner], hi[owner] - 1))
        valid = np.minimum(w.n, hi[owner] - starts)
        views.append(dataclasses.replace(data, waves=Waves(w.source, starts, valid, w.n)))
    return views


def _array_hash(arr: np.ndarray, rate: int | None) -> str:
    import hashlib

    return hashlib.sha1(np.ascontiguousarray(arr, dtype=np.float32).tobytes() + f"{rate}".encode()).hexdigest()


def _file_hash(path: Path) -> str:
    from ..io import file_digest

    return file_digest(path, "sha1")  # sha1: the audio cache's keys were made with it


def fingerprint(item: Any, array_rate: int | None) -> str | None:
    """The content hash :func:`read_clips` gives a recording (bytes of a file; samples and rate of an array), or None
    for a file that cannot be opened (reading it reports why)."""
    if isinstance(item, np.ndarray):
        return _array_hash(item, array_rate)
    try:
        return _file_hash(Path(item))
    except OSError:
        return None


def _read_item(item: Any, sample_rate: int, array_rate: int | None,
               known: str | None = None) -> tuple[np.ndarray, str, str]:
    """(samples, content hash, "rate x channels") of a file or an in-memory array; ``known``: its hash, when the
    cache lookup already computed it (the file's bytes are not read a second time for it)."""
    if isinstance(item, np.ndarray):
        if array_rate is None:
            raise DataError("Audio arrays need their sample rate: build AudioSet(..., sample_rate=16000).")
        arr = np.asarray(item, dtype=np.float32)
        channels = 1 if arr.ndim == 1 else arr.shape[1]
        mono = arr if arr.ndim == 1 else arr.mean(axis=1)
        if len(mono) == 0:
            raise DataError("An audio array has no samples: remove it.")
        check_sample_rate(int(array_rate), "An audio array")
        check_finite(arr, "An audio array")
        fp = known or _array_hash(arr, array_rate)
        return resample(mono, array_rate, sample_rate), fp, f"{array_rate} Hz x {channels} ch"
    path = Path(item)
    data, rate = _load(path)
    fp = known or _file_hash(path)
    return resample(data.mean(axis=1), rate, sample_rate), fp, f"{rate} Hz x {data.shape[1]} ch"


DECODING = b"transferkit-audio-1"  # bump when reading, resampling, trimming or levelling changes its samples
STORES = ("auto", "memory", "disk")


def clip_key(pre: Any, array_rate: int | None, skip_bad: bool, items: list[Any], prints: list[str | None]) -> str:
    """The audio cache key of a split: :data:`DECODING`, what changes the samples (the sample rate, silence
    trimming, loudness; not the window length, windows are cut at run time), the arrays' rate, ``skip_bad`` (it
    decides which recordings are kept) and each recording's fingerprint in order (an unreadable one by its name)."""
    import hashlib
    import json

    settings = {"sample_rate": pre.sample_rate, "trim_db": pre.trim_db, "target_dbfs": pre.target_dbfs,
                "array_rate": array_rate, "skip_bad": bool(skip_bad)}
    h = hashlib.sha256(DECODING + json.dumps(settings, sort_keys=True).encode())
    for n, (item, fp) in enumerate(zip(items, prints, strict=True)):
        h.update(((fp or f"unreadable {f'array #{n}' if isinstance(item, np.ndarray) else item}") + "\n").encode())
    return h.hexdigest()[:32]


def _name(items: list[Any], i: int) -> str:
    return f"array #{i}" if isinstance(items[i], np.ndarray) else str(items[i])


def read_clips(items: list[Any], pre: Any, *, skip_bad: bool = False, array_rate: int | None = None,
               description: str = "reading audio", workers: int = 2, store: str = "auto",
               cache: bool = True) -> Clips:
    """Read every recording once (thread pool, progress bar): mono, at ``pre.sample_rate``, loudness raised to
    ``pre.target_dbfs`` and silence trimmed by ``pre.trim_db`` when the backbone asks for it; or, when the audio
    cache holds these recordings at these settings, read nothing.

    Every file is hashed first (bytes only); the samples (float16, 32 KB a second at 16 kHz) are written to
    ``cache_root()/"audio"`` one recording after another (:mod:`transferkit.data.wavestore`), so that memory holds
    one recording at a time while reading, and a later run, ``compare``, ``rank`` or ``evaluate`` on the same
    recordings reads them back.

    Args:
        store: ``"memory"``: the samples are one tensor; ``"disk"``: windows are read from the cache entry batch by
            batch, so memory is bounded by the batch; ``"auto"``: memory under
            :data:`~transferkit.data.pixelstore.MEMORY_LIMIT_BYTES` of samples, disk above. When the cache cannot
            be used (a warning says why) the samples stay in memory.
        cache: False: neither read nor write the cache (``predict``: recordings seen once need no entry).

    Unreadable files raise :class:`DataError` naming the file, or are skipped (and counted) with ``skip_bad``.
    Silent recordings are kept with a warning (skipped with ``skip_bad``): they carry no sound to learn from.
    """
    from concurrent.futures import ThreadPoolExecutor

    from ..console import info, progress
    from . import pixelstore
    from .wavestore import BLOCK, as_float16

    if store not in STORES:
        raise TransferkitError(f"store must be one of {', '.join(STORES)}, not {store!r}.")
    n = len(items)
    path, folder, key, prints = None, None, "", [None] * n
    if cache:
        with ThreadPoolExecutor(max_workers=max(workers, 4)) as pool:
            prints = list(pool.map(lambda item: fingerprint(item, array_rate), items))
        key = clip_key(pre, array_rate, skip_bad, items, prints)
        folder = pixelstore.store_folder("audio")
        path = folder / f"{key}.rows" if folder is not None else None
    if path is not None and path.is_file():
        header, problem = pixelstore.read_header(path)
        if header is not None and (header.get("key") != key or header.get("fingerprints") != prints
                                   or tuple(header["row_shape"]) != (BLOCK,) or header["dtype"] != "float16"):
            header, problem = None, "was written for other data"
        if header is None:
            info(f"audio cache: {path.name} {problem}: reading the recordings again")
            path.unlink(missing_ok=True)
        else:
            kept = header["kept"]
            clips = Clips(pixelstore.open_rows(path, header, range(header["rows"])),
                          np.array(header["offsets"], dtype=np.int64), np.array(header["lengths"], dtype=np.int64),
                          [str(prints[i]) for i in kept], kept, [_name(items, i) for i in header["skipped"]],
                          header["source_rates"], [_name(items, i) for i in header["silent"]],
                          [_name(items, i) for i in kept])
            _report(clips, skip_bad, description)
            return _placed(clips, store)

    writer = None
    if path is not None:
        try:
            writer = pixelstore.RowWriter(folder, key, 0, (BLOCK,), torch.float16)
        except OSError as err:
            warn(f"audio cache: cannot write in {folder} ({err.strerror or err}): the recordings stay in memory")
    parts: list[np.ndarray] = []  # the samples, when they stay in memory
    offsets: list[int] = []
    lengths: list[int] = []
    kept: list[int] = []
    skipped: list[int] = []
    silent: list[int] = []
    rates: dict[str, int] = {}
    at = 0  # next free sample (in memory) or row (on disk)

    def work(i: int):
        try:
            x, fp, fmt = _read_item(items[i], pre.sample_rate, array_rate, prints[i])
        except DataError as err:
            return i, None, "", "", err
        return i, x, fp, fmt, None

    try:
        with progress() as bar, ThreadPoolExecutor(max_workers=workers) as pool:
            task = bar.add_task(description, total=n, status="")
            for i, x, fp, fmt, err in in_order(pool, work, range(n)):
                bar.advance(task)
                if err is not None:
                    if not skip_bad:
                        raise err
                    skipped.append(i)
                    continue
                if is_silent(x):
                    silent.append(i)
                    if skip_bad:
                        skipped.append(i)
                        continue
                else:
                    if pre.trim_db is not None:
                        x = trim_silence(x, pre.trim_db, frame=max(1, pre.sample_rate // 100))
                    if pre.target_dbfs is not None:
                        x = normalize_loudness(x, pre.target_dbfs)
                prints[i] = fp
                h = as_float16(x)
                if writer is not None:
                    rows = max(1, -(-len(h) // BLOCK))
                    padded = np.zeros(rows * BLOCK, dtype=np.float16)
                    padded[: len(h)] = h
                    try:
                        writer.write(at, padded)
                        offsets.append(at * BLOCK)
                        at += rows
                    except OSError as err:  # the disk filled up: what was written comes back to memory
                        warn(f"audio cache: cannot write in {folder} ({err.strerror or err}): the recordings stay "
                             "in memory")
                        if at:
                            parts.append(writer.read_back(range(at)).reshape(-1).numpy())
                        at *= BLOCK
                        writer.abort()
                        writer = None
                if writer is None:
                    parts.append(h)
                    offsets.append(at)
                    at += len(h)
                lengths.append(len(h))
                kept.append(i)
                rates[fmt] = rates.get(fmt, 0) + 1
        if not kept:
            where = description.removeprefix("reading ") if description.startswith("reading ") else "the data"
            raise DataError(f"No readable, non-silent audio in {where}: check the files are wav/flac/ogg recordings.")
        source: Any = None
        if writer is not None:
            try:
                path = writer.commit(kept, skipped, {"key": key, "fingerprints": prints, "offsets": offsets,
                                                     "lengths": lengths, "silent": silent, "source_rates": rates},
                                     checked=range(at))
                source = pixelstore.open_rows(path, {"row_shape": [BLOCK], "dtype": "float16"}, range(at))
            except OSError as err:
                warn(f"audio cache: could not write {path} ({err.strerror or err}): the recordings are not cached")
                source = writer.read_back(range(at)).reshape(-1)
                writer.abort()
            writer = None
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if source is None:
        source = torch.from_numpy(np.concatenate(parts))
    clips = Clips(source, np.array(offsets, dtype=np.int64), np.array(lengths, dtype=np.int64),
                  [str(prints[i]) for i in kept], kept, [_name(items, i) for i in skipped], rates,
                  [_name(items, i) for i in silent], [_name(items, i) for i in kept])
    _report(clips, skip_bad, description)
    return _placed(clips, store)


def _report(clips: Clips, skip_bad: bool, description: str) -> None:
    """The warnings of a read (replayed when the cache answered)."""
    if clips.skipped:
        warn(f"skipped {len(clips.skipped)} unreadable or silent audio file(s), e.g. {clips.skipped[0]}")
    if clips.silent and not skip_bad:
        warn(f"{len(clips.silent)} silent recording(s) (peak below -60 dBFS), e.g. {clips.silent[0]}: kept, but they "
             "carry no sound; check them (--skip-bad leaves them out)")


def _placed(clips: Clips, store: str) -> Clips:
    """``clips`` with its samples in memory when ``store`` asks for it (or, with ``"auto"``, when they are few)."""
    from . import pixelstore

    source = clips.source
    if isinstance(source, pixelstore.PixelFile) and (
            store == "memory" or (store == "auto" and len(source) * source.row_bytes < pixelstore.MEMORY_LIMIT_BYTES)):
        clips.source = source[:].reshape(-1)
    return clips


def choose_clip_seconds(durations: np.ndarray, lo: float = 0.5, hi: float = 10.0) -> float:
    """The window length for a run: the 95th percentile of the training durations, rounded up to 0.25 s,
    within [``lo``, ``hi``]. Most recordings then fit one window whole; longer ones become several."""
    if len(durations) == 0:
        return lo
    p95 = float(np.percentile(durations, 95))
    return float(min(hi, max(lo, np.ceil(p95 * 4 - 1e-9) / 4)))


def window_clips(clips: Clips, targets: torch.Tensor | list[int] | None, clip_samples: int,
                 info: dict[str, Any] | None = None) -> DecodedAudio:
    """Cut every recording into windows of ``clip_samples`` (hop: half a window) -> :class:`DecodedAudio`. Nothing
    is copied: the windows are read from ``clips``' samples when indexed. ``targets``: one row per kept recording
    (class indices, or multi-label 0/1 rows), None for unlabelled recordings."""
    from .wavestore import Waves, window_starts

    hop = max(1, clip_samples // 2)
    starts, valid, owner = [], [], []
    for r, (offset, length) in enumerate(zip(clips.offsets.tolist(), clips.lengths.tolist(), strict=True)):
        s = window_starts(length, clip_samples, hop)
        starts.append(offset + s)
        valid.append(np.minimum(clip_samples, length - s))
        owner.append(np.full(len(s), r, dtype=np.int64))
    t = torch.as_tensor(targets) if targets is not None else torch.zeros(len(clips), dtype=torch.long)
    waves = Waves(clips.source, np.concatenate(starts), np.concatenate(valid), clip_samples)
    return DecodedAudio(waves, torch.from_numpy(np.concatenate(owner)), t, clips.fingerprints, clips.skipped,
                        clips.kept, clips.names, info or {})
