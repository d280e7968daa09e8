"""Images with bounding boxes: COCO JSON, YOLO txt and Pascal VOC XML, detected from the files.

Everything becomes a :class:`BoxSet` (images + boxes xyxy in pixels + class names per box) grouped in
:class:`BoxSplits`. Splits the data already have (COCO files per split, YOLO ``images/<split>/``, VOC
``ImageSets/Main/*.txt``, ``train/ val/ test/`` folders) are honoured; otherwise a seeded random split by image.

Every problem is one line naming the file (and line) and what to do: a box outside the image (more than one
pixel; within one pixel it is clipped, as rounding), a box of zero area, an unknown category, an image without
its label file, a listed image that does not exist. With ``skip_bad`` the whole image is skipped instead and
counted (never only the box: a dropped box would leave an unlabelled object that training then punishes).
Label files without an image are ignored (YOLO exports often keep them for deleted images).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..console import warn
from ..errors import DataError
from .sources import IMAGE_SUFFIXES, Item

SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val",
               "test": "test", "testing": "test"}


@dataclass
class BoxSet:
    """Images with boxes. ``boxes[i]``: (n_i, 4) float32 array, x1 y1 x2 y2 in pixels of the original image;
    ``labels[i]``: n_i class names; n_i may be 0 (an image with no objects)."""

    items: list[Item]
    boxes: list[np.ndarray]
    labels: list[list[str]]
    origin: str = ""
    format: str = ""  # "coco", "yolo", "voc" or "memory"

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, idx: list[int]) -> BoxSet:
        return BoxSet([self.items[i] for i in idx], [self.boxes[i] for i in idx], [self.labels[i] for i in idx],
                      self.origin, self.format)

    def joined(self, other: BoxSet) -> BoxSet:
        """These images followed by ``other``'s (replay)."""
        return BoxSet(self.items + other.items, self.boxes + other.boxes, self.labels + other.labels, self.origin,
                      self.format)

    def counts(self) -> dict[str, int]:
        """Boxes per class name, sorted by name."""
        return dict(sorted(Counter(c for labels in self.labels for c in labels).items()))

    def box_count(self) -> int:
        return int(sum(len(b) for b in self.boxes))


@dataclass
class BoxSplits:
    train: BoxSet
    val: BoxSet
    test: BoxSet | None
    classes: list[str]
    how: str  # "folders", "lists" (VOC ImageSets), "files" (COCO per split) or "random seed=N"
    format: str
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        parts = {"train": self.train, "val": self.val, "test": self.test}
        return {"classes": self.classes, "split": self.how, "format": self.format,
                **{k: len(v) if v is not None else 0 for k, v in parts.items()},
                "boxes": {k: v.box_count() if v is not None else 0 for k, v in parts.items()},
                "train_per_class": self.train.counts(), "skipped": len(self.skipped)}


class _Checker:
    """Raises the first problem, or (``skip_bad``) records it and lets the caller drop the image."""

    def __init__(self, skip_bad: bool):
        self.skip_bad, self.skipped = skip_bad, []

    def bad(self, message: str) -> None:
        if not self.skip_bad:
            raise DataError(f"{message}: fix it, or pass --skip-bad to skip this image.")
        self.skipped.append(message)

    def box(self, x1: float, y1: float, x2: float, y2: float, w: float, h: float, where: str) -> list[float] | None:
        """A valid xyxy box in an image of ``w`` x ``h`` pixels, or None (after :meth:`bad`)."""
        values = (x1, y1, x2, y2)
        if not all(np.isfinite(v) for v in values):
            self.bad(f"{where}: box {values} has a non-finite number")
            return None
        if x1 < -1 or y1 < -1 or x2 > w + 1 or y2 > h + 1:
            self.bad(f"{where}: box x {x1:g}-{x2:g}, y {y1:g}-{y2:g} leaves the {w:g}x{h:g} image")
            return None
        x1, y1, x2, y2 = max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2)
        if x2 <= x1 or y2 <= y1:
            self.bad(f"{where}: box x {x1:g}-{x2:g}, y {y1:g}-{y2:g} has zero area")
            return None
        return [x1, y1, x2, y2]


