"""The ``transferkit demo`` table: per demo, its data folder, how the data are built (once; an earlier export is
reused as it is) and how ``fit`` is asked to read them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import require


def _fashion_mnist(folder: Path, per_class: int, test_size: int) -> Path:
    from .fashion_mnist import export_image_folder

    if not (folder / "train").is_dir():  # an earlier export is reused as it is
        require("fashion_mnist")
        export_image_folder(folder, train_per_class=per_class, test_size=test_size)
    return folder


def _bbc_news(folder: Path, per_class: int, test_size: int) -> Path:
    from .bbc_news import export_text_folder

    if not (folder / "train").is_dir():
        require("bbc_news")
        export_text_folder(folder, train_per_class=8, test_per_class=100)
    return folder


def _spoken_digits(folder: Path, per_class: int, test_size: int) -> Path:
    from .spoken_digits import build_spoken_digits

    if not (folder / "train").is_dir():
        require("spoken_digits")
        build_spoken_digits(folder, train_per_class=20, test_per_class=30)
    return folder


def _composed(folder: Path, per_class: int, test_size: int) -> Path:
    if not (folder / "annotations").is_dir():
        from .composed import build_composed_detection

        require("composed")
        build_composed_detection(folder, train_images=200, test_images=100)
    return folder


def _composed_multilabel(folder: Path, per_class: int, test_size: int) -> Path:
    if not (folder / "labels.jsonl").is_file():  # an earlier build is reused as it is
        from .composed import build_composed_multilabel

        require("composed")
        build_composed_multilabel(folder, train_images=200, test_images=100)
    return folder / "labels.jsonl"


def _elpv(folder: Path, per_class: int, test_size: int) -> Path:
    from .elpv import export_elpv

    if not (folder / "manifest.csv").is_file():
        require("elpv")
    return export_elpv(folder, train_size=200, test_size=800)


@dataclass(frozen=True)
class Demo:
    """One ``transferkit demo``: where its data go, how they are built, and how ``fit`` is asked to read them."""

    folder: str  # default data folder
    build: Callable[[Path, int, int], Path]  # (folder, labels per class, test size) -> the data to fit on
    task: str = "classify"  # fit's task argument
    modality: str = "auto"  # fit's modality argument
    budget: str = "3m"


DEMOS: dict[str, Demo] = {
    "image": Demo("data/fashion-mnist-10", _fashion_mnist),
    "text": Demo("data/bbc-news-8", _bbc_news),
    "audio": Demo("data/spoken-digits-20", _spoken_digits),
    "detect": Demo("data/composed-objects", _composed, task="detect", budget="6m"),
    "multilabel": Demo("data/composed-multilabel", _composed_multilabel),
    "medical": Demo("data/elpv-200", _elpv, modality="medical"),
}
