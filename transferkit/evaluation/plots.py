"""PNG plots: confusion matrix and learning curves. Matplotlib's Agg backend, no display needed."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..bundle.io import atomic_write_bytes


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def confusion_matrix_png(cm: list[list[int]], classes: list[str], path: Path, title: str = "Confusion matrix") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm_arr = np.asarray(cm)
    n = len(classes)
    size = max(4.0, 0.55 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm_arr, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    top = cm_arr.max() if cm_arr.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm_arr[i, j]), ha="center", va="center", color="white" if cm_arr[i, j] > top / 2 else "black", fontsize=8)
    _save(fig, path)


def learning_curve_png(epochs: list[dict], path: Path, title: str = "Learning curve") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [e["epoch"] + 1 for e in epochs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(x, [e["train_loss"] for e in epochs], marker="o", ms=3, label="train")
    ax1.plot(x, [e["val_loss"] for e in epochs], marker="o", ms=3, label="validation")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax2.plot(x, [e["train_acc"] for e in epochs], marker="o", ms=3, label="train")
    ax2.plot(x, [e["val_acc"] for e in epochs], marker="o", ms=3, label="validation")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy")
    ax2.set_ylim(0, 1.02)
    ax2.legend()
    fig.suptitle(title)
    _save(fig, path)