def _image_size(path: Path, check: _Checker | None = None) -> tuple[int, int] | None:
    """Width and height from the header; None (after ``check.bad``) when it is not a readable image."""
    from PIL import UnidentifiedImageError

    from .images import open_image, oriented_size

    try:
        with open_image(path, path) as im:  # the header only, its size checked against the limits
            return oriented_size(im)  # boxes are drawn on the image as shown (its EXIF orientation applied)
    except DataError as err:  # too large or too elongated: the message names the limit and --skip-bad
        if check is None or not check.skip_bad:
            raise
        check.skipped.append(str(err))
        return None
    except (OSError, UnidentifiedImageError):
        if check is None:
            raise DataError(f"{path} is not a readable image: replace or remove it.") from None
        check.bad(f"{path} is not a readable image")
        return None


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _split_name(stem: str) -> str | None:
    s = stem.lower().removeprefix("instances_").removeprefix("_annotations.coco")
    s = s.rstrip("0123456789")
    return SPLIT_NAMES.get(s)


# --------------------------------------------------------------------------------------------------- detection


def detect_box_format(source: Any) -> str | None:
    """``"coco"``, ``"yolo"`` or ``"voc"`` when ``source`` is a path to a boxes dataset, else None (cheap: reads
    no image)."""
    if not isinstance(source, (str, Path)):
        return None
    p = Path(source).expanduser()
    if p.is_file():
        return "coco" if p.suffix.lower() == ".json" and _is_coco(p) else None
    if not p.is_dir():
        return None
    if (p / "annotations").is_dir() and any(_is_coco(j) for j in (p / "annotations").glob("*.json")):
        return "coco"
    if any((p / d / "_annotations.coco.json").is_file() for d in (".", *SPLIT_NAMES)):
        return "coco"
    if (p / "images").is_dir() and (p / "labels").is_dir():
        return "yolo"
    if _top_coco(p):  # folder/annotations.json beside folder/images/: a common COCO export layout
        return "coco"
    if (p / "Annotations").is_dir():
        return "voc"
    for folder in (p, *(p / d for d in SPLIT_NAMES)):
        if folder.is_dir() and any(folder.glob("*.xml")) and _images_in(folder):
            return "voc"
    return None


def _top_coco(folder: Path) -> list[Path]:
    """The COCO files lying in ``folder`` itself (``annotations.json``, ``instances_train.json`` ...)."""
    return sorted(j for j in folder.glob("*.json") if not j.name.startswith(".") and _is_coco(j))


def _is_coco(path: Path) -> bool:
    # the start of the file only: a COCO train file can be half a gigabyte, and this runs on every data path
    try:
        with path.open("rb") as f:
            head = f.read(1 << 16).decode("utf-8", errors="ignore")
    except OSError:
        return False
    return head.lstrip("\ufeff \t\r\n").startswith("{") and any(f'"{k}"' in head for k in ("images", "annotations"))


def load_box_splits(source: Any, *, val_fraction: float = 0.15, test_fraction: float = 0.2, seed: int = 0,
                    skip_bad: bool = False) -> BoxSplits:
    """Read a boxes dataset (COCO JSON file or folder, YOLO folder, Pascal VOC folder, or a :class:`BoxSet`) and
    return train/val(/test) splits (ready :class:`BoxSplits` are returned as they are). Raises :class:`DataError`
    with one line naming the culprit."""
    if isinstance(source, BoxSplits):
        return source
    check = _Checker(skip_bad)
    if isinstance(source, BoxSet):
        classes = sorted({c for labels in source.labels for c in labels})
        given, how, fmt = {"all": source}, "", source.format or "memory"
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise DataError(f"Data path {path} does not exist: pass a COCO JSON file, or a COCO, YOLO or VOC folder.")
        fmt = detect_box_format(path)
        if fmt is None:
            raise DataError(f"{path} has no boxes this reader knows: use a COCO JSON file, a YOLO folder (images/ + "
                            "labels/ + data.yaml) or a Pascal VOC folder (Annotations/ + JPEGImages/).")
        given, classes, how = {"coco": read_coco, "yolo": read_yolo, "voc": read_voc}[fmt](path, check)
    if check.skipped:
        warn(f"skipped {len(check.skipped)} image(s) with bad boxes or labels, e.g. {check.skipped[0]}")
    splits = _split(given, classes, how, fmt, val_fraction, test_fraction, seed)
    splits.skipped = check.skipped
    return splits


