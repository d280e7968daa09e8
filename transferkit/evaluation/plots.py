"""PNG plots: confusion matrix, learning curves and the comparison's curves. Matplotlib's Agg backend, no display
needed."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..io import atomic_write_bytes


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """Write a matplotlib figure as a PNG (110 dpi, tight box) atomically, then close it to free its memory.

    Every plot transferkit writes goes through here, so they all look alike and none is ever half-written.

    Args:
        fig: a :class:`matplotlib.figure.Figure`, e.g. from ``pyplot().subplots()``.
        path: the PNG file to create or replace.
    """
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def confusion_matrix_png(cm: list[list[int]], classes: list[str], path: Path, title: str = "Confusion matrix") -> None:
    plt = pyplot()

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
            ax.text(j, i, str(cm_arr[i, j]), ha="center", va="center",
                    color="white" if cm_arr[i, j] > top / 2 else "black", fontsize=8)
    save_figure(fig, path)


def learning_curve_png(epochs: list[dict], path: Path, title: str = "Learning curve",
                       score: str = "accuracy") -> None:
    plt = pyplot()

    x = [e["epoch"] + 1 for e in epochs]
    nan = float("nan")  # epochs of a final model trained without validation have no validation scores
    epochs = [{k: nan if v is None else v for k, v in e.items()} for e in epochs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(x, [e["train_loss"] for e in epochs], marker="o", ms=3, label="train")
    ax1.plot(x, [e["val_loss"] for e in epochs], marker="o", ms=3, label="validation")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax2.plot(x, [e["train_acc"] for e in epochs], marker="o", ms=3, label="train")
    ax2.plot(x, [e["val_acc"] for e in epochs], marker="o", ms=3, label="validation")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel(score)
    ax2.set_ylim(0, 1.02)
    ax2.legend()
    fig.suptitle(title)
    save_figure(fig, path)


_STRATEGY_COLOURS = {"linear": "tab:blue", "finetune": "tab:orange", "scratch": "tab:red", "auto": "tab:green",
                     "classical": "tab:gray",
                     "gradual": "tab:purple", "lora": "tab:brown", "contrastive": "tab:pink"}


def _colour(name: str, i: int) -> str:
    return _STRATEGY_COLOURS.get(name, f"C{i % 10}")


def data_efficiency_png(summary: list[dict], strategies: list[str], path: Path, ylabel: str = "test score") -> None:
    """Test score against labels per class (log axis), one line per strategy, shaded 95% interval over seeds."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, name in enumerate(strategies):
        rows = sorted((r for r in summary if r["strategy"] == name), key=lambda r: r["labels_per_class"])
        if not rows:
            continue
        x = [r["labels_per_class"] for r in rows]
        ax.plot(x, [r["score"] for r in rows], marker="o", color=_colour(name, i), label=name)
        if all(r["score_lo"] is not None for r in rows):
            ax.fill_between(x, [r["score_lo"] for r in rows], [r["score_hi"] for r in rows], color=_colour(name, i),
                            alpha=0.15, linewidth=0)
    ticks = sorted({r["labels_per_class"] for r in summary})
    ax.set_xscale("log")
    ax.set_xticks(ticks, [f"{t:.0f}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("labelled examples per class (train + validation)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Data efficiency")
    save_figure(fig, path)


def time_to_accuracy_png(runs: list[dict], strategies: list[str], path: Path, title: str = "Time to accuracy") -> None:
    """Best validation score so far against seconds since training began: one step line per run (seed)."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, name in enumerate(strategies):
        first = True
        for r in (r for r in runs if r["strategy"] == name and r["curve"]):
            t = [c[0] for c in r["curve"]]
            best = np.maximum.accumulate([c[1] for c in r["curve"]])
            ax.step(t, best, where="post", marker="o", ms=3, color=_colour(name, i), alpha=0.8,
                    label=name if first else None)
            first = False
    ax.set_xlabel("wall time since training began (s)")
    ax.set_ylabel("best validation score so far")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    save_figure(fig, path)


def gap_png(summary: list[dict], strategies: list[str], budgets: list, path: Path) -> None:
    """The kept model's training minus validation accuracy (read without augmentation): bars per budget and strategy,
    95% interval over seeds."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    width = 0.8 / max(1, len(strategies))
    for i, name in enumerate(strategies):
        xs, ys, err = [], [], [[], []]
        for j, b in enumerate(budgets):
            r = next((r for r in summary if r["budget"] == str(b) and r["strategy"] == name), None)
            if r is None:
                continue
            xs.append(j + (i - (len(strategies) - 1) / 2) * width)
            ys.append(r["gap"])
            err[0].append(r["gap"] - r["gap_lo"] if r["gap_lo"] is not None else 0)
            err[1].append(r["gap_hi"] - r["gap"] if r["gap_hi"] is not None else 0)
        ax.bar(xs, ys, width, yerr=err, capsize=2, color=_colour(name, i), label=name)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(budgets)), [str(b) for b in budgets])
    ax.set_xlabel("labelled examples per class")
    ax.set_ylabel("train - validation accuracy")
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    ax.set_title("Overfitting gap of the kept model")
    save_figure(fig, path)
