"""Fashion-MNIST (Zalando, MIT licence): 70,000 28x28 greyscale clothing images in 10 classes.

Read from Debian's ``dataset-fashion-mnist`` package when it is installed (``/usr/share/datasets/fashion-mnist``),
else from ``$TRANSFERKIT_CACHE/fashion-mnist`` after a download from the dataset's original home.
"""

from __future__ import annotations

import gzip
import os
import urllib.request
from pathlib import Path

import numpy as np

from ..cache import cache_root
from ..errors import DataError

CLASSES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"]
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _locate(name: str, download: bool) -> Path:
    for d in (DEBIAN_DIR, cache_root() / "fashion-mnist"):
        if (d / name).is_file():
            return d / name
    if not download:
        raise DataError(f"Fashion-MNIST file {name} not found: `apt-get install dataset-fashion-mnist`, or "
                        "allow the download.")
    dest = cache_root() / "fashion-mnist" / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".part")
    try:
        urllib.request.urlretrieve(URL + name, tmp)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise DataError(
            f"Cannot download Fashion-MNIST ({getattr(err, 'reason', err)}): connect to the internet or "
            "`apt-get install dataset-fashion-mnist`."
        ) from None
    os.replace(tmp, dest)
    return dest


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(split: str = "train", download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images (N, 28, 28) uint8, labels (N,) int64)`` of the official ``"train"`` or ``"test"`` split."""
    if split not in FILES:
        raise DataError(f"Fashion-MNIST split {split!r} does not exist: use 'train' or 'test'.")
    img_name, lbl_name = FILES[split]
    images = _read_idx(_locate(img_name, download))
    labels = _read_idx(_locate(lbl_name, download)).astype(np.int64)
    return images, labels


def sample_per_class(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Indices of ``per_class`` examples of each class, drawn with ``seed``, in ascending order."""
    rng = np.random.default_rng(seed)
    idx = [rng.choice(np.flatnonzero(labels == c), size=per_class, replace=False) for c in np.unique(labels)]
    return np.sort(np.concatenate(idx))


def export_image_folder(dest: str | Path, train_per_class: int = 10, test_size: int = 1000, seed: int = 0) -> Path:
    """Write a Fashion-MNIST subset as ``dest/train/<class>/*.png`` and ``dest/test/<class>/*.png``.

    ``train_per_class`` images per class from the official training set, and ``test_size`` images drawn
    stratified from the official test set. Deterministic for a given ``seed``.
    """
    from PIL import Image

    from ..io import atomic_dir

    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise DataError(f"{dest} already exists and is not empty: choose another folder or remove it first.")
    with atomic_dir(dest) as tmp:
        for split, per_class in (("train", train_per_class), ("test", max(1, test_size // len(CLASSES)))):
            images, labels = load_fashion_mnist(split)
            for i in sample_per_class(labels, per_class, seed):
                folder = tmp / split / CLASSES[labels[i]]
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(images[i]).save(folder / f"{split}-{i:05d}.png")
    return dest