def load_box_test_set(source: Any, skip_bad: bool = False) -> tuple[BoxSet, list[str]]:
    """The test split of a boxes dataset when it has one, else every image; and its class names (a
    :class:`BoxSet` is scored whole, :class:`BoxSplits` by their test split, else validation)."""
    if isinstance(source, BoxSplits):
        return (source.test if source.test is not None else source.val), source.classes
    if isinstance(source, BoxSet):
        return source, sorted({c for labels in source.labels for c in labels})
    check = _Checker(skip_bad)
    path = Path(source).expanduser()
    fmt = detect_box_format(path) if path.exists() else None
    if fmt is None:
        raise DataError(f"{path} is not a boxes dataset: pass a COCO JSON file, or a COCO, YOLO or VOC folder.")
    given, classes, _ = {"coco": read_coco, "yolo": read_yolo, "voc": read_voc}[fmt](path, check)
    if check.skipped:
        warn(f"skipped {len(check.skipped)} image(s) with bad boxes or labels, e.g. {check.skipped[0]}")
    if "test" in given:
        return given["test"], classes
    # fit() held out a random share of such data; nothing here says which images those were
    warn(f"{path} has no test split: scoring all its images, including any the model was trained on "
         "(optimistic); give a test split for an honest score.")
    return _concat(list(given.values()), str(path), fmt), classes


def _concat(sets: list[BoxSet], origin: str, fmt: str) -> BoxSet:
    return BoxSet([i for s in sets for i in s.items], [b for s in sets for b in s.boxes],
                  [lab for s in sets for lab in s.labels], origin, fmt)


def _split(given: dict[str, BoxSet], classes: list[str], how: str, fmt: str, val_fraction: float,
           test_fraction: float, seed: int) -> BoxSplits:
    rng = np.random.default_rng(seed)
    if "train" not in given:  # one set: a seeded random split by image
        everything = _concat(list(given.values()), next(iter(given.values())).origin, fmt)
        order = rng.permutation(len(everything)).tolist()
        n_test = round(len(order) * test_fraction)
        n_val = max(1, round(len(order) * val_fraction))
        if len(order) - n_test - n_val < 1:
            raise DataError(f"{everything.origin} has {len(order)} image(s): too few to split; add images.")
        test = everything.subset(sorted(order[:n_test])) if n_test else None
        val = everything.subset(sorted(order[n_test:n_test + n_val]))
        train = everything.subset(sorted(order[n_test + n_val:]))
        return BoxSplits(train, val, test, classes, f"random seed={seed}", fmt)
    train, val, test = given["train"], given.get("val"), given.get("test")
    if val is None or len(val) == 0:  # carve validation images out of train
        order = rng.permutation(len(train)).tolist()
        n_val = max(1, round(len(order) * val_fraction))
        if len(order) - n_val < 1:
            raise DataError(f"{train.origin} has {len(order)} training image(s): too few to keep some for validation.")
        val, train = train.subset(sorted(order[:n_val])), train.subset(sorted(order[n_val:]))
        how = f"{how}, validation carved seed={seed}"
    if len(train) == 0:
        raise DataError(f"The training split of {train.origin} has no images: add some.")
    if test is not None and len(test) == 0:
        raise DataError(f"The test split of {test.origin} has no images: add some, or remove the empty split.")
    return BoxSplits(train, val, test, classes, how, fmt)


