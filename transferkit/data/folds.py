"""Cross-validation folds: disjoint, stratified by class, seeded, and whole patients where there are patients.

Small labelled sets are scored by cross-validation instead of a held-out test split (see
:func:`transferkit.fit`), and the linear probe chooses its regularisation the same way, so the folds live with
the data: every layer above (the probe, the strategies, the run) draws them from here. Multi-label examples are
split by iterative stratification (:func:`iterative_parts`, :func:`iterative_folds`), which spreads every label,
not only each example's rarest one.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

Fold = tuple[np.ndarray, np.ndarray]  # (training indices, validation indices), each sorted


def stratified_folds(strata: Sequence, k: int, seed: int = 0, groups: Sequence | None = None) -> list[Fold]:
    """``k`` folds whose validation parts are disjoint and together cover every example once.

    Per class, the examples (or, with ``groups``, whole groups such as patients, filed under their most frequent
    class) are shuffled with ``seed`` and dealt to the folds in turn; each class starts where the previous one
    stopped, so fold sizes differ by at most one unit. A class with fewer units than ``k`` is in only that many
    validation folds. ``k`` is cut to the number of units; fewer than two units raise ``ValueError``.

    Examples:

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
    """``repeats`` independent sets of folds (seeds ``seed``, ``seed + 1``, ...): :func:`iterative_folds` when
    ``strata`` are label sets (a 2-D 0/1 array, or tuples or lists of labels, e.g. from :func:`fold_strata`), else
    :func:`stratified_folds`."""
    return [cross_val_folds(strata, k, seed + r, groups) for r in range(max(1, int(repeats)))]


# ------------------------------------------------------------------------------------------------- multi-label
# Filing a multi-label example under its rarest label (label_strata) balances that one label and leaves the others
# to chance: labels that come together (correlated labels, the usual case) can pile into one fold. Iterative
# stratification (Sechidis, Tsoumakas and Vlahavas 2011, "On the stratification of multi-label data") deals the
# rarest label first, each example to the part that lacks that label most, so every label is spread.


def iterative_parts(label_sets: Sequence, fractions: Sequence[float], seed: int = 0,
                    groups: Sequence | None = None) -> list[np.ndarray]:
    """Split multi-label examples into parts of shares ``fractions`` (normalised to sum to 1) so that each label
    is spread across the parts in those shares too; one sorted index array per part, disjoint, covering every
    example.

    ``label_sets`` holds each example's labels (an iterable of hashable labels, possibly empty; a lone string or
    number is one label), or is a 0/1 matrix (N, K) whose row's labels are its nonzero columns. With ``groups``
    (e.g. patients) a group goes whole into one part, carrying the labels of all its examples.

    The rarest label (fewest units not yet placed; ties by the label as text) is dealt first: its units, shuffled
    with ``seed``, each go to a part that has none of the label yet, else to the part that still lacks most of it
    (then the part with the most room left, then chance), and a placed unit counts against every label it carries;
    then the next rarest, until only units without labels are left, which fill the parts with the most room. So
    that the parts keep their shares when examples carry many labels, a part takes a unit only while it has room
    for at least half of it (if no part has, the one with the most room takes it): each part ends within about one
    unit of its share. Part 0 is the training part and gets every label: a label with fewer units than parts has
    its first unit put there, and a label that still missed it (its units all went elsewhere with other labels)
    has one of its units moved there. A label with at least as many units as parts reaches every part, unless other
    labels took its units first. With fewer units than parts, some parts are empty.

    Examples:

        >>> [p.tolist() for p in iterative_parts([["a"], ["a", "b"], ["b"], ["a"], ["c"], []], (0.5, 0.5), seed=0)]
        [[0, 2, 4], [1, 3, 5]]
    """
    shares = _shares(fractions)
    members, carried, size = _units(label_sets, groups)
    part_of = _deal(carried, size, shares, random.Random(seed), train_first=True)
    return _parts(members, part_of, len(shares))


def iterative_folds(label_sets: Sequence, k: int, seed: int = 0, groups: Sequence | None = None) -> list[Fold]:
    """``k`` folds of multi-label examples by iterative stratification (:func:`iterative_parts` with equal
    shares, each part a validation fold, so no part is favoured): validation parts disjoint and covering every
    example once, each label spread evenly over them. Labels and ``groups`` as for :func:`iterative_parts`, ``k``
    and errors as for :func:`stratified_folds`.

    Examples:

        >>> [v.tolist() for _, v in iterative_folds([("a",), ("a", "b"), ("b",), ("a",), ("c",), ()], k=3, seed=0)]
        [[1, 5], [3, 4], [0, 2]]
    """
    members, carried, size = _units(label_sets, groups)
    if len(members) < 2:
        raise ValueError(f"cross-validation needs at least two examples (or groups); got {len(members)}")
    k = max(2, min(int(k), len(members)))
    part_of = _deal(carried, size, [1 / k] * k, random.Random(seed), train_first=False)
    everything = np.arange(sum(size))
    return [(np.setdiff1d(everything, va), va) for va in _parts(members, part_of, k)]


def fold_strata(targets: Sequence) -> list:
    """What :func:`cross_val_folds` needs of the targets: each example's class (as :func:`label_strata`), or for
    multi-label 0/1 rows (N, K) each row's labels as a tuple of column indices (so its folds are iterative)."""
    y = np.asarray(targets)
    if y.ndim == 2:
        return [tuple(int(j) for j in np.flatnonzero(r)) for r in y]
    return label_strata(y)


def is_multi_label(strata: Sequence) -> bool:
    """Whether ``strata`` are label sets (a 2-D 0/1 array, or a sequence of tuples, lists or sets) rather than one
    class per example."""
    if getattr(strata, "ndim", None) == 2:
        return True
    return len(strata) > 0 and all(isinstance(s, (tuple, list, set, frozenset, np.ndarray)) for s in strata)


