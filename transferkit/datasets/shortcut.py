"""Two constructed image sets for the explanations' shortcut check (:mod:`transferkit.evaluation.explain`): one in
which a corner mark, not the content, tells the classes apart, and a clean one in which a square in the middle does.
The tests and ``benchmarks/explain.py`` build them here, so both measure the same thing."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_marked_images(folder: str | Path, per_class: int, seed: int = 0, marker: str | None = None,
                        size: int = 96) -> Path:
    """Write ``folder/<class>/<i>.png``: two classes of noisy grey ``size``-px images.

    ``marker=None`` (clean): class ``square`` carries a bright 16-px square somewhere in the middle, ``plain`` none;
    the content decides. ``marker="corner"`` (a shortcut): both classes look alike (a square in half of the images of
    each) and only ``tagged`` images carry a small red mark in the top-left corner, inside the outer 10% of the image.
    """
    if marker not in (None, "corner"):
        raise ValueError(f"marker must be None or 'corner', not {marker!r}")
    folder = Path(folder)
    from PIL import Image

    rng = np.random.default_rng(seed)
    edge = round(size * 0.1)
    for cls in (("square", "plain") if marker is None else ("tagged", "plain")):
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.normal(110, 25, (size, size, 3)).clip(0, 255)
            if (cls == "square") if marker is None else rng.random() < 0.5:
                y, x = rng.integers(int(size * 0.3), int(size * 0.55), 2)
                img[y:y + 16, x:x + 16] = 250
            if marker is not None and cls == "tagged":
                img[2:edge + 2, 2:edge + 2] = (230, 20, 20)
            Image.fromarray(img.astype(np.uint8)).save(folder / cls / f"{i}.png")
    return folder