# ------------------------------------------------------------------------------------------------------ COCO


def read_coco(path: Path, check: _Checker) -> tuple[dict[str, BoxSet], list[str], str]:
    """A COCO JSON file, a folder with ``annotations/*.json`` (``instances_train.json``, ``val.json`` ...),
    Roboflow's ``<split>/_annotations.coco.json``, or a folder holding its COCO file itself (``annotations.json``
    beside ``images/``). Returns the sets per split (``all`` when unsplit)."""
    files: dict[str, tuple[Path, list[Path]]] = {}
    if path.is_file():
        files["all"] = (path, [path.parent, path.parent / "images"])
    else:
        for j in sorted((path / "annotations").glob("*.json")) if (path / "annotations").is_dir() else []:
            split = _split_name(j.stem)
            if split and split not in files:
                stem = j.stem.removeprefix("instances_")
                dirs = [path / stem, path / split, path / f"{split}2017", path / "images" / stem,
                        path / "images" / split, path / "images", path]
                files[split] = (j, dirs)
        for d in sorted(SPLIT_NAMES):
            j = path / d / "_annotations.coco.json"
            if j.is_file() and SPLIT_NAMES[d] not in files:
                files[SPLIT_NAMES[d]] = (j, [path / d])
        root = path / "_annotations.coco.json"  # a Roboflow split folder given itself, e.g. test/
        if not files and root.is_file():
            files["all"] = (root, [path])
        jsons = sorted((path / "annotations").glob("*.json")) if (path / "annotations").is_dir() else []
        if not files and len(jsons) == 1:  # one unsplit file, e.g. CVAT's instances_default.json
            files["all"] = (jsons[0], [path / "images", path / jsons[0].stem.removeprefix("instances_"), path])
        if not files and not jsons:  # COCO files in the folder itself, images in images/ (or beside them)
            files = _top_coco_files(path)
        if not files:
            raise DataError(f"{path} has no COCO file named by split: name them annotations/instances_train.json, "
                            "instances_val.json and instances_test.json, or put one annotations.json (or train.json, "
                            "val.json, test.json) beside images/.")
    classes: list[str] = []
    out = {}
    for split, (j, dirs) in files.items():
        out[split], names = _read_coco_file(j, dirs, check)
        classes += [n for n in names if n not in classes]
    return out, classes, "files" if "all" not in out else ""


def _top_coco_files(path: Path) -> dict[str, tuple[Path, list[Path]]]:
    """One COCO file in ``path`` (``annotations.json``): all the images, split later; several: one per split, named
    by split (``train.json``, ``instances_val.json`` ...)."""
    top = _top_coco(path)
    if len(top) == 1:
        return {"all": (top[0], [path / "images", path])}
    named = {_split_name(j.stem): j for j in top}
    if len(top) > 1 and None in named:
        raise DataError(f"{path} holds several COCO files ({', '.join(j.name for j in top)}): pass the one to read, or "
                        "name them train.json, val.json and test.json.")
    return {split: (j, [path / "images" / split, path / split, path / "images", path]) for split, j in named.items()}


