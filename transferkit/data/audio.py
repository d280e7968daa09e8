"""Audio input with soundfile (no torchaudio): read, mix down to mono, resample, pad or crop, cut into windows.

These are the building blocks the audio pipeline (issue 4) decodes with, once per run, at the backbone's own
sample rate. Every failure names the file and says what to do.
"""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np

from ..errors import DataError

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".au"}


def read_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Samples of ``path`` as float32 mono at ``sample_rate`` Hz (channels averaged, polyphase resampling).

    Raises :class:`DataError` for a missing or empty file, an unreadable or corrupt one, an mp3 this
    libsndfile cannot decode, or a file without samples.
    """
    import soundfile as sf

    path = Path(path)
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
    return resample(data.mean(axis=1), rate, sample_rate)


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
