"""The pixel cache: decoded rows on disk read back exactly, entries written whole or not at all, keyed by content
and preprocessing, reused without decoding, skipped files reported alike; the file store under DataLoader workers."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import transferkit.data.images as images_mod
from transferkit.backbones.protocol import PreprocessConfig
from transferkit.data.images import decode
from transferkit.data.pixelstore import PixelFile
from transferkit.data.sources import ImageSet
from transferkit.errors import DataError

CLASSES = ["blue", "green", "red"]
PRE = PreprocessConfig(input_size=(32, 32))


def image_set(folder: Path) -> ImageSet:
    items = sorted(folder.rglob("*.png"))
    return ImageSet(items, [p.parent.name for p in items])


def entries(root: Path) -> list[Path]:
    return sorted((root / "pixels").glob("*.rows"))


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def decodes(monkeypatch) -> list[int]:
    """How many images were resized (decoded) since the test began."""
    calls = [0]
    real = images_mod.resize_center_crop

    def counting(img, pre):
        calls[0] += 1
        return real(img, pre)

    monkeypatch.setattr(images_mod, "resize_center_crop", counting)
    return calls


def test_file_store_reads_exactly_the_pixels_in_memory(colour_folder, cache):
    ds = image_set(colour_folder)
    mem = decode(ds, PRE, CLASSES, store="memory")
    disk = decode(ds, PRE, CLASSES, store="disk")
    assert isinstance(mem.pixels, torch.Tensor) and isinstance(disk.pixels, PixelFile)
    assert disk.pixels.shape == mem.pixels.shape and disk.pixels.dtype == torch.uint8 and len(disk.pixels) == 36
    assert all(torch.equal(disk.pixels[i], mem.pixels[i]) for i in range(len(mem)))
    for idx in ([5, 0, 35, 7, 8, 9], np.array([3, 3, 1]), torch.tensor([30, 31, 32, 2]), slice(4, 20, 3),
                slice(None), -1):
        assert torch.equal(disk.pixels[idx], mem.pixels[idx]), idx
    assert torch.equal(disk.pixels[2, :, 4:9, 1:3], mem.pixels[2, :, 4:9, 1:3])
    fold = disk.subset([9, 4, 20])
    assert isinstance(fold.pixels, PixelFile) and fold.pixels.path == disk.pixels.path  # a view: nothing copied
    assert torch.equal(fold.pixels[[2, 0]], mem.subset([9, 4, 20]).pixels[[2, 0]])
    assert fold.fingerprints == mem.subset([9, 4, 20]).fingerprints
    assert torch.equal(fold.targets, mem.targets[[9, 4, 20]])
    assert torch.equal(disk.pixels[torch.tensor(3)], mem.pixels[3])
    assert images_mod.pixel_keys(disk) == images_mod.pixel_keys(mem)
    os.unlink(disk.pixels.path)  # the cache cleared during the run: it and its folds read the file they checked
    assert torch.equal(disk.subset([1, 2]).pixels[:], mem.pixels[1:3]) and torch.equal(fold.pixels[0], mem.pixels[9])


def read_all(dataset, context: str) -> tuple[torch.Tensor, torch.Tensor]:
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=5, num_workers=2, multiprocessing_context=context)
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_file_store_under_dataloader_workers(colour_folder, cache, context):
    from transferkit.tasks.image import ImageTensorDataset

    if context not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {context} here")
    ds = image_set(colour_folder)
    mem, disk = decode(ds, PRE, CLASSES, store="memory"), decode(ds, PRE, CLASSES, store="disk").subset(range(1, 36, 2))
    x, y = read_all(ImageTensorDataset(disk), context)
    assert torch.equal(x, mem.pixels[1::2]) and torch.equal(y, mem.targets[1::2])


def test_fit_gives_the_same_model_from_memory_and_from_disk(colour_splits, cache, tiny_backbone, monkeypatch):
    import transferkit

    probs, kinds = {}, []
    real = images_mod._decoded
    monkeypatch.setattr(images_mod, "_decoded", lambda *a: kinds.append(type(a[2]).__name__) or real(*a))
    for limit in (2**40, 0):  # auto: every split in memory, then every split from its file
        monkeypatch.setattr(images_mod, "MEMORY_LIMIT_BYTES", limit)
        model = transferkit.fit(colour_splits, backbone=tiny_backbone, strategy="finetune", epochs=1, batch_size=8,
                                seed=0, val_fraction=0.3)  # a validation split: no folds to choose epochs on
        probs[limit] = model.predict_proba(sorted((colour_splits / "test").rglob("*.png")))
    assert np.array_equal(probs[0], probs[2**40])
    assert "Tensor" in kinds and "PixelFile" in kinds


KILLED = """
import os, sys
import transferkit.data.pixelstore as store
from transferkit.backbones.protocol import PreprocessConfig
from transferkit.data.images import decode
from transferkit.data.sources import ImageSet
from pathlib import Path