def _read_coco_file(path: Path, dirs: list[Path], check: _Checker) -> tuple[BoxSet, list[str]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path} is not valid COCO JSON ({type(err).__name__}): re-export it.") from None
    try:
        cats = {int(c["id"]): str(c["name"]) for c in data.get("categories", [])}
        images = {int(im["id"]): im for im in data["images"]}
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{path}: images need id and file_name, categories id and name: re-export it.") from None
    if not isinstance(data.get("annotations"), list):
        raise DataError(f"{path} has no 'annotations' list: give a COCO instances file (images, annotations, "
                        "categories), not an image list.")
    names = [cats[k] for k in sorted(cats)]
    per_image: dict[int, list[dict]] = {k: [] for k in images}
    for n, ann in enumerate(data["annotations"]):
        image_id = ann.get("image_id")
        if image_id not in per_image:
            raise DataError(f"{path}: annotation #{n} points at image id {image_id!r}, which is not in images.")
        per_image[image_id].append(ann)
    items, boxes, labels = [], [], []
    for image_id in sorted(images, key=lambda k: str(images[k].get("file_name", ""))):
        im = images[image_id]
        name = str(im.get("file_name", ""))
        file = next((d / name for d in dirs if (d / name).is_file()), None)
        if file is None:
            check.bad(f"{path}: image {name!r} is not in {dirs[0]}")
            continue
        w, h = im.get("width"), im.get("height")
        if not w or not h:
            if (size := _image_size(file, check)) is None:
                continue
            w, h = size
        bs, ls, ok = [], [], True
        for ann in per_image[image_id]:
            if ann.get("iscrowd", 0):
                continue  # crowd regions are neither trained on nor scored (COCO's own evaluation ignores
                # detections on them; here such a detection counts as a false alarm)
            where = f"{path} annotation id {ann.get('id')} ({name})"
            if ann.get("category_id") not in cats:
                check.bad(f"{where}: category_id {ann.get('category_id')!r} is not in categories")
                ok = False
                break
            try:
                x, y, bw, bh = (float(v) for v in ann["bbox"])
            except (KeyError, TypeError, ValueError):
                check.bad(f"{where}: bbox must be [x, y, width, height]")
                ok = False
                break
            box = check.box(x, y, x + bw, y + bh, float(w), float(h), where)
            if box is None:
                ok = False
                break
            bs.append(box)
            ls.append(cats[ann["category_id"]])
        if ok:
            items.append(file)
            boxes.append(np.array(bs, np.float32).reshape(-1, 4))
            labels.append(ls)
    return BoxSet(items, boxes, labels, str(path), "coco"), names


def write_coco(boxes: BoxSet, json_path: Path, classes: list[str], image_root: Path) -> None:
    """Write ``boxes`` (image files under ``image_root``) as COCO JSON, categories numbered from 1 in ``classes``
    order. Atomic. Raises :class:`DataError` for an in-memory image, an image outside ``image_root``, or a class
    name that is not in ``classes``."""
    from ..io import write_json

    cat_ids = {c: k + 1 for k, c in enumerate(classes)}
    images, anns = [], []
    for i, (item, bs, ls) in enumerate(zip(boxes.items, boxes.boxes, boxes.labels, strict=True)):
        if isinstance(item, np.ndarray):
            raise DataError(f"Image #{i} of {boxes.origin or 'the boxes'} is an array: COCO lists files, so save it "
                            f"under {image_root} first.")
        if not Path(item).is_relative_to(image_root):
            raise DataError(f"{item} is not under {image_root}: COCO file names are relative to one image folder.")
        w, h = _image_size(Path(item))
        images.append({"id": i + 1, "file_name": Path(item).relative_to(image_root).as_posix(),
                       "width": w, "height": h})
        for b, lab in zip(np.asarray(bs).reshape(-1, 4).tolist(), ls, strict=True):
            if lab not in cat_ids:
                raise DataError(f"Class {lab!r} of {item} is not among the classes given "
                                f"({', '.join(classes)}): add it.")
            bw, bh = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat_ids[lab],
                         "bbox": [round(v, 3) for v in (b[0], b[1], bw, bh)], "area": round(bw * bh, 3), "iscrowd": 0})
    write_json(json_path, {"images": images, "annotations": anns,
                           "categories": [{"id": k + 1, "name": c} for k, c in enumerate(classes)]})


# ------------------------------------------------------------------------------------------------------ YOLO


