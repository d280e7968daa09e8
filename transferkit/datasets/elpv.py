"""ELPV: 2,624 electroluminescence images of solar cells (Buerhop-Lutz et al. 2018; Deitsch et al. 2019),
greyscale 300x300, each rated by experts with a defect probability of 0, 1/3, 2/3 or 1; mono- and
polycrystalline cells. Real, imbalanced and far from ImageNet's photographs: the offline stand-in for a
medical imaging set (greyscale, non-natural, few positives).

It installs from PyPI with the ``datasets`` extra (``elpv-dataset==1.0.0.post1``, 91 MB, CC BY-NC-SA 4.0:
non-commercial use).
Binary labels follow the dataset authors' evaluation: ``defective`` when the probability is at least 0.5,
else ``functional``. The set has no module ids, so cells cut from one module can land in two splits.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from pathlib import Path

import numpy as np

from ..errors import DataError
from . import require

PACKAGE = "elpv-dataset==1.0.0.post1"


def load_elpv() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(images (2624, 300, 300) uint8, defect probability (2624,), cell type (2624,) 'mono'/'poly')``."""
    require("elpv")  # names the extra to install (the data are CC BY-NC-SA 4.0: non-commercial use)
    from elpv_dataset.utils import load_dataset

    images, probs, types = load_dataset()
    return np.asarray(images), np.asarray(probs, dtype=np.float64), np.asarray(types)


def binary_labels(probs: np.ndarray) -> np.ndarray:
    return np.where(np.asarray(probs) >= 0.5, "defective", "functional")


def export_elpv(dest: str | Path, train_size: int, test_size: int = 800, seed: int = 0, pool_seed: int = 0) -> Path:
    """Write ``train_size`` labelled cells and a fixed test set of ``test_size`` cells as PNGs under ``dest``,
    with ``manifest.csv`` (``path,label,split,cell_type``); returns the manifest.

    The test set depends only on ``pool_seed``, so runs with different training sizes are scored on the same
    cells; training cells are drawn from the rest, stratified by label, with ``seed``. Written to a temporary
    folder first, then renamed: an interrupted export leaves nothing half-written.
    """
    from PIL import Image

    dest = Path(dest)
    if (dest / "manifest.csv").is_file():
        return dest / "manifest.csv"
    if dest.exists() and any(dest.iterdir()):
        raise DataError(f"{dest} exists and is not an ELPV export: choose an empty folder.")
    images, probs, types = load_elpv()
    labels = binary_labels(probs)
    rng = np.random.default_rng(pool_seed)
    order = rng.permutation(len(labels))
    test_idx, pool = order[:test_size], order[test_size:]
    if train_size > len(pool):
        raise DataError(f"ELPV has {len(pool)} cells outside the test set: ask for at most that many training cells.")
    rng = np.random.default_rng(seed + 1)
    train_idx: list[int] = []
    for c in sorted(set(labels)):  # stratified: the pool's share of each class
        members = pool[labels[pool] == c]
        n = round(train_size * len(members) / len(pool))
        train_idx += rng.choice(members, size=min(n, len(members)), replace=False).tolist()
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "label", "split", "cell_type"])
    for split, idx in (("train", sorted(train_idx)), ("test", sorted(test_idx.tolist()))):
        for i in idx:
            rel = f"{split}/{labels[i]}/cell{i + 1:04d}.png"
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(tmp / rel)
            w.writerow([rel, labels[i], split, types[i]])
    (tmp / "manifest.csv").write_text(buf.getvalue())
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        dest.rmdir()
    os.replace(tmp, dest)
    return dest / "manifest.csv"
