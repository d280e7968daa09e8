"""Detection and multi-label datasets composed from real pictures, since no dataset with boxes installs offline.

Fashion-MNIST garments (the official train set's items for training images, the test set's for test images)
are tinted, scaled and pasted at random positions onto random crops of scikit-image's bundled photos. Boxes are
exact: the tight bounding box of the pixels each garment is painted onto more than half opaque, and no garment
is painted over another. Written in COCO format (:func:`build_composed_detection`), or as a JSONL table of each
image's garment classes (:func:`build_composed_multilabel`); deterministic by seed. A test and benchmark aid:
transferkit reads real datasets (COCO, YOLO, VOC, tables) the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..console import track
from ..errors import DataError
from . import require

# photos bundled with scikit-image (no download); train and test backgrounds come from different photos
TRAIN_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "brick", "grass")
TEST_PHOTOS = ("immunohistochemistry", "hubble_deep_field", "retina", "gravel", "moon", "coins")


def _photos(names: tuple[str, ...]) -> list[np.ndarray]:
    require("composed")  # scikit-image: one line naming the extra to install
    from skimage import data

    out = []
    for name in names:
        try:
            img = np.asarray(getattr(data, name)())
        except Exception:  # noqa: BLE001, S112 - a photo that would need a download: use the others
            continue
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        out.append(img[..., :3].astype(np.uint8))
    if not out:
        raise DataError("No scikit-image photo loads here: reinstall scikit-image.")
    return out


def _background(rng: np.random.Generator, photos: list[np.ndarray], size: int) -> np.ndarray:
    from PIL import Image

    photo = photos[int(rng.integers(len(photos)))]
    h, w = photo.shape[:2]
    side = int(rng.integers(min(h, w) // 3, min(h, w) + 1))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(crop, dtype=np.float32)
    return arr[:, ::-1] if rng.random() < 0.5 else arr


def _iou(a: list[int], b: list[int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def compose_image(rng: np.random.Generator, background: np.ndarray, items: list[np.ndarray],
                  scale: tuple[float, float]) -> tuple[np.ndarray, list[list[int]], list[int]]:
    """Paste ``items`` (28x28 uint8) onto ``background``; returns the image, the boxes (x1, y1, x2, y2 with
    exclusive right/bottom edges) of the pixels painted more than half opaque, and the indices of the items placed.
    A placement overlapping an earlier box by IoU > 0.2, or touching an earlier garment's pixels, is retried (20
    times) and then dropped."""
    from PIL import Image

    img = background.copy()
    size = img.shape[0]
    covered = np.zeros(img.shape[:2], bool)  # pixels an earlier garment shows in, however faintly
    boxes: list[list[int]] = []
    placed: list[int] = []
    for k, item in enumerate(items):
        side = round(rng.uniform(*scale) * size)
        alpha = np.asarray(Image.fromarray(item).resize((side, side), Image.Resampling.BILINEAR), np.float32) / 255
        # the blend weight: transparent up to intensity 0.1 (Fashion-MNIST's dark surround), opaque from 0.5
        soft = np.clip((alpha - 0.1) / 0.4, 0, 1)
        # the box is taken from what is painted, not from the item's intensity: the item's darker parts
        # (0.3-0.5) are painted mostly opaque too, and a box from intensity > 0.5 would cut them off
        mask, shows = soft > 0.5, soft > 0
        if not mask.any():
            continue
        ys, xs = np.nonzero(mask)
        colour = rng.uniform(60, 255, 3).astype(np.float32)
        for _ in range(20):
            x0, y0 = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
            box = [x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1]
            # no garment is painted over another, so every box stays tight in the final picture
            if all(_iou(box, b) <= 0.2 for b in boxes) and not (covered[y0:y0 + side, x0:x0 + side] & shows).any():
                break
        else:
            continue
        # the garment's own shading times a colour; pixels at the mask's edge blend into the photo
        shade = (0.35 + 0.65 * alpha)[..., None] * colour
        region = img[y0:y0 + side, x0:x0 + side]
        img[y0:y0 + side, x0:x0 + side] = region * (1 - soft[..., None]) + shade * soft[..., None]
        covered[y0:y0 + side, x0:x0 + side] |= shows
        boxes.append(box)
        placed.append(k)
    return np.clip(img, 0, 255).astype(np.uint8), boxes, placed


def _checked(builder: str, dest: str | Path, classes: tuple[str, ...], train_images: int, test_images: int,
             image_size: int, objects: tuple[int, int], scale: tuple[float, float]) -> Path:
    """``dest`` once the settings of ``builder`` are checked: :class:`DataError` (one line) for an unknown class, a
    setting out of range, or a ``dest`` that exists and is not empty."""
    from .fashion_mnist import CLASSES

    unknown = [c for c in classes if c not in CLASSES]
    if unknown:
        raise DataError(f"Class {unknown[0]!r} is not a Fashion-MNIST class: choose from {', '.join(CLASSES)}.")
    if not classes or train_images < 2 or test_images < 1 or image_size < 32:
        raise DataError(f"{builder} needs classes, train_images >= 2, test_images >= 1 and image_size "
                        f">= 32 (got {len(classes)} classes, {train_images}, {test_images}, {image_size}).")
    if not 0 <= objects[0] <= objects[1] or not 0 < scale[0] <= scale[1] <= 1:
        raise DataError(f"objects {objects} or scale {scale} is out of range: use 0 <= low <= high objects and a scale "
                        "range within (0, 1].")
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        # atomic_dir would replace it whole: never delete what someone pointed us at by mistake
        raise DataError(f"{dest} already exists and is not empty: choose another folder or remove it first.")
    return dest


_Garments = tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]


def _garments(split: str, classes: tuple[str, ...]) -> _Garments:
    """What ``split``'s images are made of: the official split's Fashion-MNIST items, per class of ``classes`` the
    indices of its items, and the split's photos (train: :data:`TRAIN_PHOTOS`, test: :data:`TEST_PHOTOS`)."""
    from .fashion_mnist import CLASSES, load_fashion_mnist

    pixels, labels = load_fashion_mnist(split)
    pools = [np.flatnonzero(labels == CLASSES.index(c)) for c in classes]
    return pixels, pools, _photos(TRAIN_PHOTOS if split == "train" else TEST_PHOTOS)