def read_yolo(path: Path, check: _Checker) -> tuple[dict[str, BoxSet], list[str], str]:
    """Ultralytics layout: ``images/<split>/`` + ``labels/<split>/`` (or flat ``images/`` + ``labels/``), lines
    ``class cx cy w h`` in fractions of the image, class names from ``data.yaml`` or ``classes.txt``."""
    names = _yolo_names(path)
    splits = {SPLIT_NAMES[d.name]: d.name for d in sorted((path / "images").iterdir())
              if d.is_dir() and d.name in SPLIT_NAMES}
    out = {}
    if splits:
        for split, d in splits.items():
            out[split] = _read_yolo_dir(path / "images" / d, path / "labels" / d, names, check)
    else:
        out["all"] = _read_yolo_dir(path / "images", path / "labels", names, check)
    return out, names, "folders"


def _yolo_names(path: Path) -> list[str]:
    for f in (path / "data.yaml", path / "dataset.yaml"):
        if f.is_file():
            import yaml

            try:
                names = (yaml.safe_load(f.read_text(encoding="utf-8")) or {}).get("names")
            except yaml.YAMLError as err:
                raise DataError(f"{f} is not valid YAML ({err.__class__.__name__}): fix it.") from None
            if isinstance(names, dict):
                try:
                    keys = sorted(names, key=int)
                except (TypeError, ValueError):
                    keys = []
                if [int(k) for k in keys] != list(range(len(names))):
                    raise DataError(f"{f}: names must be numbered 0 to {len(names) - 1} without gaps (got "
                                    f"{', '.join(map(str, names))}): renumber them, and the label files with them.")
                names = [names[k] for k in keys]
            if names:
                return [str(n) for n in names]
    for f in (path / "classes.txt", path / "obj.names"):
        if f.is_file():
            return [line.strip() for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    raise DataError(f"{path} has no class names: add data.yaml with names: [...] (or classes.txt, one name per line).")


def _read_yolo_dir(images: Path, labels: Path, names: list[str], check: _Checker) -> BoxSet:
    items, boxes, labs = [], [], []
    for img in _images_in(images):
        txt = labels / f"{img.stem}.txt"
        if not txt.is_file():
            check.bad(f"{img} has no label file (expected {txt}; empty if the image has no objects)")
            continue
        if (size := _image_size(img, check)) is None:
            continue
        w, h = size
        bs, ls, ok = [], [], True
        for n, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            where = f"{txt} line {n}"
            parts = line.split()
            try:
                k, cx, cy, bw, bh = int(parts[0]), *(float(v) for v in parts[1:5])
                if len(parts) != 5:
                    raise ValueError
            except (ValueError, IndexError):
                check.bad(f"{where}: expected 'class cx cy w h', got {line.strip()!r}")
                ok = False
                break
            if not 0 <= k < len(names):
                check.bad(f"{where}: class {k} is not one of the {len(names)} names (0-{len(names) - 1})")
                ok = False
                break
            # the line as written (fractions) beside the box in pixels, so either can be checked
            box = check.box((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h, w, h,
                            f"{where} ({line.strip()!r})")
            if box is None:
                ok = False
                break
            bs.append(box)
            ls.append(names[k])
        if ok:
            items.append(img)
            boxes.append(np.array(bs, np.float32).reshape(-1, 4))
            labs.append(ls)
    return BoxSet(items, boxes, labs, str(images), "yolo")


# ------------------------------------------------------------------------------------------------------- VOC


def read_voc(path: Path, check: _Checker) -> tuple[dict[str, BoxSet], list[str], str]:
    """``Annotations/*.xml`` + ``JPEGImages/`` (splits from ``ImageSets/Main/{train,val,trainval,test}.txt``), or
    flat: each image with a same-stem ``.xml`` beside it, optionally inside ``train/ val/ test/``. ``xmin``..``xmax``
    are taken as pixel edges as written (torchvision's reading; no shift for VOC's 1-based pixel numbers), and
    ``difficult`` objects are kept. With ``trainval.txt`` and ``val.txt`` (no ``train.txt``), train is trainval
    less val."""
    known = None
    for f in (path / "labels.txt", path / "classes.txt"):
        if f.is_file():
            known = [line.strip() for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    pairs: dict[str, list[tuple[Path, Path]]] = {}
    how = "folders"
    if (path / "Annotations").is_dir():
        jpeg = path / "JPEGImages"
        by_stem = {p.stem: p for p in _images_in(jpeg)} if jpeg.is_dir() else {}
        lists = path / "ImageSets" / "Main"
        chosen = {s: lists / f"{s}.txt" for s in ("train", "val", "test") if (lists / f"{s}.txt").is_file()}
        if "train" not in chosen and (lists / "trainval.txt").is_file():
            chosen["train"] = lists / "trainval.txt"
        if chosen:
            how = "lists"
            ids = {s: [line.split()[0] for line in f.read_text().splitlines() if line.strip()]
                   for s, f in chosen.items()}
            if "train" in chosen and chosen["train"].name == "trainval.txt":
                # trainval holds the val images too: keep them out of training
                held_out = set(ids.get("val", [])) | set(ids.get("test", []))
                ids["train"] = [i for i in ids["train"] if i not in held_out]
        else:
            ids = {"all": sorted(p.stem for p in (path / "Annotations").glob("*.xml"))}
        for split, stems in ids.items():
            pairs[split] = []
            for stem in stems:
                xml, img = path / "Annotations" / f"{stem}.xml", by_stem.get(stem)
                if not xml.is_file() or img is None:
                    check.bad(f"{path}: image id {stem} has no "
                              f"{'Annotations/' + stem + '.xml' if img else 'image in JPEGImages/'}")
                    continue
                pairs[split].append((img, xml))
    else:
        folders = {SPLIT_NAMES[d.name]: d for d in sorted(path.iterdir()) if d.is_dir() and d.name in SPLIT_NAMES}
        for split, folder in (folders or {"all": path}).items():
            pairs[split] = []
            for img in _images_in(folder):
                xml = img.with_suffix(".xml")
                if not xml.is_file():
                    check.bad(f"{img} has no label file (expected {xml})")
                    continue
                pairs[split].append((img, xml))
    out = {split: _read_voc_pairs(ps, known, check, str(path)) for split, ps in pairs.items()}
    classes = known or sorted({c for s in out.values() for labels in s.labels for c in labels})
    return out, classes, how


def _read_voc_pairs(pairs: list[tuple[Path, Path]], known: list[str] | None, check: _Checker, origin: str) -> BoxSet:
    import xml.etree.ElementTree as ET

    items, boxes, labels = [], [], []
    for img, xml in pairs:
        try:
            root = ET.parse(xml).getroot()
        except ET.ParseError as err:
            check.bad(f"{xml} is not valid XML ({err})")
            continue
        size = root.find("size")
        try:
            w, h = float(size.findtext("width")), float(size.findtext("height"))
            if w <= 0 or h <= 0:
                raise ValueError
        except (AttributeError, TypeError, ValueError):
            if (size := _image_size(img, check)) is None:
                continue
            w, h = size
        bs, ls, ok = [], [], True
        for n, obj in enumerate(root.iter("object"), 1):
            where = f"{xml} object {n}"
            name = (obj.findtext("name") or "").strip()
            if not name or (known is not None and name not in known):
                check.bad(f"{where}: class {name!r} is not in the class list ({', '.join(known or [])})")
                ok = False
                break
            bb = obj.find("bndbox")
            try:
                x1, y1, x2, y2 = (float(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))
            except (AttributeError, TypeError, ValueError):
                check.bad(f"{where}: bndbox needs xmin, ymin, xmax, ymax")
                ok = False
                break
            box = check.box(x1, y1, x2, y2, w, h, where)
            if box is None:
                ok = False
                break
            bs.append(box)
            ls.append(name)
        if ok:
            items.append(img)
            boxes.append(np.array(bs, np.float32).reshape(-1, 4))
            labels.append(ls)
    return BoxSet(items, boxes, labels, origin, "voc")
