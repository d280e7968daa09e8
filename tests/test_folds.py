"""Multi-label folds and splits by iterative stratification: every label spread over the parts, the training part
sees every label, patients stay whole, the shares hold, and the folds are seeded and honest."""

from __future__ import annotations

import numpy as np
import pytest

from transferkit.data.folds import (
    fold_strata,
    iterative_folds,
    iterative_parts,
    label_strata,
    repeated_folds,
    stratified_folds,
)

SPLIT = (0.7, 0.15, 0.15)


def random_labels(n: int = 200, seed: int = 0) -> np.ndarray:
    """0/1 rows (n, 6) with labels from common to rare; some rows have none."""
    rng = np.random.default_rng(seed)
    return (rng.random((n, 6)) < [0.5, 0.3, 0.2, 0.1, 0.05, 0.03]).astype(np.int64)


def correlated_labels(n: int = 120, seed: int = 0) -> np.ndarray:
    """0/1 rows (n, 6) whose labels come together (1 and 2 mostly with 0, 4 only with 3), as in real data."""
    rng = np.random.default_rng(seed)
    y = np.zeros((n, 6), dtype=np.int64)
    y[:, 0] = rng.random(n) < 0.3
    y[:, 1] = (y[:, 0] & (rng.random(n) < 0.8)) | (rng.random(n) < 0.05)
    y[:, 2] = y[:, 0] & (rng.random(n) < 0.6)
    y[:, 3] = rng.random(n) < 0.25
    y[:, 4] = y[:, 3] & (rng.random(n) < 0.7)
    y[:, 5] = rng.random(n) < 0.08
    return y


def as_sets(y: np.ndarray) -> list[set[int]]:
    return [set(np.flatnonzero(r).tolist()) for r in y]


def label_deviation(y: np.ndarray, parts: list[np.ndarray], fractions) -> float:
    """The pinned measure of spread: the largest |examples of a label in a part - its share of the label's total|,
    over labels and parts, in examples."""
    total = y.sum(0)
    return float(max(np.abs(y[p].sum(0) - f * total).max() for p, f in zip(parts, fractions, strict=True)))


def assert_partition(parts: list[np.ndarray], n: int) -> None:
    assert all(p.dtype == np.int64 and p.tolist() == sorted(p.tolist()) for p in parts)
    assert sorted(np.concatenate(parts).tolist()) == list(range(n))  # disjoint, and every example placed


def test_parts_are_disjoint_sorted_and_cover_every_example():
    y = random_labels()
    parts = iterative_parts(y, SPLIT, seed=1)
    assert len(parts) == 3
    assert_partition(parts, len(y))


def test_every_label_with_enough_examples_reaches_every_part():
    for seed in range(3):
        y = random_labels(seed=seed)
        parts = iterative_parts(y, SPLIT, seed=seed)
        for label in np.flatnonzero(y.sum(0) >= len(SPLIT)):
            assert all(y[p, label].sum() > 0 for p in parts), (seed, label)


def test_training_part_gets_every_label_even_a_single_example():
    # "solo" is on one example, "pair" on two: too few to reach every part, so they go to training (part 0) first
    sets = [{"common"}] * 20 + [{"common", "solo"}, {"pair"}, {"pair", "common"}, set()]
    for seed in range(20):
        parts = iterative_parts(sets, SPLIT, seed=seed)
        train = set().union(*(sets[i] for i in parts[0]))
        assert train == {"common", "solo", "pair"}
    # "x" is only on examples dealt with rarer labels ("a", "b"), whose first units may go to training without it
    # there: one of its units is moved to training afterwards
    sets = [{"a"}, {"a", "x"}, {"b"}, {"b", "x"}]
    for seed in range(20):
        parts = iterative_parts(sets, SPLIT, seed=seed)
        assert {"a", "b", "x"} <= set().union(*(sets[i] for i in parts[0])), seed
    # a label with as many units as parts, which a small training share would otherwise miss
    for seed in range(20):
        parts = iterative_parts([{"a"}] * 3, (0.1, 0.45, 0.45), seed=seed)
        assert len(parts[0]) >= 1


def test_fractions_are_kept_within_one_example_per_part():
    y = random_labels(seed=5)
    for fractions in (SPLIT, (0.6, 0.25, 0.15), (0.5, 0.5), (0.8, 0.1, 0.05, 0.05)):
        parts = iterative_parts(y, fractions, seed=2)
        assert_partition(parts, len(y))
        for p, f in zip(parts, fractions, strict=True):
            assert abs(len(p) - f * len(y)) <= 1, (fractions, [len(q) for q in parts])
    # dense labels: examples with several labels must not overfill the part that lacks the label being dealt
    dense = (np.random.default_rng(3).random((200, 8)) < 0.5).astype(np.int64)
    parts = iterative_parts(dense, SPLIT, seed=0)
    assert all(abs(len(p) - f * 200) <= 1 for p, f in zip(parts, SPLIT, strict=True))
    # shares are normalised
    assert [p.tolist() for p in iterative_parts(y, (7, 1.5, 1.5), seed=2)] == \
        [p.tolist() for p in iterative_parts(y, SPLIT, seed=2)]


