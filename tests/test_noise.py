"""Label-noise check by confident learning: the definition on hand-made probabilities, and planted flips found on
separable toys scored out of fold."""

from __future__ import annotations

import numpy as np
import pytest

from transferkit.evaluation.noise import confident_thresholds, find_label_issues, label_issues, label_noise_summary


def _oof(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Out-of-fold probabilities of a logistic regression (5 folds), (N, K) for class indices, (N,) for 0/1."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict

    cv = (StratifiedKFold if y.max() > 1 else KFold)(5, shuffle=True, random_state=0)
    return cross_val_predict(LogisticRegression(), x, y, cv=cv, method="predict_proba")


def _blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.array([[0, 0], [4, 0], [2, 3.5]])
    return np.concatenate([rng.normal(c, 0.7, (20, 2)) for c in centres]), np.repeat(np.arange(3), 20)


def test_definition_on_hand_made_probabilities():
    y = np.array([0, 0, 0, 1, 1, 2, 2])
    p = np.array([[.8, .1, .1], [.6, .3, .1], [.1, .8, .1],  # the third "0" looks like a 1
                  [.2, .7, .1], [.1, .9, .0],
                  [.1, .1, .8], [.45, .1, .45]])  # the last "2" reaches no threshold: not flagged
    t = confident_thresholds(y, p)  # means of p_j over the examples labelled j
    assert t == pytest.approx([.5, .8, .625])
    assert find_label_issues(y, p).tolist() == [2]
    # a class no example holds has threshold inf: nothing is confidently of it
    t4 = confident_thresholds(y, np.hstack([p, np.full((7, 1), .99)]))
    assert t4[3] == np.inf
    # a confident class that ties the given label keeps the given label
    assert find_label_issues(np.array([0, 0, 1, 1]), np.array([[.5, .5], [.9, .1], [.5, .5], [.1, .9]])).size == 0


def test_ranked_by_self_confidence():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([[.9, .1], [.9, .1], [.2, .8], [.05, .95], [.1, .9], [.1, .9], [.2, .8], [.7, .3]])
    # thresholds 0.5125 and 0.725: examples 2, 3 and 7 are confidently of the other class; self-confidence
    # 0.2, 0.05 and 0.3
    assert find_label_issues(y, p).tolist() == [3, 2, 7]


def test_planted_flips_are_found():
    x, y = _blobs(0)
    rng = np.random.default_rng(100)
    flips = rng.choice(len(y), 6, replace=False)  # 10% of 60
    noisy = y.copy()
    noisy[flips] = (y[flips] + rng.integers(1, 3, len(flips))) % 3
    p = _oof(x, noisy)
    issues = find_label_issues(noisy, p)
    k = len(flips)
    precision = np.isin(issues[:k], flips).sum() / k
    assert precision >= 0.6  # the flip rate is 0.1; for this seed all 6 flips are the 6 flagged
    rows = label_issues(noisy, p, ["a", "b", "c"], [f"img{i}.png" for i in range(60)], k=k)
    for row in rows:
        i = int(row["input"][3:-4])
        assert set(row) == {"input", "given", "suggested", "self_confidence"}
        assert row["given"] == "abc"[noisy[i]] and row["suggested"] != row["given"]
        if i in flips:
            assert row["suggested"] == "abc"[y[i]]
    assert [r["self_confidence"] for r in rows] == sorted(r["self_confidence"] for r in rows)


def test_clean_labels_flag_few():
    x, y = _blobs(1)
    assert len(find_label_issues(y, _oof(x, y))) <= 3  # 5% of 60


def test_multi_label_flips_are_found():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [4, 0], [0, 4], [4, 4]])
    sets = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 1]])
    x = np.concatenate([rng.normal(c, 0.7, (15, 2)) for c in centres])
    y = np.repeat(sets, 15, axis=0)
    flips, cols = rng.choice(60, 6, replace=False), rng.integers(0, 3, 6)
    noisy = y.copy()
    noisy[flips, cols] = 1 - noisy[flips, cols]
    p = np.stack([_oof(x, noisy[:, j])[:, 1] for j in range(3)], 1)
    issues = find_label_issues(noisy, p)
    assert len(issues) >= 3
    assert np.isin(issues[:6], flips).sum() / min(6, len(issues)) >= 0.6  # chance: 0.1
    rows = label_issues(noisy, p, ["a", "b", "c"], [f"x{i}" for i in range(60)], k=6)
    for row in rows:
        i = int(row["input"][1:])
        assert set(row) == {"input", "given", "suggested", "self_confidence"}
        assert row["given"] == [c for c, v in zip("abc", noisy[i], strict=True) if v]
        if i in flips:
            assert row["suggested"] == [c for c, v in zip("abc", y[i], strict=True) if v]
        # the score is the lowest probability of a given value over the example's labels
        assert row["self_confidence"] == round(float(np.where(noisy[i] == 1, p[i], 1 - p[i]).min()), 4)


def test_summary_and_names_fallback():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([[.9, .1], [.8, .2], [.1, .9], [.1, .9], [.4, .6], [.1, .9]])
    s = label_noise_summary(y, p, ["cat", "dog"], ["a.png"], k=5)
    assert s["examples"] == 6 and s["issues"] == 1 and s["share"] == pytest.approx(1 / 6)
    assert s["rows"] == [{"input": "#2", "given": "cat", "suggested": "dog", "self_confidence": 0.1}]
    assert label_issues(y, p, ["cat", "dog"], [], k=0) == []


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        find_label_issues(np.array([0, 2]), np.array([[.5, .5], [.5, .5]]))
    with pytest.raises(ValueError):
        find_label_issues(np.array([[0, 2]]), np.array([[.5, .5]]))
    with pytest.raises(ValueError):
        find_label_issues(np.array([0, 1, 1]), np.array([[.5, .5], [.5, .5]]))
