"""Audio input building blocks (issue 4): reading, mono mix-down, resampling, lengths, windows, bad files, and
the espeak-ng spoken-digit builder."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from transferkit.data.audio import fix_length, is_silent, peak_dbfs, read_audio, windows
from transferkit.errors import DataError


def tone(freq: float, rate: int, seconds: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    x = 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def test_stereo_48k_becomes_mono_16k_with_its_pitch(tmp_path):
    import soundfile as sf

    path = tmp_path / "tone.wav"
    stereo = tone(440, 48_000, 1.0, channels=2)
    stereo[:, 1] *= 0.5  # the channels differ: the mix-down averages them
    sf.write(str(path), stereo, 48_000)
    x = read_audio(path, 16_000)
    assert x.dtype == np.float32 and x.shape == (16_000,)
    spectrum = np.abs(np.fft.rfft(x))
    assert abs(np.argmax(spectrum) * 16_000 / len(x) - 440) <= 1  # the tone survives resampling
    assert np.max(np.abs(x)) == pytest.approx(0.375, abs=0.01)  # (0.5 + 0.25) / 2


def test_bad_audio_files_get_one_clear_line(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty.wav is empty \(0 bytes\)"):
        read_audio(empty, 16_000)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    with pytest.raises(DataError, match=r"corrupt.wav is not a readable audio file .*re-export it as wav/flac"):
        read_audio(corrupt, 16_000)
    fake_mp3 = tmp_path / "song.mp3"
    fake_mp3.write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match=r"song.mp3"):
        read_audio(fake_mp3, 16_000)
    with pytest.raises(DataError, match=r"does not exist"):
        read_audio(tmp_path / "missing.wav", 16_000)


def test_silence_and_lengths():
    assert is_silent(np.zeros(100)) and peak_dbfs(np.zeros(10)) == float("-inf")
    assert not is_silent(tone(440, 16_000, 0.1))
    assert peak_dbfs(np.array([0.5, -1.0])) == pytest.approx(0.0)
    assert fix_length(np.arange(5.0), 8).tolist() == [0, 1, 2, 3, 4, 0, 0, 0]
    assert fix_length(np.arange(10.0), 4).tolist() == [3, 4, 5, 6]  # the centre
    w = windows(np.arange(10.0), 4)
    assert w.shape == (3, 4) and w[-1].tolist() == [8, 9, 0, 0]  # nothing dropped, last window padded
    assert windows(np.arange(3.0), 4).shape == (1, 4)
    assert windows(np.arange(10.0), 4, hop=2).shape == (4, 4)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (make data installs it)")
def test_spoken_digits_are_deterministic_with_disjoint_speakers(tmp_path):
    from transferkit.datasets.spoken_digits import build_spoken_digits

    a = build_spoken_digits(tmp_path / "a", train_per_class=2, test_per_class=2, train_speakers=3, test_speakers=2,
                            words=["one", "two"])
    b = build_spoken_digits(tmp_path / "b", train_per_class=2, test_per_class=2, train_speakers=3, test_speakers=2,
                            words=["one", "two"])
    files = sorted(p.relative_to(a) for p in a.rglob("*.wav"))
    assert len(files) == 8 and files == sorted(p.relative_to(b) for p in b.rglob("*.wav"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)

    def voices(split):
        return {p.name.split("_", 2)[2].rsplit("_s", 1)[0] for p in (a / split).rglob("*.wav")}

    assert voices("train") and voices("test") and not voices("train") & voices("test")
    x = read_audio(next(a.rglob("*.wav")), 16_000)
    assert 0.2 < len(x) / 16_000 < 2.0 and not is_silent(x)
    with pytest.raises(DataError, match="not empty"):
        build_spoken_digits(a)
