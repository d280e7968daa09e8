"""Boxes in: COCO JSON, YOLO txt and Pascal VOC XML readers, their validation, splits, and the composed
detection set (issue 5)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferkit.data.boxes import BoxSet, detect_box_format, load_box_splits, load_box_test_set, write_coco
from transferkit.datasets.composed import build_composed_detection
from transferkit.errors import DataError


def image(path: Path, w: int = 200, h: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(path)
    return path


def coco(folder: Path, anns: list[dict], images: int = 2, cats=((1, "cup"), (3, "pen"))) -> Path:
    for i in range(images):
        image(folder / f"img{i}.png")
    data = {"images": [{"id": i + 1, "file_name": f"img{i}.png", "width": 200, "height": 100} for i in range(images)],
            "annotations": [{"id": n + 1, "iscrowd": 0, **a} for n, a in enumerate(anns)],
            "categories": [{"id": k, "name": v} for k, v in cats]}
    (folder / "boxes.json").write_text(json.dumps(data))
    return folder / "boxes.json"


def to_yolo(splits: dict[str, BoxSet], classes: list[str], root: Path, flat: bool = False) -> Path:
    (root).mkdir(parents=True)
    (root / "data.yaml").write_text("names:\n" + "".join(f"  {i}: {c}\n" for i, c in enumerate(classes)))
    for split, s in splits.items():
        sub = "" if flat else split
        for item, bs, ls in zip(s.items, s.boxes, s.labels, strict=True):
            w, h = Image.open(item).size
            dst = root / "images" / sub / f"{split}-{Path(item).name}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(item, dst)
            lines = [f"{classes.index(c)} {(b[0] + b[2]) / 2 / w:.8f} {(b[1] + b[3]) / 2 / h:.8f} "
                     f"{(b[2] - b[0]) / w:.8f} {(b[3] - b[1]) / h:.8f}" for b, c in zip(bs.tolist(), ls, strict=True)]
            (root / "labels" / sub).mkdir(parents=True, exist_ok=True)
            (root / "labels" / sub / f"{dst.stem}.txt").write_text("\n".join(lines))
    return root


def voc_xml(item: Path, bs: np.ndarray, ls: list[str]) -> str:
    w, h = Image.open(item).size
    objs = "".join(f"<object><name>{c}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                   f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
                   for b, c in zip(bs.tolist(), ls, strict=True))
    return (f"<annotation><filename>{item.name}</filename><size><width>{w}</width><height>{h}</height></size>"
            f"{objs}</annotation>")


def to_voc(splits: dict[str, BoxSet], root: Path, flat: bool = False) -> Path:
    for split, s in splits.items():
        ids = []
        for item, bs, ls in zip(s.items, s.boxes, s.labels, strict=True):
            stem = f"{split}-{Path(item).stem}"
            ids.append(stem)
            img_dir = root / split if flat else root / "JPEGImages"
            xml_dir = root / split if flat else root / "Annotations"
            img_dir.mkdir(parents=True, exist_ok=True)
            xml_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(item, img_dir / f"{stem}.png")
            (xml_dir / f"{stem}.xml").write_text(voc_xml(Path(item), bs, ls))
        if not flat:
            (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
            (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return build_composed_detection(tmp_path_factory.mktemp("built") / "set", train_images=10, test_images=4,
                                    classes=("Trouser", "Bag", "Sneaker"), image_size=96, seed=3)


def test_builder_is_deterministic_and_boxes_are_tight(built, tmp_path):
    again = build_composed_detection(tmp_path / "again", train_images=10, test_images=4,
                                     classes=("Trouser", "Bag", "Sneaker"), image_size=96, seed=3)
    other = build_composed_detection(tmp_path / "other", train_images=10, test_images=4,
                                     classes=("Trouser", "Bag", "Sneaker"), image_size=96, seed=4)
    for rel in ("annotations/instances_train.json", "annotations/instances_test.json", "train/0000.png",
                "test/0003.png"):
        assert (built / rel).read_bytes() == (again / rel).read_bytes(), rel
    assert (built / "train/0000.png").read_bytes() != (other / "train/0000.png").read_bytes()
    s = load_box_splits(built)
    assert (s.format, s.classes) == ("coco", ["Trouser", "Bag", "Sneaker"])
    assert s.how.startswith("files") and len(s.train) + len(s.val) == 10 and len(s.test) == 4
    assert set(s.train.counts()) <= {"Trouser", "Bag", "Sneaker"}
    summary = s.summary()
    assert summary["boxes"]["train"] == sum(s.train.counts().values()) > 0 and summary["skipped"] == 0


def test_composed_boxes_are_exact():
    from transferkit.datasets.composed import compose_image

    item = np.zeros((28, 28), np.uint8)
    item[5:20, 8:12] = 255  # a bar: 4 wide, 15 tall
    rng = np.random.default_rng(0)
    bg = np.zeros((64, 64, 3), np.float32)
    img, boxes, placed = compose_image(rng, bg, [item], (28 / 64, 28 / 64))  # pasted at its own size
    assert placed == [0]
    x1, y1, x2, y2 = boxes[0]
    assert (x2 - x1, y2 - y1) == (4, 15)
    lit = np.argwhere(img.max(axis=2) > 0)
    assert (lit[:, 1].min(), lit[:, 0].min(), lit[:, 1].max() + 1, lit[:, 0].max() + 1) == (x1, y1, x2, y2)


def test_composed_boxes_are_tight_around_what_is_painted():
    """Real garments at random scales: every pixel painted more than half opaque is inside a box, and every box
    edge touches such a pixel (the blend weight is recovered by composing on black and on white)."""
    from transferkit.datasets.composed import compose_image
    from transferkit.datasets.fashion_mnist import load_fashion_mnist

    garments, _ = load_fashion_mnist("test")
    n_boxes = 0
    for seed in range(8):
        picks = [garments[i] for i in np.random.default_rng(seed).choice(len(garments), 4)]
        dark, boxes, _ = compose_image(np.random.default_rng(seed), np.zeros((128, 128, 3), np.float32), picks,
                                       (0.18, 0.45))
        light, same, _ = compose_image(np.random.default_rng(seed), np.full((128, 128, 3), 255, np.float32), picks,
                                       (0.18, 0.45))
        assert boxes == same
        # pixel = background * (1 - w) + garment * w, so white minus black is 255 * (1 - w), to within uint8 rounding
        weight = 1 - (light.astype(np.float32) - dark.astype(np.float32)).mean(axis=2) / 255
        inside = np.zeros(weight.shape, bool)
        for x1, y1, x2, y2 in boxes:
            inside[y1:y2, x1:x2] = True
            w = weight[y1:y2, x1:x2]
            for edge in (w[0], w[-1], w[:, 0], w[:, -1]):
                assert edge.max() > 0.49, (seed, (x1, y1, x2, y2))
        assert not ((weight > 0.51) & ~inside).any(), seed  # no painted pixel outside every box
        n_boxes += len(boxes)
    assert n_boxes >= 16  # the check saw many garments


def test_builder_refuses_bad_settings(tmp_path):
    with pytest.raises(DataError, match="'Hat' is not a Fashion-MNIST class: choose from T-shirt_top, Trouser"):
        build_composed_detection(tmp_path / "x", classes=("Trouser", "Hat"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "photo.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="mine already exists and is not empty"):
        build_composed_detection(tmp_path / "mine", train_images=2, test_images=1)
    assert (tmp_path / "mine" / "photo.jpg").read_bytes() == b"x"  # never replaced


def test_the_three_formats_read_the_same_boxes(built, tmp_path):
    coco_splits = load_box_splits(built)
    given = {"train": coco_splits.train, "val": coco_splits.val, "test": coco_splits.test}
    variants = {
        "yolo": to_yolo(given, coco_splits.classes, tmp_path / "yolo"),
        "yolo-flat": to_yolo(given, coco_splits.classes, tmp_path / "yolo-flat", flat=True),
        "voc": to_voc(given, tmp_path / "voc"),
        "voc-flat": to_voc(given, tmp_path / "voc-flat", flat=True),
    }
    (tmp_path / "voc" / "labels.txt").write_text("\n".join(coco_splits.classes))
    ref = {f"{split}-{Path(i).stem}": (b, lab) for split, s in given.items()
           for i, b, lab in zip(s.items, s.boxes, s.labels, strict=True)}
    for name, root in variants.items():
        assert detect_box_format(root) == name.split("-")[0], name
        s = load_box_splits(root)
        sets = [s.train, s.val] + ([s.test] if s.test is not None else [])
        assert sum(len(x) for x in sets) == len(ref), name
        for x in sets:
            for item, b, lab in zip(x.items, x.boxes, x.labels, strict=True):
                rb, rl = ref[Path(item).stem]
                assert lab == rl, name
                np.testing.assert_allclose(b, rb, atol=1e-3, err_msg=name)
        if not name.endswith("flat"):
            assert len(s.test) == len(given["test"]) and len(s.val) == len(given["val"]), name  # splits honoured
    assert load_box_splits(variants["voc"]).how == "lists"


def test_formats_not_mistaken(colour_folder, text_folder, audio_folder, tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("path,label\na.png,x\n")
    for source in (colour_folder, text_folder, audio_folder, csv, tmp_path / "missing"):
        assert detect_box_format(source) is None


def test_pinned_coco_and_yolo_values(tmp_path):
    path = coco(tmp_path / "c", [{"image_id": 1, "category_id": 3, "bbox": [10, 20, 30, 40]},
                                 {"image_id": 2, "category_id": 1, "bbox": [0, 0, 200, 100]},
                                 {"image_id": 2, "category_id": 1, "bbox": [5, 5, 5, 5], "iscrowd": 1}])
    s, classes = load_box_test_set(path)
    assert classes == ["cup", "pen"]  # categories by id; ids need not be contiguous
    np.testing.assert_array_equal(s.boxes[0], [[10, 20, 40, 60]])
    np.testing.assert_array_equal(s.boxes[1], [[0, 0, 200, 100]])  # crowd region ignored
    assert s.labels == [["pen"], ["cup"]]

    root = tmp_path / "y"
    image(root / "images" / "a.png", 200, 100)
    (root / "labels").mkdir()
    (root / "labels" / "a.txt").write_text("0 0.5 0.5 0.5 0.25\n")
    (root / "classes.txt").write_text("cup\n")
    s, _ = load_box_test_set(root)
    np.testing.assert_allclose(s.boxes[0], [[50, 37.5, 150, 62.5]])


BAD = {
    "outside": ({"image_id": 1, "category_id": 1, "bbox": [150, 10, 80, 20]}, "leaves the 200x100 image"),
    "zero": ({"image_id": 1, "category_id": 1, "bbox": [10, 10, 0, 20]}, "zero area"),
    "unknown": ({"image_id": 1, "category_id": 7, "bbox": [10, 10, 5, 5]}, "category_id 7 is not in categories"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_coco_boxes_are_named_or_skipped(tmp_path, case):
    ann, message = BAD[case]
    good = {"image_id": 2, "category_id": 1, "bbox": [1, 1, 10, 10]}
    path = coco(tmp_path, [ann, good], images=6)
    with pytest.raises(DataError, match=message) as err:
        load_box_splits(path)
    assert "boxes.json" in str(err.value) and "img0.png" in str(err.value) and "--skip-bad" in str(err.value)
    s = load_box_splits(path, skip_bad=True)
    assert s.summary()["skipped"] == 1 and len(s.train) + len(s.val) + len(s.test) == 5


def test_box_within_a_pixel_is_clipped(tmp_path):
    path = coco(tmp_path, [{"image_id": 1, "category_id": 1, "bbox": [-0.5, 0, 200.8, 100.4]}], images=1)
    s, _ = load_box_test_set(path)
    np.testing.assert_allclose(s.boxes[0], [[0, 0, 200, 100]])


def test_missing_files_are_named(tmp_path):
    root = tmp_path / "y"
    image(root / "images" / "a.png")
    image(root / "images" / "b.png")
    (root / "labels").mkdir()
    (root / "labels" / "a.txt").write_text("")  # an image with no objects: fine
    (root / "classes.txt").write_text("cup\n")
    with pytest.raises(DataError, match=r"b\.png has no label file .*b\.txt"):
        load_box_test_set(root)
    s, _ = load_box_test_set(root, skip_bad=True)
    assert [Path(i).name for i in s.items] == ["a.png"] and s.boxes[0].shape == (0, 4)
    (root / "labels" / "b.txt").write_text("3 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DataError, match=r"b\.txt line 1: class 3 is not one of the 1 names"):
        load_box_test_set(root)
    (root / "classes.txt").unlink()
    with pytest.raises(DataError, match="no class names"):
        load_box_test_set(root)

    path = coco(tmp_path / "c", [], images=1)
    (tmp_path / "c" / "img0.png").unlink()
    with pytest.raises(DataError, match="image 'img0.png' is not in"):
        load_box_test_set(path)

    voc = tmp_path / "v"
    image(voc / "a.png")
    (voc / "a.xml").write_text(voc_xml(voc / "a.png", np.array([[1, 1, 5, 5]]), ["cup"]))
    image(voc / "b.png")
    with pytest.raises(DataError, match=r"b\.png has no label file"):
        load_box_test_set(voc)


def test_random_split_is_seeded_and_disjoint(tmp_path):
    path = coco(tmp_path, [{"image_id": i + 1, "category_id": 1, "bbox": [1, 1, 9, 9]} for i in range(20)], images=20)
    a, b, c = load_box_splits(path, seed=0), load_box_splits(path, seed=0), load_box_splits(path, seed=1)
    names = [sorted(map(str, x.items)) for x in (a.train, a.val, a.test)]
    assert names == [sorted(map(str, x.items)) for x in (b.train, b.val, b.test)]
    assert names != [sorted(map(str, x.items)) for x in (c.train, c.val, c.test)]
    assert sum(len(n) for n in names) == 20 and len(set().union(*names)) == 20
    assert a.how == "random seed=0"


def test_write_coco_round_trip(tmp_path):
    img = image(tmp_path / "imgs" / "x.png")
    src = BoxSet([img], [np.array([[1.5, 2, 30, 40]], np.float32)], [["pen"]], format="memory")
    write_coco(src, tmp_path / "imgs" / "out.json", ["cup", "pen"], tmp_path / "imgs")
    data = json.loads((tmp_path / "imgs" / "out.json").read_text())
    assert data["annotations"][0]["category_id"] == 2 and data["annotations"][0]["bbox"] == [1.5, 2, 28.5, 38]
    s, classes = load_box_test_set(tmp_path / "imgs" / "out.json")
    assert classes == ["cup", "pen"]
    np.testing.assert_allclose(s.boxes[0], [[1.5, 2, 30, 40]])


def test_skip_bad_skips_the_whole_image_and_counts_it(tmp_path):
    yolo = tmp_path / "y"
    for name in ("a", "b", "c", "d", "e", "f"):
        image(yolo / "images" / f"{name}.png")
        (yolo / "labels").mkdir(parents=True, exist_ok=True)
        (yolo / "labels" / f"{name}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (yolo / "classes.txt").write_text("cup\n")
    (yolo / "labels" / "b.txt").write_text("0 0.5 0.5 0.2 0.2\n0 0.9 0.5 0.4 0.2\n")  # 2nd box: x 0.7-1.1
    (yolo / "labels" / "c.txt").unlink()
    (yolo / "images" / "d.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"b\.txt line 2 \('0 0\.9 0\.5 0\.4 0\.2'\): box x 140-220, .* "
                                        r"leaves the 200x100"):
        load_box_splits(yolo)
    s = load_box_splits(yolo, skip_bad=True)
    kept = sorted(Path(i).name for part in (s.train, s.val, s.test) if part is not None for i in part.items)
    assert kept == ["a.png", "e.png", "f.png"]  # b's good box is not kept without its bad one
    assert s.summary()["skipped"] == 3 and any("d.png is not a readable image" in m for m in s.skipped)

    coco_file = coco(tmp_path / "c", [{"image_id": 2, "category_id": 1, "bbox": [1, 1, 10, 10]}], images=6)
    (tmp_path / "c" / "img0.png").unlink()
    s = load_box_splits(coco_file, skip_bad=True)
    assert s.summary()["skipped"] == 1 and "img0.png" in s.skipped[0]

    voc = tmp_path / "v"
    for name in ("a", "b", "c", "d"):
        image(voc / f"{name}.png")
        if name != "b":
            (voc / f"{name}.xml").write_text(voc_xml(voc / f"{name}.png", np.array([[1, 1, 5, 5]]), ["cup"]))
    s = load_box_splits(voc, skip_bad=True, test_fraction=0)
    assert s.summary()["skipped"] == 1 and "b.png has no label file" in s.skipped[0] and s.test is None


def test_voc_trainval_with_val_list_keeps_val_out_of_training(tmp_path):
    ids = [f"{i:03d}" for i in range(6)]
    boxes = BoxSet([image(tmp_path / "src" / f"{i}.png") for i in ids], [np.array([[1, 1, 9, 9]], np.float32)] * 6,
                   [["cup"]] * 6)
    root = to_voc({"trainval": boxes}, tmp_path / "voc")
    (root / "ImageSets" / "Main" / "val.txt").write_text("trainval-001\ntrainval-004\n")
    s = load_box_splits(root)
    assert s.how == "lists"
    assert sorted(Path(i).stem for i in s.val.items) == ["trainval-001", "trainval-004"]
    assert not {Path(i).stem for i in s.train.items} & {Path(i).stem for i in s.val.items}
    assert len(s.train) == 4


def test_yolo_names_with_a_gap_are_refused(tmp_path):
    root = tmp_path / "y"
    image(root / "images" / "a.png")
    (root / "labels").mkdir()
    (root / "labels" / "a.txt").write_text("2 0.5 0.5 0.1 0.1\n")
    (root / "data.yaml").write_text("names:\n  0: cup\n  2: pen\n")  # 2 would silently read as the 2nd name
    with pytest.raises(DataError, match=r"data\.yaml: names must be numbered 0 to 1 without gaps"):
        load_box_test_set(root)
    (root / "data.yaml").write_text("names:\n  1: pen\n  0: cup\n")  # any order is fine
    (root / "labels" / "a.txt").write_text("1 0.5 0.5 0.1 0.1\n")
    assert load_box_test_set(root)[0].labels == [["pen"]]


def test_write_coco_names_what_it_cannot_write(tmp_path):
    img = image(tmp_path / "imgs" / "x.png")
    with pytest.raises(DataError, match=r"Class 'mug' of .*x\.png is not among the classes given \(cup, pen\)"):
        write_coco(BoxSet([img], [np.array([[1, 1, 5, 5]], np.float32)], [["mug"]]), tmp_path / "o.json",
                   ["cup", "pen"], tmp_path / "imgs")
    with pytest.raises(DataError, match="is an array: COCO lists files"):
        write_coco(BoxSet([np.zeros((4, 4, 3), np.uint8)], [np.zeros((0, 4), np.float32)], [[]]), tmp_path / "o.json",
                   ["cup"], tmp_path)
    with pytest.raises(DataError, match=r"x\.png is not under .*other"):
        write_coco(BoxSet([img], [np.zeros((0, 4), np.float32)], [[]]), tmp_path / "o.json", ["cup"],
                   tmp_path / "other")
    assert not (tmp_path / "o.json").exists()


def test_in_memory_sources_and_an_empty_test_split(tmp_path):
    mem = BoxSet([np.zeros((8, 8, 3), np.uint8)] * 10, [np.array([[1, 1, 4, 4]], np.float32)] * 10, [["cup"]] * 10)
    splits = load_box_splits(mem)
    assert (splits.format, splits.classes) == ("memory", ["cup"]) and load_box_splits(splits) is splits
    assert load_box_test_set(mem) == (mem, ["cup"])
    assert load_box_test_set(splits)[0] is splits.test

    root = tmp_path / "y"
    image(root / "images" / "train" / "a.png")
    image(root / "images" / "train" / "b.png")
    (root / "images" / "test").mkdir()
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_text("")
    (root / "labels" / "train" / "b.txt").write_text("")
    (root / "classes.txt").write_text("cup\n")
    with pytest.raises(DataError, match="The test split of .* has no images"):
        load_box_splits(root)


def test_a_coco_image_list_without_annotations_is_named(tmp_path):
    path = tmp_path / "image_info.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}], "categories": []}))
    assert detect_box_format(path) == "coco"
    with pytest.raises(DataError, match=r"image_info\.json has no 'annotations' list"):
        load_box_test_set(path)


def test_single_coco_file_layouts(tmp_path):
    """A Roboflow split folder given itself (test/_annotations.coco.json) and CVAT's one instances_default.json."""
    path = coco(tmp_path / "rf", [{"image_id": 1, "category_id": 1, "bbox": [1, 1, 9, 9]}], images=1)
    path.rename(path.with_name("_annotations.coco.json"))
    assert detect_box_format(tmp_path / "rf") == "coco"
    s, _ = load_box_test_set(tmp_path / "rf")
    np.testing.assert_array_equal(s.boxes[0], [[1, 1, 10, 10]])

    cvat = tmp_path / "cvat"
    path = coco(cvat / "images", [{"image_id": 2, "category_id": 3, "bbox": [2, 2, 4, 4]}], images=2)
    (cvat / "annotations").mkdir()
    path.rename(cvat / "annotations" / "instances_default.json")
    s = load_box_splits(cvat, val_fraction=0.5, test_fraction=0.0)
    assert s.how == "random seed=0" and len(s.train) + len(s.val) == 2
