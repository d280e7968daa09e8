"""Multi-label scores (Hamming score, mAP, macro-AUROC, per-class thresholds) and per-class threshold tuning."""

from __future__ import annotations

import numpy as np
import pytest

from transferkit.evaluation.metrics import multilabel_metrics, tune_label_thresholds

# three classes; "c" has no positive, so mAP and macro-AUROC are over "a" and "b" only
Y = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0]])
P = np.array([[.9, .2, .1], [.4, .7, .3], [.6, .6, .2], [.2, .1, .6], [.7, .45, .1], [.3, .3, .2]])
CLASSES = ["a", "b", "c"]


def test_ranking_scores_match_sklearn():
    from sklearn.metrics import average_precision_score, hamming_loss, roc_auc_score

    m = multilabel_metrics(Y, P, CLASSES)
    assert m["hamming_score"] == pytest.approx(1 - hamming_loss(Y, (P >= 0.5).astype(int)))
    aps = [average_precision_score(Y[:, j], P[:, j]) for j in (0, 1)]
    aucs = [roc_auc_score(Y[:, j], P[:, j]) for j in (0, 1)]
    assert m["map"] == pytest.approx(np.mean(aps))
    assert m["macro_auroc"] == pytest.approx(np.mean(aucs))
    for j, c in enumerate(CLASSES[:2]):
        assert m["per_class"][c]["ap"] == pytest.approx(aps[j])
        assert m["per_class"][c]["auroc"] == pytest.approx(aucs[j])
    assert m["per_class"]["c"]["ap"] is None and m["per_class"]["c"]["auroc"] is None
    # pinned, worked by hand: 14 of the 18 decisions at 0.5 are right; ranked by probability each of "a" and "b"
    # reads positive, positive, negative, positive, so AP = (1 + 1 + 3/4) / 3, and 8 of 9 (positive, negative)
    # pairs are in order, so AUROC = 8/9
    assert round(m["hamming_score"], 4) == 0.7778
    assert round(m["map"], 4) == 0.9167
    assert round(m["macro_auroc"], 4) == 0.8889


def test_existing_keys_kept_and_threshold_stays_float():
    m = multilabel_metrics(Y, P, CLASSES, threshold=0.5)
    for key in ("n", "multi_label", "threshold", "accuracy", "micro_f1", "micro_f1_ci", "macro_f1", "log_loss",
                "per_class", "hamming_score", "map", "macro_auroc"):
        assert key in m
    assert set(m["per_class"]["a"]) == {"precision", "recall", "f1", "support", "ap", "auroc"}
    assert isinstance(m["threshold"], float) and m["threshold"] == 0.5


def test_no_class_with_both_values_gives_none():
    m = multilabel_metrics(np.array([[1, 0], [1, 0]]), np.array([[.8, .3], [.6, .1]]), ["a", "b"])
    assert m["map"] is None and m["macro_auroc"] is None
    assert m["hamming_score"] == 1.0


def test_per_class_thresholds_change_each_class_decisions():
    base = multilabel_metrics(Y, P, CLASSES, threshold=0.5)
    # a lower cut for "b" only: its 0.45 and 0.3 rows become positive (one right, one wrong), "a" and "c" decide as
    # before
    m = multilabel_metrics(Y, P, CLASSES, threshold=[0.5, 0.25, 0.5])
    assert m["threshold"] == [0.5, 0.25, 0.5]
    assert m["per_class"]["a"] == base["per_class"]["a"]
    assert m["per_class"]["c"] == base["per_class"]["c"]
    assert base["per_class"]["b"]["recall"] == pytest.approx(2 / 3)
    assert m["per_class"]["b"]["recall"] == 1.0
    assert m["per_class"]["b"]["precision"] == 0.75
    # ranking scores do not depend on the cut
    assert m["map"] == base["map"] and m["macro_auroc"] == base["macro_auroc"]
    # a per-class list equal to the float gives the same scores
    same = multilabel_metrics(Y, P, CLASSES, threshold=(0.5, 0.5, 0.5))
    assert same["micro_f1"] == base["micro_f1"] and same["hamming_score"] == base["hamming_score"]


def test_threshold_list_of_wrong_length_is_refused():
    with pytest.raises(ValueError, match="one per class"):
        multilabel_metrics(Y, P, CLASSES, threshold=[0.5, 0.5])


def _two_cut_toy():
    """Class 0 separates at 0.30, class 1 at 0.70: 10 positives and 10 negatives each, rows in mixed order."""
    rng = np.random.default_rng(0)
    y0 = np.repeat([0, 1], 10)
    p0 = np.concatenate([np.linspace(.02, .28, 10), np.linspace(.32, .6, 10)])
    y1 = np.repeat([0, 1], 10)
    p1 = np.concatenate([np.linspace(.4, .68, 10), np.linspace(.72, .98, 10)])
    o0, o1 = rng.permutation(20), rng.permutation(20)
    return np.stack([y0[o0], y1[o1]], 1), np.stack([p0[o0], p1[o1]], 1)


def test_tune_label_thresholds_finds_each_class_cut_and_beats_half():
    y, p = _two_cut_toy()
    t = tune_label_thresholds(y, p)
    assert t == pytest.approx([0.30, 0.70], abs=0.005)
    assert all(isinstance(v, float) for v in t)
    tuned = multilabel_metrics(y, p, ["a", "b"], threshold=t)["macro_f1"]
    half = multilabel_metrics(y, p, ["a", "b"], threshold=0.5)["macro_f1"]
    assert tuned == 1.0 and half < 0.8


def test_tune_label_thresholds_class_without_positives_or_negatives_keeps_half():
    y = np.array([[0, 1, 1], [0, 1, 0], [0, 1, 1], [0, 1, 0]])
    p = np.array([[.9, .1, .8], [.2, .2, .1], [.7, .3, .9], [.8, .1, .2]])
    t = tune_label_thresholds(y, p)
    assert t[0] == 0.5 and t[1] == 0.5
    assert t[2] == 0.5  # the midpoint 0.45 and 0.5 both separate: the tie goes to 0.5


def test_tune_label_thresholds_ties_round_and_clip():
    # only the midpoint 0.15 separates; 0.5 does not
    assert tune_label_thresholds(np.array([[0], [1]]), np.array([[.1], [.2]])) == [0.15]
    # the midpoint 0.55 and 0.5 both separate: the tie goes to the cut closest to 0.5
    assert tune_label_thresholds(np.array([[0], [1]]), np.array([[.2], [.9]])) == [0.5]
    # cuts are clipped to [0.01, 0.99] and rounded to 4 decimals
    assert tune_label_thresholds(np.array([[0], [1]]), np.array([[.001], [.005]])) == [0.01]
    assert tune_label_thresholds(np.array([[0], [1]]), np.array([[.1], [.123456]])) == [0.1117]
    # a grid replaces the midpoints (0.5 is always a candidate)
    assert tune_label_thresholds(np.array([[0], [1]]), np.array([[.1], [.2]]), grid=[0.12, 0.3]) == [0.12]
