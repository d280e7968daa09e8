"""What a classifier looks at, and whether that map is faithful to it.

An *explainer* (:mod:`transferkit.evaluation.explainers`; the task picks one for its data) turns examples into model
inputs, scores their *units* (the cells of the last feature map for images and spectrograms, the tokens of a text)
for a target class, removes units from an input, and draws an :class:`Explanation`. This module holds what does not
depend on the data:

- :func:`deletion_check`: the map's units removed first versus the same units in random order, and how fast the
  target's probability falls (the deletion metric of Petsiuk et al., RISE, 2018). ``score`` is the area between the
  two curves: 0 when the map ranks units no better than chance (a map that decorates), up to 1 when removing its
  top units destroys the prediction at once while random removal does not.
- :func:`border_shares` and :func:`shortcut_warning`: how much of each class's attribution lies in the outer band of
  the image, and a warning when one class leans on the border far more than the others (a ruler, a name tag, a
  scanner mark or one class's background).
- :func:`pick_examples` and :func:`explain_scored`: the report's examples per class (the most confident correct
  ones and the most confidently wrong), their maps, the shortcut check and the deletion score in one pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

# shares of the units removed along a deletion curve: its first half, where a faithful map and random order part
# (by the time half of an image is gone, both have taken most of the evidence; measured on Fashion-MNIST)
FRACTIONS = np.array([0.0, 0.125, 0.25, 0.5])
# the outer band: 10% of the height and of the width on each side (36% of the area), or one cell of the feature grid
# where that is wider (a 7x7 map cannot put a corner mark in a band thinner than its cells: measured, a mark in the
# outer 10% of the image lit the two cells at the corner)
BORDER = 0.1
SHORTCUT_MARGIN = 0.1  # a class is flagged when its share is this far above what an evenly spread map puts there ...
SHORTCUT_RATIO = 2.0  # ... and at least twice the median share of the other classes with maps
DECORATION = 0.05  # a deletion score below this: the report calls the maps decoration


@dataclass
class Explanation:
    """One input's explanation, ready to draw.

    ``kind``: ``"image"`` (``display`` the (H, W, 3) uint8 image the model saw, ``attribution`` an (H, W) map in
    [0, 1]), ``"spectrogram"`` (``display`` the (n_mels, frames) standardised log-mel window, ``attribution`` the
    same shape in [0, 1]) or ``"tokens"`` (``display`` the text cut into words and the text between them,
    ``attribution`` one signed score per word, the largest magnitude 1).
    """

    kind: str
    display: Any
    attribution: np.ndarray
    label: str
    probability: float
    note: str = ""  # e.g. which window of a recording
    words: list[tuple[str, int | None]] = field(default_factory=list)  # tokens: (text, word index or None)
    units: Any = None  # (U,) the attribution of each unit the deletion check removes (grid cells, tokens)
    valid: Any = None  # (U,) which units may be removed
    band: float = BORDER  # images: the border band the shortcut check measures (see BORDER)


def deletion_curves(explainer: Any, x: Any, targets: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor,
                    seed: int = 0) -> dict[str, np.ndarray]:
    """The target's probability as the most-attributed units are removed (``"map"``) and as the same number of
    units are removed in a random order (``"random"``), at each of :data:`FRACTIONS`; (B, len(FRACTIONS)) each.

    ``scores`` (B, U): the units' attribution; ``valid`` (B, U): which units may be removed (a text's padding and
    special tokens may not)."""
    gen = torch.Generator().manual_seed(seed)
    n_valid = valid.sum(1)
    ranked = torch.where(valid, scores.float(), torch.tensor(-torch.inf))
    orders = {"map": torch.argsort(ranked, dim=1, descending=True, stable=True),
              "random": torch.argsort(torch.where(valid, torch.rand(scores.shape, generator=gen),
                                                  torch.tensor(-1.0)), dim=1, descending=True)}
    rows = torch.arange(len(scores))[:, None]
    with torch.no_grad():
        whole = explainer.probabilities(x)[torch.arange(len(targets)), targets].float().numpy()
    curves = {}
    for name, order in orders.items():
        out = [whole]  # nothing removed: the same for both orders
        for f in FRACTIONS[1:]:
            k = torch.round(n_valid.float() * float(f)).long()
            keep = torch.ones_like(valid)
            removed = torch.arange(scores.shape[1])[None, :] < k[:, None]  # the first k of each row's order
            keep[rows.expand_as(order), order] = ~removed
            with torch.no_grad():
                probs = explainer.probabilities(explainer.remove(x, keep))
            out.append(probs[torch.arange(len(targets)), targets].float().numpy())
        curves[name] = np.stack(out, axis=1)
    return curves


def deletion_check(explainer: Any, x: Any, targets: torch.Tensor, scores: torch.Tensor | None = None,
                   valid: torch.Tensor | None = None, seed: int = 0) -> dict[str, Any]:
    """The deletion check on inputs ``x`` for ``targets``: the mean area under each curve of :func:`deletion_curves`
    (scaled to the share removed, so it is the mean probability along the curve) and their difference, ``score`` =
    random - map (higher: the map finds what the model uses; about 0: it decorates). ``scores``/``valid``: the units'
    attribution when already computed (else the explainer computes them)."""
    if scores is None or valid is None:
        scores, valid = explainer.units(x, targets)
    curves = deletion_curves(explainer, x, targets, scores, valid, seed)
    step = np.diff(FRACTIONS) / (FRACTIONS[-1] - FRACTIONS[0])
    area = {k: ((v[:, 1:] + v[:, :-1]) / 2 * step).sum(1) for k, v in curves.items()}  # trapezoids
    return {"score": round(float(np.mean(area["random"] - area["map"])), 4),
            "map_auc": round(float(area["map"].mean()), 4), "random_auc": round(float(area["random"].mean()), 4),
            "n": int(len(targets)), "fractions": [round(float(f), 3) for f in FRACTIONS],
            "map_curve": [round(float(v), 4) for v in curves["map"].mean(0)],
            "random_curve": [round(float(v), 4) for v in curves["random"].mean(0)]}


def stack_padded(rows: list[torch.Tensor], fill: Any) -> torch.Tensor:
    """1-D tensors of possibly different lengths (the tokens of texts) -> one (B, longest) tensor, padded with
    ``fill``."""
    out = torch.full((len(rows), max(len(r) for r in rows)), fill, dtype=rows[0].dtype)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def border_share(attribution: np.ndarray, band: float = BORDER) -> float:
    """The share of an (H, W) map's positive mass in its outer band (``band`` of the height and of the width on each
    side); a map spread evenly gives 1 - (1 - 2 band)^2 (0.36 for 10%)."""
    a = np.clip(np.asarray(attribution, dtype=np.float64), 0, None)
    total = a.sum()
    if total <= 0:
        return float("nan")
    h, w = a.shape
    dh, dw = max(1, round(h * band)), max(1, round(w * band))
    inner = a[dh:h - dh, dw:w - dw].sum()
    return float((total - inner) / total)


def even_share(band: float) -> float:
    """What an evenly spread map puts in a border band of ``band`` per side: 1 - (1 - 2 band)^2."""
    return 1 - (1 - 2 * band) ** 2


def border_shares(explanations: list[Explanation], targets: list[str]) -> dict[str, float]:
    """Each class's mean :func:`border_share` over the explanations whose target is that class (image maps only;
    a map with no positive attribution anywhere counts for none)."""
    per: dict[str, list[float]] = {}
    for e, t in zip(explanations, targets, strict=True):
        if e.kind == "image":
            s = border_share(e.attribution, e.band)
            if not np.isnan(s):
                per.setdefault(t, []).append(s)
    return {c: round(float(np.mean(v)), 4) for c, v in per.items()}


def shortcut_warning(shares: dict[str, float], band: float = BORDER) -> str | None:
    """One sentence when a class's attribution lies in the image's border band (``band`` per side) clearly more than
    an evenly spread map's (:data:`SHORTCUT_MARGIN`) and at least :data:`SHORTCUT_RATIO` times the median of the other
    classes' shares (when another class has maps: a class whose evidence is the absence of something, such as the
    unmarked class beside a marked one, may have none); None otherwise.

    >>> shortcut_warning({"tagged": 0.8, "plain": 0.2, "other": 0.25})[:94]
    "class 'tagged' relies on the image border: 80% of its attribution lies in the outer 10% band ("
    """
    flagged = []
    for c, s in shares.items():
        rest = [v for k, v in shares.items() if k != c]
        others = float(np.median(rest)) if rest else None
        if s >= even_share(band) + SHORTCUT_MARGIN and (others is None or s >= SHORTCUT_RATIO * others):
            flagged.append((s, c, others))
    if not flagged:
        return None
    s, c, others = max(flagged, key=lambda f: f[0])
    compared = f"other classes: {others:.0%}" if others is not None else "no other class has a map to compare"
    return (f"class {c!r} relies on the image border: {s:.0%} of its attribution lies in the outer {band:.0%} band "
            f"({compared}; an evenly spread map puts {even_share(band):.0%} there); look for a marker, ruler, label "
            "or background that only its images share, and crop or mask it")


def pick_examples(y: np.ndarray, probs: np.ndarray, decisions: np.ndarray | None, classes: list[str],
                  cut: np.ndarray | None = None, correct: int = 2, wrong: int = 1,
                  max_classes: int = 10) -> list[dict[str, Any]]:
    """The report's examples: per class, the ``correct`` most confident right predictions and the ``wrong`` most
    confidently wrong ones, each with the class its map explains (``target``: the prediction).

    Single-label (``decisions`` given): a class's wrong examples are its examples predicted as another class.
    Multi-label (``cut``, one threshold per label): right = the label present and predicted, wrong = predicted but
    absent. Over ``max_classes`` classes, those with the most errors are shown.

    Returns:
        ``[{"class": k, "index": i, "target": t, "correct": bool, "probability": p}]``, grouped by class.
    """
    rows: dict[int, list[dict[str, Any]]] = {}
    errors: dict[int, int] = {}
    for k in range(len(classes)):
        if decisions is not None:
            mine = y == k
            ok = np.flatnonzero(mine & (decisions == k))
            bad = np.flatnonzero(mine & (decisions != k))
            bad_target = decisions[bad]
        else:
            said = probs[:, k] >= cut[k]
            ok = np.flatnonzero((y[:, k] > 0) & said)
            bad = np.flatnonzero((y[:, k] == 0) & said)
            bad_target = np.full(len(bad), k)
        ok_p, bad_p = probs[ok, k], probs[bad, bad_target]
        picked = [{"class": k, "index": int(i), "target": k, "correct": True, "probability": float(p)}
                  for i, p in sorted(zip(ok, ok_p, strict=True), key=lambda t: -t[1])[:correct]]
        picked += [{"class": k, "index": int(i), "target": int(t), "correct": False, "probability": float(p)}
                   for i, t, p in sorted(zip(bad, bad_target, bad_p, strict=True), key=lambda t: -t[2])[:wrong]]
        if picked:
            rows[k], errors[k] = picked, len(bad)
    keep = sorted(rows, key=lambda k: (-errors[k], k))[:max_classes]
    return [r for k in sorted(keep) for r in rows[k]]


def explain_scored(explainer: Any, data: Any, y: np.ndarray, probs: np.ndarray, decisions: np.ndarray | None,
                   classes: list[str], cut: np.ndarray | None = None, seed: int = 0,
                   batch_size: int = 16) -> tuple[dict[str, Any], list[tuple[dict[str, Any], Explanation]]]:
    """Maps for the report: :func:`pick_examples` on the scored set (the figure; ``explainer.report_examples`` right
    and wrong per class); the deletion check on ``explainer.deletion_examples`` right answers drawn at random (seeded:
    the most confident ones alone would saturate); the shortcut check on every right answer explained, once each.

    Returns:
        What ``metrics.json`` records (``method``, ``examples``, ``border_share`` per class, ``border_band``,
        ``shortcut``, ``deletion``, ``seconds``) and the picked examples with their :class:`Explanation` (for the
        figure).
    """
    t = time.monotonic()
    correct, wrong = explainer.report_examples
    picked = pick_examples(y, probs, decisions, classes, cut, correct=correct, wrong=wrong)
    explained = list(zip(picked, explain_rows(explainer, data, picked, batch_size),
                         strict=True))
    sample = sampled_right_answers(y, probs, decisions, cut, explainer.deletion_examples, seed)
    known = {(r["index"], r["target"]): e for r, e in explained}  # right answers the figure already explained
    fresh = [r for r in sample if (r["index"], r["target"]) not in known]
    known |= {(r["index"], r["target"]): e for r, e in
              zip(fresh, explain_rows(explainer, data, fresh, batch_size), strict=True)}
    drawn = [known[(r["index"], r["target"])] for r in sample]
    # a map with no positive attribution ranks nothing (its order would be the raster's): left out, and counted
    empty = sum(1 for e in drawn if not bool((e.units > 0).any()))
    sample, drawn = [r for r, e in zip(sample, drawn, strict=True) if bool((e.units > 0).any())], \
        [e for e in drawn if bool((e.units > 0).any())]
    right = [(r, e) for r, e in explained if r["correct"]] + list(zip(fresh, [known[(r["index"], r["target"])]
                                                                              for r in fresh], strict=True))
    shares = border_shares([e for _, e in right], [classes[r["target"]] for r, _ in right])
    band = right[0][1].band if right else BORDER
    record: dict[str, Any] = {"method": explainer.method, "examples": len(explained), "border_share": shares or None,
                              "border_band": round(band, 4), "shortcut": shortcut_warning(shares, band),
                              "deletion": None, "empty_maps": empty}
    if sample:
        x = explainer.inputs(data, [r["index"] for r in sample], [r["target"] for r in sample])
        record["deletion"] = deletion_check(explainer, x, torch.tensor([r["target"] for r in sample]),
                                            stack_padded([e.units for e in drawn], 0.0),
                                            stack_padded([e.valid for e in drawn], False), seed)
    record["seconds"] = round(time.monotonic() - t, 2)
    return record, explained


def explain_rows(explainer: Any, data: Any, rows: list[dict[str, Any]], batch_size: int) -> list[Explanation]:
    """:meth:`explain` on ``rows`` (as :func:`pick_examples` gives them), a batch at a time."""
    found: list[Explanation] = []
    for start in range(0, len(rows), batch_size):
        part = rows[start:start + batch_size]
        found += explainer.explain(data, [r["index"] for r in part], [r["target"] for r in part],
                                   [r["probability"] for r in part])
    return found


def sampled_right_answers(y: np.ndarray, probs: np.ndarray, decisions: np.ndarray | None, cut: np.ndarray | None,
                          n: int, seed: int) -> list[dict[str, Any]]:
    """Up to ``n`` right answers drawn at random (``seed``), each with the class its map explains: the decided class,
    or for multi-label data the most probable label that is present and predicted."""
    if decisions is not None:
        right = np.flatnonzero(decisions == y)
        target = decisions
    else:
        hit = (y > 0) & (probs >= cut[None, :])
        right = np.flatnonzero(hit.any(1))
        target = np.where(hit, probs, -1.0).argmax(1)
    chosen = np.sort(np.random.default_rng(seed).permutation(right)[:n])
    return [{"class": int(target[i]), "index": int(i), "target": int(target[i]), "correct": True,
             "probability": float(probs[i, target[i]])} for i in chosen]
