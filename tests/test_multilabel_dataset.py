"""The composed multi-label image set (transferkit.datasets.composed.build_composed_multilabel): Fashion-MNIST
garments on photos, labelled with the classes of the garments placed, in a JSONL table; and the detection set it
shares its composition with, unchanged."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferkit.datasets import composed
from transferkit.datasets.composed import build_composed_detection, build_composed_multilabel
from transferkit.datasets.fashion_mnist import CLASSES
from transferkit.errors import DataError

pytest.importorskip("skimage")

TINY = dict(train_images=12, test_images=6, image_size=64)


def _rows(table: Path) -> list[dict]:
    return [json.loads(line) for line in table.read_text(encoding="utf-8").splitlines()]


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _content_digest(root: Path) -> str:
    """Decoded pixels and JSON of every file: what the builder decided, whatever zlib's version encodes."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(np.asarray(Image.open(p)).tobytes() if p.suffix == ".png" else p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def multilabel_set(tmp_path_factory) -> Path:
    return build_composed_multilabel(tmp_path_factory.mktemp("ml") / "set", **TINY, seed=1)


def test_table_lists_every_image_with_its_labels_and_split(multilabel_set):
    root = multilabel_set.parent
    assert multilabel_set.name == "labels.jsonl"
    rows = _rows(multilabel_set)
    assert [r["split"] for r in rows] == ["train"] * 12 + ["test"] * 6
    assert [r["path"] for r in rows] == [f"images/train_{i:04d}.png" for i in range(12)] + \
                                        [f"images/test_{i:04d}.png" for i in range(6)]
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == \
        sorted([r["path"] for r in rows] + ["labels.jsonl"])
    for r in rows:
        assert set(r) == {"path", "label", "split"}
        assert 1 <= len(r["label"]) <= 3
        assert r["label"] == sorted(set(r["label"])) and set(r["label"]) <= set(CLASSES)
        assert Image.open(root / r["path"]).size == (64, 64)
    assert len({c for r in rows for c in r["label"]}) > 3  # all ten classes are drawn from by default


def test_same_seed_same_bytes_other_seed_other_images(multilabel_set, tmp_path):
    again = build_composed_multilabel(tmp_path / "again", **TINY, seed=1)
    assert _tree_bytes(again.parent) == _tree_bytes(multilabel_set.parent)
    other = build_composed_multilabel(tmp_path / "other", **TINY, seed=2)
    assert _tree_bytes(other.parent) != _tree_bytes(multilabel_set.parent)


def test_labels_are_the_garments_placed_not_those_drawn(tmp_path, monkeypatch):
    """Same seed and settings as a detection set: the same pictures, and each image's labels are the classes of
    its COCO boxes. Crowded on purpose, so that some drawn garments find no place."""
    calls = []
    compose = composed.compose_image

    def spy(rng, background, items, scale):
        out = compose(rng, background, items, scale)
        calls.append((len(items), len(out[2])))
        return out

    monkeypatch.setattr(composed, "compose_image", spy)
    settings = dict(train_images=10, test_images=4, image_size=64, objects=(2, 3), scale=(0.4, 0.55), seed=3,
                    classes=("Trouser", "Sneaker", "Bag", "Ankle_boot"))
    table = build_composed_multilabel(tmp_path / "ml", **settings)
    assert any(placed < drawn for drawn, placed in calls)  # some garment was dropped: not a label then
    assert all(placed >= 1 for _, placed in calls)
    det = build_composed_detection(tmp_path / "det", **settings)
    rows = _rows(table)
    for split, offset in (("train", 0), ("test", 10)):
        coco = json.loads((det / "annotations" / f"instances_{split}.json").read_text())
        names = {c["id"]: c["name"] for c in coco["categories"]}
        for img in coco["images"]:
            row = rows[offset + int(Path(img["file_name"]).stem)]
            placed = {names[a["category_id"]] for a in coco["annotations"] if a["image_id"] == img["id"]}
            assert row["label"] == sorted(placed) and row["split"] == split
            assert np.array_equal(np.asarray(Image.open(table.parent / row["path"])),
                                  np.asarray(Image.open(det / split / img["file_name"])))


def test_classes_restrict_the_labels(tmp_path):
    table = build_composed_multilabel(tmp_path / "set", train_images=4, test_images=2, image_size=48,
                                      classes=("Bag", "Sneaker"), objects=(1, 2), seed=0)
    assert {c for r in _rows(table) for c in r["label"]} <= {"Bag", "Sneaker"}


def test_bad_settings_are_one_line_and_write_nothing(tmp_path):
    with pytest.raises(DataError, match="must start at 1"):
        build_composed_multilabel(tmp_path / "a", **TINY, objects=(0, 2))
    with pytest.raises(DataError, match="'Hat' is not a Fashion-MNIST class"):
        build_composed_multilabel(tmp_path / "b", **TINY, classes=("Bag", "Hat"))
    assert not list(tmp_path.iterdir())
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="already exists and is not empty"):
        build_composed_multilabel(tmp_path / "c", **TINY)
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["keep.txt"]


def test_an_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(composed, "_save_png", boom)
    with pytest.raises(KeyboardInterrupt):
        build_composed_multilabel(tmp_path / "set", **TINY)
    assert not list(tmp_path.iterdir())


def test_detection_set_unchanged_by_the_shared_composition(box_folder):
    """Pinned before the composition was shared with the multi-label builder (the conftest box_folder settings)."""
    assert _content_digest(box_folder) == "ee201c17a008698c59ff9300159c067151d35e31fd5cc54a37a7e681a24b7e2c"


def test_demo_builds_once_and_fits_on_the_table(tmp_path, monkeypatch):
    from transferkit.datasets import demos

    builds = []

    def tiny(folder, **kwargs):
        builds.append(kwargs)
        return build_composed_multilabel(folder, train_images=2, test_images=1, image_size=32, seed=0)

    monkeypatch.setattr(composed, "build_composed_multilabel", tiny)
    spec = demos.DEMOS["multilabel"]
    assert (spec.folder, spec.task) == ("data/composed-multilabel", "classify")
    first = spec.build(tmp_path / "set", 10, 1000)
    assert first == tmp_path / "set" / "labels.jsonl" and first.is_file()
    assert spec.build(tmp_path / "set", 10, 1000) == first and len(builds) == 1  # an earlier build is reused


def test_the_table_reader_reads_it_as_multi_label(multilabel_set):
    from transferkit.data.sources import read_table

    train, given = read_table(multilabel_set)
    rows = _rows(multilabel_set)
    assert (len(train), len(given["test"])) == (12, 6)
    assert train.labels == [tuple(r["label"]) for r in rows[:12]]
    assert given["test"].items[0] == multilabel_set.parent / "images" / "test_0000.png"
