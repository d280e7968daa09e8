"""The audio cache: recordings' samples on disk give exactly the windows the in-memory path gives, entries are
written whole or not at all, keyed by content and the settings that change samples, reused without reading, and
read by DataLoader workers; a fit reads its windows from disk and trains the same model."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import transferkit.data.audio as audio_mod
import transferkit.data.pixelstore as pixelstore
from transferkit.backbones.audio import AudioPreprocessConfig
from transferkit.data.audio import read_clips, window_clips, windows
from transferkit.data.wavestore import BLOCK, Waves
from transferkit.errors import DataError, TransferkitError

PRE = AudioPreprocessConfig()  # 16 kHz


def write_recordings(folder: Path, seconds: list[float], rate: int = 22_050) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(seconds))
    paths = []
    for i, s in enumerate(seconds):
        n = int(rate * s)
        x = 0.3 * np.sin(2 * np.pi * (200 + 40 * i) * np.arange(n) / rate) + 0.02 * rng.standard_normal(n)
        paths.append(folder / f"r{i}.wav")
        sf.write(str(paths[-1]), x.astype(np.float32), rate)
    return paths


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def recordings(tmp_path) -> list[Path]:
    # from under a window to several windows; 0.7 s is 11,200 samples at 16 kHz: not a whole number of rows
    return write_recordings(tmp_path / "audio", [0.2, 0.7, 1.3, 2.05, 0.5, 3.1])


@pytest.fixture
def reads(monkeypatch) -> list[int]:
    """How many recordings were decoded since the test began."""
    calls = [0]
    real = audio_mod._read_item

    def counting(*args):
        calls[0] += 1
        return real(*args)

    monkeypatch.setattr(audio_mod, "_read_item", counting)
    return calls


def entries(root: Path) -> list[Path]:
    return sorted((root / "audio").glob("*.rows"))


def test_disk_windows_are_exactly_the_windows_in_memory(recordings, cache):
    mem = read_clips(recordings, PRE, store="memory", cache=False)
    disk = read_clips(recordings, PRE, store="disk")
    assert isinstance(mem.source, torch.Tensor) and disk.source.__class__.__name__ == "PixelFile"
    assert mem.lengths.tolist() == disk.lengths.tolist() and disk.offsets.tolist()[1] % BLOCK == 0
    for n in (4000, 16_000, 48_000):  # windows shorter than, about as long as, and longer than the recordings
        a, b = window_clips(mem, None, n), window_clips(disk, None, n)
        assert a.owner.tolist() == b.owner.tolist() and a.waves.shape == b.waves.shape == (len(a.owner), n)
        # the windows numpy would cut from each recording, as the network saw them before there was a cache
        expected = torch.cat([torch.from_numpy(windows(mem.clip(r), n, n // 2)) for r in range(len(mem))])
        assert torch.equal(a.waves[:].float(), expected) and torch.equal(b.waves[:], a.waves[:])
        picks = torch.tensor([5, 0, 3, 3, len(a.owner) - 1])
        assert torch.equal(b.waves[picks], a.waves[picks]) and torch.equal(b.waves[2], a.waves[2])
        assert torch.equal(b.waves[-1], a.waves[-1]) and torch.equal(b.waves[1:4], a.waves[1:4])
        assert torch.equal(b.waves.subset([4, 1]).__getitem__(slice(None)), a.waves[[4, 1]])
    with pytest.raises(IndexError):
        a.waves[len(a.waves)]


def test_a_fold_keeps_its_recordings_windows(recordings, cache):
    data = window_clips(read_clips(recordings, PRE, store="disk"), [0, 1, 0, 1, 0, 1], 8000)
    fold = data.subset([3, 1])
    # 2.05 s at 16 kHz: windows of 0.5 s every 0.25 s start at 0 .. 1.5 s, and one more at 1.75 s for the end
    assert fold.targets.tolist() == [1, 1] and fold.owner.tolist() == [0] * 8 + [1] * 2
    assert torch.equal(fold.waves[:], torch.cat([data.waves[data.owner == 3], data.waves[data.owner == 1]]))


def test_a_second_read_is_a_hit_at_any_window_length(recordings, cache, reads):
    first = read_clips(recordings, PRE, store="disk")
    assert reads[0] == len(recordings) and len(entries(cache)) == 1
    reads[0] = 0
    again = read_clips(recordings, PRE, store="memory")
    assert reads[0] == 0 and isinstance(again.source, torch.Tensor)  # small enough: read back into memory
    assert torch.equal(window_clips(again, None, 3000).waves[:], window_clips(first, None, 3000).waves[:])
    assert again.names == [str(p) for p in recordings] and again.source_rates == {"22050 Hz x 1 ch": 6}


def test_a_changed_file_or_setting_is_another_entry(recordings, cache, reads):
    read_clips(recordings, PRE)
    write_recordings(recordings[0].parent, [0.2, 0.75])  # r1.wav changes
    read_clips(recordings, PRE)
    read_clips(recordings, AudioPreprocessConfig(trim_db=30.0))
    read_clips(recordings, AudioPreprocessConfig(sample_rate=8000))
    assert len(entries(cache)) == 4 and reads[0] == 4 * len(recordings)
    reads[0] = 0
    read_clips(recordings, AudioPreprocessConfig(clip_seconds=0.25, n_mels=64))  # window and spectrogram: the same
    assert reads[0] == 0


KILLED = """
import os, sys
import transferkit.data.pixelstore as store
from pathlib import Path
from transferkit.backbones.audio import AudioPreprocessConfig
from transferkit.data.audio import read_clips

