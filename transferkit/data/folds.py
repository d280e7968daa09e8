"""Cross-validation folds: disjoint, stratified by class, seeded, and whole patients where there are patients.

Small labelled sets are scored by cross-validation instead of a held-out test split (see
:func:`transferkit.fit`), and the linear probe chooses its regularisation the same way, so the folds live with
the data: every layer above (the probe, the strategies, the run) draws them from here.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

Fold = tuple[np.ndarray, np.ndarray]  # (training indices, validation indices), each sorted


def stratified_folds(strata: Sequence, k: int, seed: int = 0, groups: Sequence | None = None) -> list[Fold]:
    """``k`` folds whose validation parts are disjoint and together cover every example once.

    Per class, the examples (or, with ``groups``, whole groups such as patients, filed under their most frequent
    class) are shuffled with ``seed`` and dealt to the folds in turn; each class starts where the previous one
    stopped, so fold sizes differ by at most one unit. A class with fewer units than ``k`` is in only that many
    validation folds. ``k`` is cut to the number of units; fewer than two units raise ``ValueError``.

    Example::

        >>> [v.tolist() for _, v in stratified_folds(["a", "a", "b", "b"], k=2, seed=0)]
        [[0, 2], [1, 3]]
    """
    n = len(strata)
    members: dict[object, list[int]] = defaultdict(list)
    for i in range(n):
        members[groups[i] if groups is not None else i].append(i)
    units = sorted(members, key=str)
    if len(units) < 2:
        raise ValueError(f"cross-validation needs at least two examples (or groups); got {len(units)}")
    k = max(2, min(int(k), len(units)))
    by_class: dict[str, list[object]] = defaultdict(list)
    for u in units:
        label = Counter(str(strata[i]) for i in members[u]).most_common(1)[0][0]
        by_class[label].append(u)
    rng = random.Random(seed)
    fold_of: dict[object, int] = {}
    start = 0
    for label in sorted(by_class):
        order = by_class[label][:]
        rng.shuffle(order)
        for j, u in enumerate(order):
            fold_of[u] = (start + j) % k
        start = (start + len(order)) % k
    assignment = np.empty(n, dtype=np.int64)
    for u, f in fold_of.items():
        assignment[members[u]] = f
    everything = np.arange(n)
    return [(everything[assignment != f], everything[assignment == f]) for f in range(k)]


def label_strata(targets: Sequence) -> list[str]:
    """What folds are stratified by: each example's class, or for multi-label 0/1 rows (N, K) its rarest label
    ("none" for a row without labels)."""
    y = np.asarray(targets)
    if y.ndim == 1:
        return [str(int(v)) if np.issubdtype(y.dtype, np.number) else str(v) for v in y]
    freq = y.sum(0)
    return [str(int(min(np.flatnonzero(r), key=lambda j: freq[j]))) if r.any() else "none" for r in y]


def repeated_folds(strata: Sequence, k: int, repeats: int = 1, seed: int = 0,
                   groups: Sequence | None = None) -> list[list[Fold]]:
    """``repeats`` independent sets of :func:`stratified_folds` (seeds ``seed``, ``seed + 1``, ...)."""
    return [stratified_folds(strata, k, seed + r, groups) for r in range(max(1, int(repeats)))]