def cross_val_folds(strata: Sequence, k: int, seed: int = 0, groups: Sequence | None = None) -> list[Fold]:
    """:func:`iterative_folds` for multi-label strata (see :func:`is_multi_label`, :func:`fold_strata`), else
    :func:`stratified_folds`."""
    if is_multi_label(strata):
        return iterative_folds(strata, k, seed, groups)
    return stratified_folds(strata, k, seed, groups)


def _shares(fractions: Sequence[float]) -> list[float]:
    shares = [float(f) for f in fractions]
    if not shares or any(not f >= 0 for f in shares) or sum(shares) <= 0:
        raise ValueError(f"fractions must be non-negative with a positive sum; got {list(fractions)}")
    return [f / sum(shares) for f in shares]


def _label_sets(label_sets: Sequence) -> list[tuple]:
    if getattr(label_sets, "ndim", None) == 2:
        return [tuple(int(j) for j in np.flatnonzero(r)) for r in np.asarray(label_sets)]
    out = []
    for ys in label_sets:
        # a string is iterable, but as a label set it would be its letters
        single = isinstance(ys, (str, bytes)) or not isinstance(ys, Iterable)
        out.append((ys,) if single else tuple(dict.fromkeys(ys)))  # repeats of a label in one example count once
    return out


def _units(label_sets: Sequence, groups: Sequence | None) -> tuple[list[list[int]], list[Counter], list[int]]:
    """Per unit (example, or group): its examples, how many of them carry each label, and its size."""
    labels = _label_sets(label_sets)
    members: dict[object, list[int]] = defaultdict(list)
    for i in range(len(labels)):
        members[groups[i] if groups is not None else i].append(i)
    order = [members[u] for u in sorted(members, key=str)]
    return order, [Counter(y for i in m for y in labels[i]) for m in order], [len(m) for m in order]


def _deal(carried: list[Counter], size: list[int], shares: list[float], rng: random.Random,
          train_first: bool) -> list[int]:
    """The part of each unit (see :func:`iterative_parts` for the rules)."""
    m = len(shares)
    total: Counter = Counter()
    holders: dict[object, list[int]] = defaultdict(list)  # the units carrying each label, in unit order
    for j, c in enumerate(carried):
        total.update(c)
        for y in c:
            holders[y].append(j)
    want = [{y: f * t for y, t in total.items()} for f in shares]  # how much of each label each part still lacks
    room = [f * sum(size) for f in shares]  # how many examples each part still lacks
    left = {y: len(h) for y, h in holders.items()}  # units not yet placed, per label
    part_of = [-1] * len(size)
    units_in = [0] * m

    def place(j: int, p: int, sign: int = 1) -> None:
        part_of[j] = p if sign > 0 else -1
        room[p] -= sign * size[j]
        units_in[p] += sign
        for y, c in carried[j].items():
            want[p][y] -= sign * c
            left[y] -= sign

    def pick(key, among: list[int]) -> int:
        # rounded, so that shares such as 0.7 * 10 and 7 tie as they should
        keys = {p: tuple(round(v, 9) for v in key(p)) for p in among}
        best = [p for p in among if keys[p] == max(keys.values())]
        return best[0] if len(best) == 1 else rng.choice(best)

    def fits(j: int) -> list[int]:
        # examples that carry many labels would otherwise overfill the part lacking the label being dealt, and the
        # shares are a promise too: a part takes a unit only while that leaves it at most half a unit over its size
        # (else the part with the most room takes it)
        ok = [p for p in range(m) if room[p] >= size[j] / 2]
        return ok or [p for p in range(m) if round(room[p], 9) == round(max(room), 9)]

    while True:
        rarest = [y for y, n in left.items() if n > 0]
        if not rarest:
            break
        label = min(rarest, key=lambda y: (left[y], str(y)))
        order = [j for j in holders[label] if part_of[j] < 0]
        rng.shuffle(order)
        # the toolkit trains on part 0 and a label the model never saw cannot be learnt, so a label too rare to
        # reach every part reaches that one first
        first_to_train = train_first and len(holders[label]) < m and all(part_of[j] != 0 for j in holders[label])
        # a part without the label comes first, so that a label with a unit for every part reaches every part (a
        # split whose validation or test part lacks a label cannot check it), as the units left at its turn allow
        held = {part_of[j] for j in holders[label]}
        for j in order:
            p = 0 if first_to_train else pick(lambda p: (p not in held, want[p][label], room[p]), fits(j))
            place(j, p)
            held.add(p)
            first_to_train = False
    spare = [j for j in range(len(size)) if part_of[j] < 0]  # units without labels
    rng.shuffle(spare)
    for j in spare:
        place(j, pick(lambda p: (room[p],), list(range(m))))
    if train_first:
        # a label whose units all went elsewhere while other labels were dealt: move one of them to training, from
        # the part that has the most of it beyond its share (and not the last unit of a part, where there is choice)
        for label in sorted(total, key=str):
            if any(part_of[j] == 0 for j in holders[label]):
                continue
            j = min(holders[label], key=lambda j: (units_in[part_of[j]] == 1, want[part_of[j]][label], size[j], j))
            p = part_of[j]
            place(j, p, sign=-1)
            place(j, 0)
    return part_of


def _parts(members: list[list[int]], part_of: list[int], m: int) -> list[np.ndarray]:
    out: list[list[int]] = [[] for _ in range(m)]
    for unit, p in zip(members, part_of, strict=True):
        out[p] += unit
    return [np.array(sorted(v), dtype=np.int64) for v in out]