real, written = store.RowWriter.write, [0]
def write(self, i, row):
    real(self, i, row)
    written[0] += 1
    if written[0] == 10:  # killed in the middle of writing the entry
        os.kill(os.getpid(), 9)
store.RowWriter.write = write
items = sorted(Path(sys.argv[1]).rglob("*.png"))
decode(ImageSet(items, [p.parent.name for p in items]), PreprocessConfig(input_size=(32, 32)),
       ["blue", "green", "red"], store="disk")
"""


def test_a_killed_decode_leaves_no_entry_that_is_read(colour_folder, cache, decodes):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED), str(colour_folder)], env=env)
    assert done.returncode == -9
    assert entries(cache) == [] and len(list((cache / "pixels").glob(".*.tmp"))) == 1  # only its temp file
    ds = image_set(colour_folder)
    disk = decode(ds, PRE, CLASSES, store="disk")
    assert decodes[0] == 36 and len(entries(cache)) == 1
    assert list((cache / "pixels").glob(".*.tmp")) == []  # the dead process's leftover removed
    assert torch.equal(disk.pixels[:], decode(ds, PRE, CLASSES, store="memory").pixels)


@pytest.mark.parametrize("damage", ["truncate", "garble a row", "garble the header", "empty"])
def test_a_damaged_entry_is_rebuilt_with_a_note(colour_folder, cache, decodes, monkeypatch, damage):
    ds = image_set(colour_folder)
    good = decode(ds, PRE, CLASSES, store="memory").pixels
    (path,) = entries(cache)
    data = bytearray(path.read_bytes())
    row = 3 * 32 * 32
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "garble a row":  # the last kept row is one of the rows checked
        data[35 * row + 100 : 35 * row + 200] = bytes(100)
    elif damage == "garble the header":
        data[36 * row + 2] ^= 0xFF
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    notes: list[str] = []
    monkeypatch.setattr(images_mod, "info", notes.append)
    decodes[0] = 0
    again = decode(ds, PRE, CLASSES, store="disk")
    assert decodes[0] == 36 and len(notes) == 1 and path.name in notes[0] and "decoding again" in notes[0]
    assert torch.equal(again.pixels[:], good)
    decodes[0] = 0
    assert torch.equal(decode(ds, PRE, CLASSES, store="disk").pixels[:], good) and decodes[0] == 0  # rebuilt whole


def test_a_changed_file_or_size_is_another_entry(colour_folder, cache):
    ds = image_set(colour_folder)
    before = decode(ds, PRE, CLASSES, store="disk")
    changed = ds.items[4]
    Image.fromarray(np.full((24, 24, 3), 7, np.uint8)).save(changed)  # same name, other pixels
    after = decode(ds, PRE, CLASSES, store="disk")
    assert len(entries(cache)) == 2
    assert torch.equal(after.pixels[4], torch.full((3, 32, 32), 7, dtype=torch.uint8))
    assert not torch.equal(before.pixels[4], after.pixels[4])
    assert torch.equal(after.pixels[5], before.pixels[5]) and after.fingerprints[4] != before.fingerprints[4]
    bigger = decode(ds, PreprocessConfig(input_size=(40, 40)), CLASSES, store="disk")
    assert len(entries(cache)) == 3 and bigger.pixels.shape == (36, 3, 40, 40)
    renormalised = PreprocessConfig(input_size=(40, 40), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    decode(ds, renormalised, CLASSES, store="disk")
    assert len(entries(cache)) == 3  # mean and std are applied later: the same pixels, the same entry


@pytest.mark.parametrize("store", ["memory", "disk"])
def test_a_second_decode_is_a_hit(colour_folder, cache, decodes, store):
    ds = image_set(colour_folder)
    first = decode(ds, PRE, CLASSES, store=store)
    assert decodes[0] == 36 and len(entries(cache)) == 1  # written even when held in memory
    second = decode(ds, PRE, CLASSES, store=store)
    assert decodes[0] == 36  # nothing decoded
    assert type(second.pixels) is type(first.pixels) and torch.equal(second.pixels[:], first.pixels[:])
    assert second.fingerprints == first.fingerprints and second.kept == first.kept


def test_skip_bad_on_a_hit_reports_the_same_files(colour_folder, cache, decodes, monkeypatch):
    (colour_folder / "red" / "broken.png").write_bytes(b"\x89PNG not really")
    (colour_folder / "green" / "folder.png").mkdir()
    ds = image_set(colour_folder)  # the folder named like an image is listed too
    warnings: list[str] = []
    monkeypatch.setattr(images_mod, "warn", warnings.append)
    first = decode(ds, PRE, CLASSES, skip_bad=True, store="disk")
    second = decode(ds, PRE, CLASSES, skip_bad=True, store="disk")
    assert decodes[0] == 36 and len(second) == 36
    assert second.skipped == first.skipped == [str(colour_folder / "green" / "folder.png"),
                                               str(colour_folder / "red" / "broken.png")]
    assert second.kept == first.kept and warnings[0] == warnings[1] and "skipped 2 unreadable" in warnings[1]
    with pytest.raises(DataError, match="folder.png is a folder"):  # without --skip-bad: the error of an uncached run
        decode(ds, PRE, CLASSES, store="disk")


def test_an_unusable_cache_warns_once_and_keeps_pixels_in_memory(colour_folder, tmp_path, monkeypatch):
    import transferkit.data.pixelstore as store

    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "a-file"))
    monkeypatch.setattr(store, "_warned", set())
    warnings: list[str] = []
    monkeypatch.setattr("transferkit.console.warn", warnings.append)
    ds = image_set(colour_folder)
    a = decode(ds, PRE, CLASSES, store="disk")
    b = decode(ds, PRE, CLASSES, store="disk")
    assert isinstance(a.pixels, torch.Tensor) and torch.equal(a.pixels, b.pixels)
    assert len(warnings) == 1 and "cannot be used" in warnings[0] and "TRANSFERKIT_CACHE" in warnings[0]


def test_store_must_be_known(colour_folder):
    from transferkit.errors import TransferkitError

    with pytest.raises(TransferkitError, match="store must be one of auto, memory, disk"):
        decode(image_set(colour_folder), PRE, CLASSES, store="ram")


def test_predict_leaves_no_entry_in_the_pixel_cache(colour_folder, tmp_path, monkeypatch):
    """Files given to predict are decoded in memory: the cache does not grow with every prediction."""
    from transferkit.backbones.protocol import PreprocessConfig
    from transferkit.data.images import decode
    from transferkit.data.sources import ImageSet

    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "cache"))
    files = sorted(colour_folder.rglob("*.png"))[:5]
    pre = PreprocessConfig(input_size=(32, 32))
    cached = decode(ImageSet(files, ["red"] * 5), pre, ["red"])
    once = decode(ImageSet(files, ["red"] * 5), pre, ["red"], cache=False)
    assert torch.equal(cached.pixels, once.pixels) and cached.fingerprints == once.fingerprints
    entries = list((tmp_path / "cache" / "pixels").glob("*.rows"))
    assert len(entries) == 1, "only the cached decode wrote an entry"


def test_decoding_keeps_a_bounded_number_of_results_waiting():
    """in_order reads results back in order and never has more than ``ahead`` submitted and unread (Executor.map
    submits everything at once: 60,000 decoded images waited in memory that way)."""
    from concurrent.futures import ThreadPoolExecutor

    from transferkit.data.parallel import in_order

    started: list[int] = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        out = []
        for i, x in enumerate(in_order(pool, lambda v: started.append(v) or v * 2, range(100), ahead=8)):
            out.append(x)
            assert len(started) - (i + 1) <= 8
    assert out == [2 * v for v in range(100)]