def _compose_one(rng: np.random.Generator, garments: _Garments, classes: tuple[str, ...], image_size: int,
                 objects: tuple[int, int], scale: tuple[float, float]) -> tuple[np.ndarray, list[list[int]], list[str]]:
    """One picture: a random number in ``objects`` (inclusive) of garments of random ``classes`` on a photo crop.
    Returns the image, the placed garments' boxes and their class names (see :func:`compose_image`)."""
    pixels, pools, photos = garments
    ks = rng.integers(0, len(classes), int(rng.integers(objects[0], objects[1] + 1)))
    items = [pixels[rng.choice(pools[k])] for k in ks]
    img, boxes, placed = compose_image(rng, _background(rng, photos, image_size), items, scale)
    return img, boxes, [classes[int(ks[j])] for j in placed]


def _save_png(img: np.ndarray, path: Path) -> None:
    from PIL import Image

    # zlib's fastest level: photo crops barely compress further, and level 6 took 3x as long
    Image.fromarray(img).save(path, format="PNG", compress_level=1)


def build_composed_detection(dest: str | Path, *, train_images: int = 200, test_images: int = 100,
                             classes: tuple[str, ...] = ("Trouser", "Sneaker", "Bag", "Ankle_boot"),
                             image_size: int = 256, objects: tuple[int, int] = (1, 4),
                             scale: tuple[float, float] = (0.18, 0.45), seed: int = 0) -> Path:
    """Write ``dest/train/NNNN.png``, ``dest/test/NNNN.png`` and ``dest/annotations/instances_{train,test}.json``.

    Each image: a random crop of a photo (train: astronaut, coffee, chelsea, rocket, camera, brick, grass; test:
    immunohistochemistry, hubble_deep_field, retina, gravel, moon, coins), ``objects`` garments of ``classes``
    at a side of ``scale`` times the image, never painted over each other and overlapping by IoU 0.2 at most (a
    garment that finds no place in 20 tries is left out). Deterministic by ``seed``; written to a temporary folder
    and renamed. Raises :class:`DataError` for an unknown class, a setting out of range, or a ``dest`` that exists
    and is not empty (it is never overwritten).
    """
    from ..data.boxes import BoxSet, write_coco
    from ..io import atomic_dir

    dest = _checked("build_composed_detection", dest, classes, train_images, test_images, image_size, objects, scale)
    rng = np.random.default_rng(seed)
    with atomic_dir(dest) as tmp:
        for split, n in (("train", train_images), ("test", test_images)):
            garments = _garments(split, classes)
            (tmp / split).mkdir(parents=True)
            files, all_boxes, all_labels = [], [], []
            for i in track(range(n), f"composing {split} images", total=n):
                img, boxes, names = _compose_one(rng, garments, classes, image_size, objects, scale)
                path = tmp / split / f"{i:04d}.png"
                _save_png(img, path)
                files.append(path)
                all_boxes.append(np.array(boxes, np.float32).reshape(-1, 4))
                all_labels.append(names)
            write_coco(BoxSet(files, all_boxes, all_labels, split, "coco"),
                       tmp / "annotations" / f"instances_{split}.json", list(classes), tmp / split)
    return Path(dest)


