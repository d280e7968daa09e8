"""Drawing explanations: the report's figure (maps per class), one PNG per predicted image or recording, one HTML
snippet per predicted text. Only the input the model saw, the map, the label and its probability are drawn: no file
name and no header data (a medical image shows its windowed pixels, nothing from its DICOM header)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_write_text
from .explain import Explanation
from .plots import pyplot, save_figure

MAP_ALPHA = 0.45  # the map over the input: the input stays readable under it
FIGURE_SIDE = 128  # the report figure's images at most this many pixels a side: a 2-inch panel shows no more


def shrunk(e: Explanation, side: int = FIGURE_SIDE) -> Explanation:
    """``e`` with its image and map resized to at most ``side`` pixels a side (drawing 224-px panels by the dozen
    costs seconds; a spectrogram or text is returned as it is)."""
    if e.kind != "image" or max(e.attribution.shape) <= side:
        return e
    import dataclasses

    from PIL import Image

    h, w = e.attribution.shape
    size = (max(1, round(w * side / max(h, w))), max(1, round(h * side / max(h, w))))
    image = np.asarray(Image.fromarray(np.ascontiguousarray(e.display)).resize(size, Image.BILINEAR))
    heat = np.asarray(Image.fromarray(e.attribution.astype(np.float32)).resize(size, Image.BILINEAR))
    return dataclasses.replace(e, display=image, attribution=heat)


def draw(ax: Any, e: Explanation, title: str, with_map: bool = True) -> None:
    """The input (an image, or a spectrogram with time across and mel bands up), with its map over it unless
    ``with_map`` is False, on one matplotlib axis."""
    spectro = e.kind == "spectrogram"
    where = {"origin": "lower", "aspect": "auto"} if spectro else {}
    ax.imshow(e.display, cmap="gray" if spectro else None, **where)
    if with_map:
        ax.imshow(e.attribution, cmap="jet", alpha=MAP_ALPHA, vmin=0, vmax=1, **where)
    if spectro:
        ax.set_xlabel("time (frames)", fontsize=7)
        ax.set_ylabel("mel band", fontsize=7)
        ax.tick_params(labelsize=6)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_title(title, fontsize=8)


def panel_title(row: dict[str, Any], e: Explanation) -> str:
    if row["correct"]:
        return f"right: {e.label} {e.probability:.2f}"
    return f"wrong: said {e.label} {e.probability:.2f}"


def explanations_png(explained: list[tuple[dict[str, Any], Explanation]], classes: list[str], path: Path,
                     title: str) -> None:
    """The report's figure: a row per class (its label on the left), its right answers then its most confidently
    wrong ones, each with its map."""
    plt = pyplot()
    by_class: dict[int, list[tuple[dict[str, Any], Explanation]]] = {}
    for row, e in explained:
        by_class.setdefault(row["class"], []).append((row, e))
    n_rows, n_cols = len(by_class), max(len(v) for v in by_class.values())
    spectro = explained[0][1].kind == "spectrogram"
    w, h = (2.8, 2.0) if spectro else (2.1, 2.25)
    top = 0.75  # inches above the panels for the title (a fixed layout: a solver over dozens of axes costs a second)
    height = h * n_rows + top
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(w * n_cols + 1.2, height), squeeze=False)
    fig.subplots_adjust(left=1.2 / (w * n_cols + 1.2), right=0.99, bottom=0.02, top=1 - top / height,
                        wspace=0.08, hspace=0.3)
    for r, (k, items) in enumerate(sorted(by_class.items())):
        for c in range(n_cols):
            ax = axes[r][c]
            if c >= len(items):
                ax.axis("off")
                continue
            row, e = items[c]
            draw(ax, shrunk(e), panel_title(row, e) + (f"\n{e.note}" if e.note else ""))
            if c == 0:
                ax.set_ylabel(classes[k], fontsize=9, rotation=0 if not spectro else 90, ha="right" if not spectro
                              else "center", va="center")
    fig.suptitle(title, fontsize=9, y=1 - 0.1 / height, va="top")
    save_figure(fig, path)


def explanation_png(e: Explanation, path: Path) -> None:
    """One predicted input: the input alone, then with its map; the title gives the label and its probability."""
    plt = pyplot()
    wide = e.kind == "spectrogram"
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3) if wide else (6, 3.2))
    draw(a, e, "input" + (f" ({e.note})" if e.note else ""), with_map=False)
    draw(b, e, "what the model looks at")
    fig.suptitle(f"{e.label}: {e.probability:.3f}", fontsize=11)
    save_figure(fig, path)


def top_words(e: Explanation, k: int = 8) -> list[tuple[str, float]]:
    """A text explanation's ``k`` words with the largest positive attribution, with their scores."""
    words = {i: t for t, i in e.words if i is not None}
    order = np.argsort(-e.attribution)[:k]
    return [(words[int(i)].strip(), round(float(e.attribution[i]), 3)) for i in order
            if e.attribution[i] > 0 and int(i) in words]


def explanation_html(e: Explanation) -> str:
    """A text explanation as an HTML snippet: the label and probability, then the text with each word shaded by its
    attribution (red: for the label, blue: against it)."""
    spans = []
    for text, i in e.words:
        if i is None:
            spans.append(html.escape(text))
            continue
        a = float(e.attribution[i])
        colour = f"rgba(220, 50, 47, {min(1.0, a):.2f})" if a > 0 else f"rgba(38, 139, 210, {min(1.0, abs(a)):.2f})"
        spans.append(f'<span style="background:{colour}" title="{a:+.3f}">{html.escape(text)}</span>')
    return ("<meta charset=\"utf-8\">\n"
            f"<div class=\"transferkit-explanation\">\n<p><b>{html.escape(e.label)}</b>: {e.probability:.3f} "
            "(red: words for this label, blue: against it; integrated gradients)</p>\n<p>" + "".join(spans)
            + "</p>\n</div>\n")


def explanation_folder(folder: str | Path) -> Path:
    """``folder`` created (with its parents) for ``predict --explain``, before any work.

    Raises:
        TransferkitError: it cannot be created (a file in the way, no permission), in one line.
    """
    from ..errors import TransferkitError

    if isinstance(folder, bool) or not isinstance(folder, (str, Path)) or not str(folder).strip():
        raise TransferkitError(f"explain={folder!r} is not a folder: give the folder to write the explanations to, "
                               "e.g. explain='why/' (leave it out for none).")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise TransferkitError(f"Cannot write explanations to {folder}: it is a file; give a folder with --explain.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TransferkitError(f"Cannot write explanations to {folder} ({err.strerror or err}): give another folder "
                               "with --explain.") from None
    return folder


def explanation_name(position: int, item: Any, text: bool = False) -> str:
    """The file name (without suffix) of the explanation of the ``position``-th input (from 0): ``001-name`` after
    the input file, ``001-text`` for a text (``text``), ``001-array`` for an array."""
    import re

    if text:
        stem = "text"
    elif isinstance(item, (str, Path)):
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(item).stem)[:60] or "input"
    else:
        stem = "array"
    return f"{position + 1:03d}-{stem}"


def write_explanation(e: Explanation, path: Path) -> Path:
    """Write one explanation where ``path`` says, with the suffix of its kind (``.png``, or ``.html`` for texts),
    atomically; return the file written."""
    if e.kind == "tokens":
        path = path.with_suffix(".html")
        atomic_write_text(path, explanation_html(e))
    else:
        path = path.with_suffix(".png")
        explanation_png(e, path)
    return path
