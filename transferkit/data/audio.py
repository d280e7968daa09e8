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

from ..errors import DataError
from .parallel import in_order

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".au"}
# Sample rates a recording may declare. Sensors (ECG, accelerometers) store 100-500 Hz, telephones 8 kHz, studios up
# to 384 kHz; a file declaring 1 Hz is tiny on disk but, resampled to the model's 16 kHz, 16,000 times longer (a
# 31 kB WAV cost 4.3 GB and 5 minutes).
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 100, 768_000


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
    hop = hop or n
    if len(x) <= n:
        return fix_length(x, n)[None]
    starts = list(range(0, len(x) - n + 1, hop))
    if starts[-1] + n < len(x):
        starts.append(starts[-1] + hop)
    return np.stack([np.pad(x[s : s + n], (0, max(0, s + n - len(x)))) for s in starts])


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
    """Recordings read once at the backbone's sample rate (mono, loudness and silence handled as it asks)."""

    samples: list[np.ndarray]
    fingerprints: list[str]
    kept: list[int]  # position of each clip in its source (unreadable files skipped leave gaps)
    skipped: list[str]
    source_rates: dict[str, int]  # "48000 Hz x 2 ch" -> number of files
    silent: list[str]
    names: list[str]  # each clip's file, or "array #i"

    def durations(self, sample_rate: int) -> np.ndarray:
        return np.array([len(s) / sample_rate for s in self.samples])


@dataclass
class DecodedAudio:
    """Windows of every recording, ready for the network.

    ``waves``: (M, clip_samples) float16 windows; ``owner``: (M,) the recording each window belongs to;
    ``targets``: (N,) per recording; ``fingerprints``/``kept``/``names``: per recording. Outputs on the windows
    are averaged per recording (:func:`transferkit.engine.inference.forward_inputs`).
    """

    waves: torch.Tensor
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
        return dataclasses.replace(self, waves=self.waves[rows], owner=new[self.owner[rows]], targets=self.targets[idx],
                                   fingerprints=[self.fingerprints[i] for i in idx], skipped=[],
                                   kept=[self.kept[i] for i in idx] if self.kept else [],
                                   names=[self.names[i] for i in idx] if self.names else [], info=dict(self.info))


def _read_item(item: Any, sample_rate: int, array_rate: int | None) -> tuple[np.ndarray, str, str]:
    """(samples, content hash, "rate x channels") of a file or an in-memory array."""
    import hashlib

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
        fp = hashlib.sha1(arr.tobytes() + f"{array_rate}".encode()).hexdigest()
        return resample(mono, array_rate, sample_rate), fp, f"{array_rate} Hz x {channels} ch"
    path = Path(item)
    data, rate = _load(path)
    h = hashlib.sha1()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    fp = h.hexdigest()
    return resample(data.mean(axis=1), rate, sample_rate), fp, f"{rate} Hz x {data.shape[1]} ch"


def read_clips(items: list[Any], pre: Any, *, skip_bad: bool = False, array_rate: int | None = None,
               description: str = "reading audio", workers: int = 2) -> Clips:
    """Read every recording once (thread pool, progress bar): mono, at ``pre.sample_rate``, loudness raised to
    ``pre.target_dbfs`` and silence trimmed by ``pre.trim_db`` when the backbone asks for it.

    Unreadable files raise :class:`DataError` naming the file, or are skipped (and counted) with ``skip_bad``.
    Silent recordings are kept with a warning (skipped with ``skip_bad``): they carry no sound to learn from.
    """
    from concurrent.futures import ThreadPoolExecutor

    from ..console import progress, warn

    out: list[tuple[int, np.ndarray, str, str]] = []
    skipped: list[str] = []
    silent: list[str] = []

    def work(i: int):
        try:
            x, fp, fmt = _read_item(items[i], pre.sample_rate, array_rate)
        except DataError as err:
            return i, None, "", "", err
        return i, x, fp, fmt, None

    with progress() as bar, ThreadPoolExecutor(max_workers=workers) as pool:
        task = bar.add_task(description, total=len(items), status="")
        for i, x, fp, fmt, err in in_order(pool, work, range(len(items))):
            bar.advance(task)
            name = str(items[i]) if not isinstance(items[i], np.ndarray) else f"array #{i}"
            if err is not None:
                if not skip_bad:
                    raise err
                skipped.append(name)
                continue
            if is_silent(x):
                silent.append(name)
                if skip_bad:
                    skipped.append(name)
                    continue
            else:
                if pre.trim_db is not None:
                    x = trim_silence(x, pre.trim_db, frame=max(1, pre.sample_rate // 100))
                if pre.target_dbfs is not None:
                    x = normalize_loudness(x, pre.target_dbfs)
            out.append((i, x, fp, fmt, name))
    if skipped:
        warn(f"skipped {len(skipped)} unreadable or silent audio file(s), e.g. {skipped[0]}")
    if silent and not skip_bad:
        warn(f"{len(silent)} silent recording(s) (peak below -60 dBFS), e.g. {silent[0]}: kept, but they carry no "
             "sound; check them (--skip-bad leaves them out)")
    if not out:
        where = description.removeprefix("reading ") if description.startswith("reading ") else "the data"
        raise DataError(f"No readable, non-silent audio in {where}: check the files are wav/flac/ogg recordings.")
    rates: dict[str, int] = {}
    for *_, fmt, _ in out:
        rates[fmt] = rates.get(fmt, 0) + 1
    return Clips([o[1] for o in out], [o[2] for o in out], [o[0] for o in out], skipped, rates, silent,
                 [o[4] for o in out])


def choose_clip_seconds(durations: np.ndarray, lo: float = 0.5, hi: float = 10.0) -> float:
    """The window length for a run: the 95th percentile of the training durations, rounded up to 0.25 s,
    within [``lo``, ``hi``]. Most recordings then fit one window whole; longer ones become several."""
    if len(durations) == 0:
        return lo
    p95 = float(np.percentile(durations, 95))
    return float(min(hi, max(lo, np.ceil(p95 * 4 - 1e-9) / 4)))


def window_clips(clips: Clips, targets: list[int] | None, clip_samples: int,
                 info: dict[str, Any] | None = None) -> DecodedAudio:
    """Cut every recording into windows of ``clip_samples`` (hop: half a window) -> :class:`DecodedAudio`."""
    parts, owner = [], []
    for r, x in enumerate(clips.samples):
        w = windows(x, clip_samples, max(1, clip_samples // 2))
        parts.append(torch.from_numpy(np.clip(w, -65504, 65504)).to(torch.float16))
        owner += [r] * len(w)
    t = torch.tensor(targets if targets is not None else [0] * len(clips.samples), dtype=torch.long)
    return DecodedAudio(torch.cat(parts), torch.tensor(owner, dtype=torch.long), t, clips.fingerprints,
                        clips.skipped, clips.kept, clips.names, info or {})