def build_composed_multilabel(dest: str | Path, *, train_images: int = 200, test_images: int = 100,
                              image_size: int = 256, objects: tuple[int, int] = (2, 3),
                              scale: tuple[float, float] = (0.18, 0.45), classes: tuple[str, ...] | None = None,
                              seed: int = 0) -> Path:
    """Write a multi-label image set: ``dest/images/{train,test}_NNNN.png`` and ``dest/labels.jsonl``; returns
    the table's path.

    Each image is composed as in :func:`build_composed_detection` (photos and garments of the official train set for
    training images, of the test set for test images): ``objects`` (an inclusive range) garments of ``classes``
    (default: all ten Fashion-MNIST classes). Its labels are the sorted distinct classes of the garments placed: a
    garment that found no place is no label, and an image in which none did is drawn again, so every image has at
    least one label. One JSON object per line, paths relative to ``dest``, in the columns transferkit's tables
    read (``path``, ``label``, ``split``; a list label is multi-label)::

        {"path": "images/train_0000.png", "label": ["Bag", "Sneaker"], "split": "train"}

    Deterministic by ``seed``; written to a temporary folder and renamed. Raises :class:`DataError` for an unknown
    class, a setting out of range (``objects`` must start at 1 or more), or a ``dest`` that exists and is not empty
    (it is never overwritten).
    """
    import json

    from ..io import atomic_dir
    from .fashion_mnist import CLASSES

    classes = tuple(CLASSES) if classes is None else tuple(classes)
    dest = _checked("build_composed_multilabel", dest, classes, train_images, test_images, image_size, objects, scale)
    if objects[0] < 1:
        raise DataError(f"objects {objects} must start at 1 or more: every image of a multi-label set needs a label.")
    rng = np.random.default_rng(seed)
    lines = []
    with atomic_dir(dest) as tmp:
        (tmp / "images").mkdir()
        for split, n in (("train", train_images), ("test", test_images)):
            garments = _garments(split, classes)
            for i in track(range(n), f"composing {split} images", total=n):
                for _ in range(100):  # none placed: only when every item drawn is too faint to show at its size
                    img, _boxes, names = _compose_one(rng, garments, classes, image_size, objects, scale)
                    if names:
                        break
                else:
                    raise DataError(f"No garment showed in 100 tries at image_size {image_size}: use larger images "
                                    "or a larger scale.")
                rel = f"images/{split}_{i:04d}.png"
                _save_png(img, tmp / rel)
                lines.append(json.dumps({"path": rel, "label": sorted(set(names)), "split": split}) + "\n")
        (tmp / "labels.jsonl").write_text("".join(lines), encoding="utf-8")
    return dest / "labels.jsonl"
