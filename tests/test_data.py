"""Data sources, splits, decoding once, Fashion-MNIST, and every bad input named in the foundation issue."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from transferkit.backbones.protocol import PreprocessConfig
from transferkit.data.images import decode, load_pil, resize_center_crop
from transferkit.data.sources import ImageSet, load_splits, stratified_split
from transferkit.errors import DataError

PRE = PreprocessConfig(input_size=(32, 32), crop_pct=1.0)


def test_folder_per_class_is_split_stratified_and_seeded(colour_folder):
    a = load_splits(colour_folder, seed=3, val_fraction=0.15, test_fraction=0.2)
    b = load_splits(colour_folder, seed=3, val_fraction=0.15, test_fraction=0.2)
    c = load_splits(colour_folder, seed=4, val_fraction=0.15, test_fraction=0.2)
    assert a.classes == ["blue", "green", "red"]
    # 12 per class: 20% test -> 2, 15% val -> 2, the rest trains
    assert (len(a.train), len(a.val), len(a.test)) == (24, 6, 6)
    assert a.train.counts() == {"blue": 8, "green": 8, "red": 8}
    assert a.val.counts() == {"blue": 2, "green": 2, "red": 2}
    assert [str(p) for p in a.val.items] == [str(p) for p in b.val.items]
    assert [str(p) for p in a.val.items] != [str(p) for p in c.val.items]
    everything = {str(p) for s in (a.train, a.val, a.test) for p in s.items}
    assert len(everything) == 36, "splits overlap or lose images"


def test_existing_train_test_folders_are_honoured(colour_splits):
    s = load_splits(colour_splits, val_fraction=0.15, test_fraction=0.2)
    assert len(s.test) == 12 and all("/test/" in str(p) for p in s.test.items)
    assert len(s.train) + len(s.val) == 30 and s.how == "given + stratified seed=0"


def test_stratified_split_keeps_one_for_training():
    parts = stratified_split(["a"] * 2 + ["b"] * 5, {"val": 0.5}, seed=0)
    assert len(parts["val"]) == 1 + 2 and len(parts["rest"]) == 1 + 3


@pytest.mark.parametrize("kind", ["csv", "jsonl", "tsv"])
def test_table_sources_with_relative_paths_and_split_column(colour_folder, kind):
    files = sorted(colour_folder.rglob("*.png"))
    rows = [{"path": str(f.relative_to(colour_folder)), "label": f.parent.name,
             "split": "test" if i % 4 == 0 else "train"}
            for i, f in enumerate(files)]
    table = colour_folder / f"labels.{kind}"
    if kind == "jsonl":
        table.write_text("\n".join(json.dumps(r) for r in rows))
    else:
        sep = "\t" if kind == "tsv" else ","
        table.write_text("path{0}label{0}split\n".format(sep) + "\n".join(sep.join(r.values()) for r in rows))
    s = load_splits(table, val_fraction=0.15, test_fraction=0.2)
    assert len(s.test) == 9 and len(s.train) + len(s.val) == 27
    assert s.classes == ["blue", "green", "red"]


def test_decode_resizes_once_to_backbone_size(colour_folder):
    ds = load_splits(colour_folder, val_fraction=0.15, test_fraction=0.2).train
    d = decode(ds, PreprocessConfig(input_size=(40, 48), crop_pct=0.875), ["blue", "green", "red"])
    assert d.pixels.shape == (len(ds), 3, 40, 48) and d.pixels.dtype.__str__() == "torch.uint8"
    assert len(set(d.fingerprints)) == len(ds)


def test_resize_center_crop_pinned():
    from PIL import Image

    img = Image.fromarray(np.arange(100 * 50 * 3, dtype=np.uint8).reshape(50, 100, 3) % 255)
    out = resize_center_crop(img, PreprocessConfig(input_size=(20, 20), crop_pct=0.5))
    assert out.shape == (20, 20, 3)  # shorter side to 40, then the centre 20x20


def test_arrays_are_images_too():
    arr = np.zeros((28, 28), dtype=np.uint8)
    img, fp = load_pil(arr)
    assert img.mode == "RGB" and img.size == (28, 28) and len(fp) == 40


# ---- bad input: one line naming the file or value, and what to do ---------------------------------------


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_non_image_file(colour_folder):
    bad = colour_folder / "red" / "notes.txt"
    bad.write_text("not an image")
    with pytest.raises(DataError) as e:
        load_splits(colour_folder, val_fraction=0.15, test_fraction=0.2)
    msg = _one_line(e)
    assert str(bad) in msg and "--skip-bad" in msg
    assert len(load_splits(colour_folder, skip_bad=True, val_fraction=0.15, test_fraction=0.2).train) == 24


def test_image_extension_with_garbage(colour_folder):
    bad = colour_folder / "red" / "fake.jpg"
    bad.write_bytes(b"this is not a jpeg")
    ds = load_splits(colour_folder, skip_bad=False, seed=0, val_fraction=0.15, test_fraction=0.2)
    everything = ImageSet([*ds.train.items, *ds.val.items, *ds.test.items],
                          [*ds.train.labels, *ds.val.labels, *ds.test.labels])
    with pytest.raises(DataError) as e:
        decode(everything, PRE, ds.classes)
    assert str(bad) in _one_line(e) and "not a readable image" in str(e.value)
    d = decode(everything, PRE, ds.classes, skip_bad=True)
    assert len(d) == 36 and d.skipped == [str(bad)]


def test_truncated_image(colour_folder):
    good = colour_folder / "green" / "green_000.png"
    bad = colour_folder / "green" / "cut.png"
    data = good.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as e:
        decode(ImageSet([good, bad], ["green", "green"]), PRE, ["green"])
    assert str(bad) in _one_line(e) and "truncated" in str(e.value)


def test_empty_class_folder(colour_folder):
    (colour_folder / "purple").mkdir()
    with pytest.raises(DataError) as e:
        load_splits(colour_folder, val_fraction=0.15, test_fraction=0.2)
    assert "purple has no image files" in _one_line(e)


def test_single_class(tmp_path):
    from conftest import write_colour_images

    write_colour_images(tmp_path / "one", 5)
    for d in ("green", "blue"):
        for f in (tmp_path / "one" / d).iterdir():
            f.unlink()
        (tmp_path / "one" / d).rmdir()
    with pytest.raises(DataError) as e:
        load_splits(tmp_path / "one", val_fraction=0.15, test_fraction=0.2)
    assert "Only one class (red)" in _one_line(e)


def test_csv_row_pointing_at_missing_file(colour_folder):
    table = colour_folder / "labels.csv"
    table.write_text("path,label\nred/red_000.png,red\nred/nope.png,red\ngreen/green_000.png,green\n")
    with pytest.raises(DataError) as e:
        load_splits(table, val_fraction=0.15, test_fraction=0.2)
    msg = _one_line(e)
    assert "labels.csv line 3" in msg and "nope.png does not exist" in msg


def test_csv_without_label_column(colour_folder):
    table = colour_folder / "labels.csv"
    table.write_text("file,kind\nred/red_000.png,red\n")
    with pytest.raises(DataError, match="needs a 'path' and a 'label' column"):
        load_splits(table, val_fraction=0.15, test_fraction=0.2)


def test_missing_data_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_splits(tmp_path / "nothing", val_fraction=0.15, test_fraction=0.2)


# ---- Fashion-MNIST ---------------------------------------------------------------------------------------


def test_fashion_mnist_reads_the_debian_files():
    from transferkit.datasets.fashion_mnist import CLASSES, DEBIAN_DIR, load_fashion_mnist, sample_per_class

    assert DEBIAN_DIR.is_dir(), "make test installs dataset-fashion-mnist"
    x, y = load_fashion_mnist("test")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [1000] * 10
    assert y[:5].tolist() == [9, 2, 1, 1, 6]  # ankle boot, pullover, trouser, trouser, shirt: the known first labels
    assert len(CLASSES) == 10
    idx = sample_per_class(y, 3, seed=0)
    assert len(idx) == 30 and np.bincount(y[idx]).tolist() == [3] * 10


def test_fashion_mnist_offline_download_fails_with_one_line(tmp_path, monkeypatch):
    import transferkit.datasets.fashion_mnist as fm

    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "absent")
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fm, "URL", "http://fashion-mnist.invalid/")
    with pytest.raises(DataError) as e:
        fm.load_fashion_mnist("train")
    assert "Cannot download Fashion-MNIST" in _one_line(e) and "dataset-fashion-mnist" in str(e.value)
    assert not list((tmp_path / "cache").rglob("*.part"))


def test_fashion_mnist_export_is_a_class_folder_layout(tmp_path):
    from transferkit.datasets.fashion_mnist import export_image_folder

    root = export_image_folder(tmp_path / "fm", train_per_class=2, test_size=20, seed=0)
    s = load_splits(root, val_fraction=0.15, test_fraction=0.2)
    assert len(s.classes) == 10 and len(s.test) == 20 and len(s.train) + len(s.val) == 20
    again = export_image_folder(tmp_path / "fm2", train_per_class=2, test_size=20, seed=0)
    assert sorted(p.name for p in Path(root).rglob("*.png")) == sorted(p.name for p in Path(again).rglob("*.png"))
    with pytest.raises(DataError, match="already exists"):  # never replaces a folder that holds something
        export_image_folder(root, train_per_class=2, test_size=20)
