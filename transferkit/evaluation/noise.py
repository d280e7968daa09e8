"""Label-noise check by confident learning (Northcutt, Jiang and Chuang, 2021, "Confident Learning: Estimating
Uncertainty in Dataset Labels"): the training examples most likely mislabelled, from out-of-fold probabilities.

Each class j gets a threshold t_j, the mean probability of j over the examples labelled j (how confident the model
typically is on its own class). An example is *confidently* of class j when p_j >= t_j; among the classes it is
confidently of, its confident class is the most probable one (a tie with the given label keeps the given label). An
example whose confident class is not its given label sits off the diagonal of the confident joint and is flagged
(the paper's C_confusion / "confident learning" rule, without the prune-by-noise-rate variants). Flagged examples are
ranked by self-confidence, the probability of the given label, lowest first. Multi-label data treat each (example,
label) pair as a two-class problem (absent / present) with thresholds from that label's column; an example is
flagged when any of its labels is.

Limits: the probabilities must be out of fold (cross-validated, or from a model that never saw the example). A model
that trained on an example has fitted its label, mislabelled or not, so its probabilities are overconfident and the
check finds little. It flags examples worth a second look, not proven mistakes: a hard, ambiguous or atypical
example is flagged as readily as a wrong one, and a class the model cannot learn spreads flags over its examples.

>>> y = np.array([0, 0, 0, 1, 1, 1])
>>> p = np.array([[.9, .1], [.8, .2], [.1, .9], [.1, .9], [.4, .6], [.1, .9]])
>>> find_label_issues(y, p).tolist()
[2]
>>> label_issues(y, p, ["cat", "dog"], [f"img{i}.png" for i in range(6)])
[{'input': 'img2.png', 'given': 'cat', 'suggested': 'dog', 'self_confidence': 0.1}]
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _check(y: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y, probs = np.asarray(y), np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probs: an (examples, classes) array, got shape {probs.shape}")
    n, k = probs.shape
    if y.ndim == 1:
        if len(y) != n:
            raise ValueError(f"y has {len(y)} examples, probs {n}")
        if n and (y.min() < 0 or y.max() >= k or not np.all(y == np.round(y))):
            raise ValueError(f"y: class indices in 0..{k - 1}")
        return y.astype(int), probs
    if y.shape != probs.shape:
        raise ValueError(f"y (multi-label) and probs: one (examples, classes) shape, got {y.shape} and {probs.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y (multi-label): 0/1 values only")
    return y.astype(int), probs


def confident_thresholds(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per-class thresholds t_j: the mean of p_j over the examples whose given label is j; inf for a class that no
    example holds (no example is confidently of it).

    Multi-label: an array (2, K), row 0 the thresholds of "absent" (mean of 1 - p over the examples without the
    label) and row 1 those of "present" (mean of p over the examples with it).

    >>> confident_thresholds(np.array([0, 0, 1]), np.array([[.9, .1], [.7, .3], [.4, .6]])).tolist()
    [0.8, 0.6]
    """
    y, probs = _check(y, probs)
    if y.ndim == 1:
        return _class_means(np.eye(probs.shape[1], dtype=bool)[y], probs)
    present = y.astype(bool)
    return np.stack([_class_means(~present, 1 - probs), _class_means(present, probs)])


def _class_means(member: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Column means of ``probs`` over the rows where ``member`` (N, K) holds; inf where a column has none."""
    count = member.sum(0)
    total = np.where(member, probs, 0.0).sum(0)
    return np.divide(total, count, out=np.full(probs.shape[1], np.inf), where=count > 0)


def _flag(y: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flagged (N,) bool, self-confidence (N,), suggestion): the suggestion is the confident class (N,) for
    single-label data, and the (N, K) 0/1 labels after flipping the flagged pairs for multi-label data."""
    y, probs = _check(y, probs)
    n = len(y)
    if y.ndim == 1:
        t = confident_thresholds(y, probs)
        above = probs >= t
        confident = np.where(above, probs, -np.inf).argmax(1)  # the most probable class among those above
        p_given = probs[np.arange(n), y]
        # a given label that ties the most probable class above its threshold keeps it
        kept = above[np.arange(n), y] & (p_given >= probs[np.arange(n), confident])
        flagged = above.any(1) & (confident != y) & ~kept
        return flagged, p_given, np.where(flagged, confident, y)
    t = confident_thresholds(y, probs)  # (2, K): absent, present
    p_given = np.where(y == 1, probs, 1 - probs)
    p_other = 1 - p_given
    t_given = np.where(y == 1, t[1], t[0])
    t_other = np.where(y == 1, t[0], t[1])
    # two classes: the other value is the confident one when it reaches its threshold and either the given value
    # does not, or it is the more probable of the two
    other_above = p_other >= t_other
    pair_flagged = other_above & ((p_given < t_given) | (p_other > p_given))
    self_conf = p_given.min(1) if y.shape[1] else np.ones(n)
    return pair_flagged.any(1), self_conf, np.where(pair_flagged, 1 - y, y)


def find_label_issues(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Indices of the examples whose given label confident learning flags, most likely mislabelled first (lowest
    self-confidence; ties by index). Its length is the number of issues.

    ``y``: (N,) class indices (single-label) or (N, K) 0/1 (multi-label). ``probs``: (N, K) out-of-fold predicted
    probabilities. Self-confidence is p[given label]; for multi-label data the lowest, over the example's K labels,
    of the probability of the given value (p where present, 1 - p where absent).
    """
    flagged, self_conf, _ = _flag(y, probs)
    idx = np.flatnonzero(flagged)
    return idx[np.argsort(self_conf[idx], kind="stable")]


def label_issues(y: np.ndarray, probs: np.ndarray, classes: list[str], names: list[str],
                 k: int = 20) -> list[dict[str, Any]]:
    """The ``k`` examples most likely mislabelled (:func:`find_label_issues`), as rows
    ``{"input": name, "given": ..., "suggested": ..., "self_confidence": ...}``.

    Single-label: ``given`` and ``suggested`` are class names (the suggestion is the confident class).
    Multi-label: lists of the class names present, given and after flipping the flagged labels.
    ``names`` names the examples in order (file paths); an example beyond it shows as ``#index``.
    """
    flagged, self_conf, suggestion = _flag(y, probs)
    y = np.asarray(y).astype(int)
    idx = np.flatnonzero(flagged)
    idx = idx[np.argsort(self_conf[idx], kind="stable")][:max(k, 0)]
    rows = []
    for i in idx:
        if y.ndim == 1:
            given: Any = classes[y[i]]
            suggested: Any = classes[suggestion[i]]
        else:
            given = [classes[j] for j in np.flatnonzero(y[i])]
            suggested = [classes[j] for j in np.flatnonzero(suggestion[i])]
        rows.append({"input": names[i] if i < len(names) else f"#{i}", "given": given, "suggested": suggested,
                     "self_confidence": round(float(self_conf[i]), 4)})
    return rows


def label_noise_summary(y: np.ndarray, probs: np.ndarray, classes: list[str], names: list[str],
                        k: int = 20) -> dict[str, Any]:
    """The check as a report reads it: ``{"examples": N, "issues": how many are flagged, "share": issues / N,
    "rows": the first k of them}`` (rows as :func:`label_issues`)."""
    n = len(np.asarray(y))
    issues = len(find_label_issues(y, probs))
    return {"examples": n, "issues": issues, "share": issues / n if n else 0.0,
            "rows": label_issues(y, probs, classes, names, k)}