def test_groups_stay_whole():
    y = random_labels(seed=7)
    rng = np.random.default_rng(7)
    groups = [f"patient{g}" for g in rng.integers(0, 60, size=len(y))]
    parts = iterative_parts(y, SPLIT, seed=0, groups=groups)
    assert_partition(parts, len(y))
    where = [{groups[i] for i in p} for p in parts]
    assert not (where[0] & where[1] or where[0] & where[2] or where[1] & where[2])  # no patient in two parts
    folds = iterative_folds(y, 5, seed=0, groups=groups)
    held_out = [{groups[i] for i in va} for _, va in folds]
    assert sum(len(h) for h in held_out) == len(set(groups))  # each patient in exactly one validation fold
    for tr, va in folds:
        assert not {groups[i] for i in tr} & {groups[i] for i in va}


def test_seeded():
    y = random_labels(seed=2)
    same = [p.tolist() for p in iterative_parts(y, SPLIT, seed=4)]
    assert same == [p.tolist() for p in iterative_parts(y, SPLIT, seed=4)]
    assert same != [p.tolist() for p in iterative_parts(y, SPLIT, seed=5)]
    folds = [v.tolist() for _, v in iterative_folds(y, 5, seed=4)]
    assert folds == [v.tolist() for _, v in iterative_folds(y, 5, seed=4)]
    assert folds != [v.tolist() for _, v in iterative_folds(y, 5, seed=5)]


def test_matrix_input_equals_label_sets():
    y = random_labels(seed=3)
    as_lists = [sorted(s) for s in as_sets(y)]
    assert [p.tolist() for p in iterative_parts(y, SPLIT, seed=1)] == \
        [p.tolist() for p in iterative_parts(as_lists, SPLIT, seed=1)]
    assert [p.tolist() for p in iterative_parts(y.astype(np.float32), SPLIT, seed=1)] == \
        [p.tolist() for p in iterative_parts(as_sets(y), SPLIT, seed=1)]
    assert [v.tolist() for _, v in iterative_folds(y, 4, seed=1)] == \
        [v.tolist() for _, v in iterative_folds(as_lists, 4, seed=1)]


def test_examples_without_labels_are_placed():
    sets = [set()] * 30 + [{"a"}] * 10 + [{"a", "b"}] * 10
    parts = iterative_parts(sets, SPLIT, seed=0)
    assert_partition(parts, len(sets))
    assert sorted(len(p) for p in parts[1:]) == [7, 8] and len(parts[0]) == 35  # they fill the room left
    assert all(any(i < 30 for i in p) for p in parts)
    assert [len(p) for p in iterative_parts([set()] * 5, (0.6, 0.4))] == [3, 2]
    assert [len(va) for _, va in iterative_folds([()] * 6, 3)] == [2, 2, 2]


def test_fewer_units_than_parts_gives_empty_parts():
    parts = iterative_parts([{"a"}, {"b"}], SPLIT, seed=0)
    assert len(parts) == 3
    assert parts[0].tolist() == [0, 1]  # both labels are too rare to reach every part: training gets them
    assert [len(p) for p in iterative_parts([], SPLIT)] == [0, 0, 0]
    with pytest.raises(ValueError):
        iterative_parts([{"a"}], (0.5, -0.5))


def test_folds_are_disjoint_cover_everything_and_follow_the_k_rules():
    y = random_labels(seed=4)
    folds = iterative_folds(y, 5, seed=0)
    assert len(folds) == 5
    assert_partition([va for _, va in folds], len(y))
    for tr, va in folds:
        assert not set(tr.tolist()) & set(va.tolist())
        assert len(tr) + len(va) == len(y) and tr.tolist() == sorted(tr.tolist())
    assert max(len(va) for _, va in folds) - min(len(va) for _, va in folds) <= 1
    assert len(iterative_folds([{"a"}, {"b"}, {"a"}], 5)) == 3  # cut to the examples there are
    assert len(iterative_folds([{"a"}, {"a"}], 1)) == 2  # at least two
    assert all(len(va) for _, va in iterative_folds([{"a"}, {"a", "b"}, set(), {"b"}], 4))  # no empty fold
    with pytest.raises(ValueError):
        iterative_folds([{"a"}], 5)
    with pytest.raises(ValueError):
        iterative_folds([{"a"}, {"b"}], 2, groups=["p", "p"])


def test_iterative_folds_spread_labels_more_evenly_than_rarest_label_folds():
    # the rarest-label strata balance one label per example and leave the labels that come with it to chance
    for seed in range(10):
        y = correlated_labels(seed=seed)
        iterative = label_deviation(y, [va for _, va in iterative_folds(y, 5, seed=0)], [0.2] * 5)
        rarest = label_deviation(y, [va for _, va in stratified_folds(label_strata(y), 5, seed=0)], [0.2] * 5)
        assert iterative < rarest, (seed, iterative, rarest)
    y = correlated_labels(n=200, seed=0)
    assert label_deviation(y, iterative_parts(y, SPLIT, seed=0), SPLIT) <= 1.5


def test_repeated_folds_take_multi_label_strata():
    y = correlated_labels(seed=1)
    want = [[v.tolist() for _, v in iterative_folds(y, 5, seed=s)] for s in (3, 4)]
    for strata in (y, fold_strata(y), [list(s) for s in as_sets(y)]):
        assert [[v.tolist() for _, v in run] for run in repeated_folds(strata, 5, repeats=2, seed=3)] == want
    # one class per example: as before
    classes = [0, 1, 2] * 10
    assert fold_strata(np.array(classes)) == label_strata(np.array(classes))
    assert [[v.tolist() for _, v in run] for run in repeated_folds(fold_strata(np.array(classes)), 5, 2, seed=3)] \
        == [[v.tolist() for _, v in stratified_folds(label_strata(classes), 5, s)] for s in (3, 4)]