real, written = store.RowWriter.write, [0]
def write(self, i, row):
    real(self, i, row)
    written[0] += 1
    if written[0] == 3:  # killed in the middle of writing the entry
        os.kill(os.getpid(), 9)
store.RowWriter.write = write
read_clips(sorted(Path(sys.argv[1]).glob("*.wav")), AudioPreprocessConfig(), store="disk")
"""


def test_a_killed_read_leaves_no_entry_that_is_read(recordings, cache, reads):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED), str(recordings[0].parent)], env=env)
    assert done.returncode == -9
    assert entries(cache) == [] and len(list((cache / "audio").glob(".*.tmp"))) == 1
    clips = read_clips(sorted(recordings), PRE, store="disk")
    assert reads[0] == len(recordings) and len(entries(cache)) == 1
    assert list((cache / "audio").glob(".*.tmp")) == []
    mem = read_clips(sorted(recordings), PRE, cache=False)
    assert torch.equal(window_clips(clips, None, 16_000).waves[:], window_clips(mem, None, 16_000).waves[:])


@pytest.mark.parametrize("damage", ["truncate", "garble the last row", "garble the header"])
def test_a_damaged_entry_is_read_again_with_a_note(recordings, cache, reads, monkeypatch, damage):
    good = window_clips(read_clips(recordings, PRE), None, 8000).waves[:]
    (path,) = entries(cache)
    header, _ = pixelstore.read_header(path)
    data = bytearray(path.read_bytes())
    end = header["rows"] * BLOCK * 2
    if damage == "truncate":
        data = data[: end // 2]
    elif damage == "garble the last row":
        data[end - 1000 : end - 900] = bytes(range(100))
    else:
        data[end + 3] ^= 0xFF
    path.write_bytes(bytes(data))
    notes: list[str] = []
    monkeypatch.setattr("transferkit.console.info", notes.append)
    reads[0] = 0
    again = window_clips(read_clips(recordings, PRE, store="disk"), None, 8000).waves[:]
    assert reads[0] == len(recordings) and len(notes) == 1 and "reading the recordings again" in notes[0]
    assert torch.equal(again, good)


def test_skipped_and_silent_recordings_are_reported_alike_on_a_hit(recordings, cache, reads, tmp_path, monkeypatch):
    bad = tmp_path / "audio" / "broken.wav"
    bad.write_bytes(b"RIFF not really a wave")
    silent = tmp_path / "audio" / "silent.wav"
    sf.write(str(silent), np.zeros(8000, dtype=np.float32), 16_000)
    items = [*recordings, bad, silent]
    with pytest.raises(DataError, match="broken.wav"):
        read_clips(items, PRE)
    assert entries(cache) == []  # a failed read writes nothing
    warnings: list[str] = []
    monkeypatch.setattr(audio_mod, "warn", warnings.append)
    first = read_clips(items, PRE, skip_bad=True)
    reads[0] = 0
    second = read_clips(items, PRE, skip_bad=True)
    assert reads[0] == 0 and second.kept == first.kept == list(range(len(recordings)))
    assert second.skipped == first.skipped == [str(bad), str(silent)] and warnings[0] == warnings[1]
    kept_silent = read_clips([*recordings, silent], PRE)  # without skip_bad: kept, with a warning, cached alike
    reads[0] = 0
    assert read_clips([*recordings, silent], PRE).silent == kept_silent.silent == [str(silent)] and reads[0] == 0


def read_all(dataset, context: str) -> tuple[torch.Tensor, torch.Tensor]:
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=4, num_workers=2, multiprocessing_context=context)
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_disk_windows_under_dataloader_workers(recordings, cache, context):
    from transferkit.tasks.audio import AudioWindowDataset

    if context not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {context} here")
    data = window_clips(read_clips(recordings, PRE, store="disk"), [0, 1, 0, 1, 0, 1], 8000)
    assert data.waves.on_disk
    x, y = read_all(AudioWindowDataset(data), context)
    assert torch.equal(x, data.waves[:].float()) and torch.equal(y, data.window_targets())


def test_fit_gives_the_same_model_from_memory_and_from_disk(audio_folder, cache, tiny_backbone, monkeypatch):
    import transferkit

    probs, where = {}, []
    real = audio_mod._placed
    monkeypatch.setattr(audio_mod, "_placed", lambda c, s: where.append(type(real(c, s).source).__name__) or c)
    tests = sorted((audio_folder / "test").rglob("*.wav"))
    for limit in (2**40, 0):  # auto: every split's samples in memory, then every split read from its entry
        monkeypatch.setattr(pixelstore, "MEMORY_LIMIT_BYTES", limit)
        model = transferkit.fit(audio_folder, backbone=tiny_backbone, strategy="finetune", epochs=1, batch_size=8,
                                seed=0, val_fraction=0.3, clip_seconds=0.25)
        probs[limit] = model.predict_proba(tests)
    assert np.array_equal(probs[0], probs[2**40])
    assert "Tensor" in where and "PixelFile" in where


def test_predict_leaves_no_entry_and_store_must_be_known(audio_folder, cache, tiny_backbone):
    import transferkit

    model = transferkit.fit(audio_folder, backbone=tiny_backbone, strategy="linear")
    before = entries(cache)
    model.predict(sorted((audio_folder / "test").rglob("*.wav"))[:2])
    assert entries(cache) == before
    with pytest.raises(TransferkitError, match="store must be one of"):
        read_clips(before, PRE, store="ssd")


def test_a_window_table_is_checked():
    with pytest.raises(ValueError):
        Waves(torch.zeros(10, dtype=torch.float16), [0], [9], 8)
    w = Waves(torch.arange(10, dtype=torch.float16), [0, 4, 8], [8, 6, 2], 8)
    assert w[2].tolist() == [8, 9, 0, 0, 0, 0, 0, 0] and w[np.array([True, False, True])].shape == (2, 8)


@pytest.mark.parametrize("when", ["writing", "committing"])
def test_a_full_disk_keeps_the_recordings_in_memory(recordings, cache, monkeypatch, when):
    real, calls, warnings = pixelstore.RowWriter.write, [0], []

    def write(self, i, row):
        calls[0] += 1
        if calls[0] == 3:
            raise OSError(28, "No space left on device")
        real(self, i, row)

    def commit(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pixelstore.RowWriter, *(("write", write) if when == "writing" else ("commit", commit)))
    monkeypatch.setattr(audio_mod, "warn", warnings.append)
    clips = read_clips(recordings, PRE, store="disk")
    assert isinstance(clips.source, torch.Tensor) and entries(cache) == [] and "No space left" in warnings[0]
    assert list((cache / "audio").glob(".*.tmp")) == []
    mem = read_clips(recordings, PRE, cache=False)
    assert torch.equal(window_clips(clips, None, 8000).waves[:], window_clips(mem, None, 8000).waves[:])
