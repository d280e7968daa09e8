"""Classification metrics from true and predicted class indices."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, classes: list[str],
                           y_pred: np.ndarray | None = None) -> dict[str, Any]:
    """Accuracy (with its 95% Wilson interval), macro-F1 (with a 95% bootstrap interval), balanced accuracy,
    per-class precision/recall/F1/support, confusion matrix and log-loss.

    The predicted class is the most probable one unless ``y_pred`` gives the decisions (e.g. a medical model's
    operating threshold on its positive class).

    >>> m = classification_metrics(np.array([0, 1, 1]), np.array([[.9, .1], [.2, .8], [.6, .4]]), ["a", "b"])
    >>> round(m["accuracy"], 4), round(m["macro_f1"], 4)
    (0.6667, 0.6667)
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    y_pred = probs.argmax(1) if y_pred is None else np.asarray(y_pred)
    labels = list(range(len(classes)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    present = (s > 0) | (np.bincount(y_pred, minlength=len(classes))[:len(classes)] > 0)
    eps = 1e-12
    log_loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(y_true)), y_true], eps, 1.0)))) + 0.0  # no "-0.000"
    return {
        "n": int(len(y_true)),
        "accuracy": float((y_pred == y_true).mean()),
        "accuracy_ci": _wilson(int((y_pred == y_true).sum()), len(y_true)),
        "balanced_accuracy": float(np.mean([r[i] for i in labels if s[i] > 0])) if s.sum() else 0.0,
        # over the classes present (true or predicted), as sklearn's default and the interval below: a class of the
        # model that these data neither hold nor get (a bundle's old class, --init-from) does not count as F1 = 0
        "macro_f1": float(f[present].mean()) if present.any() else 0.0,
        "macro_f1_ci": bootstrap_macro_f1(y_true, y_pred, len(classes)),
        "log_loss": log_loss,
        "per_class": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def bootstrap_macro_f1(y_true: np.ndarray, y_pred: np.ndarray, k: int, n_boot: int = 1000, seed: int = 0,
                       chunk: int = 200) -> list[float] | None:
    """95% percentile-bootstrap interval of macro-F1: the test examples are resampled with replacement, and each
    resample's F1 is averaged over the classes it holds (true or predicted), as sklearn's default does; a rare
    class that a resample left out would otherwise count as F1 = 0 and drag the interval down. Each chunk of
    resamples has its confusion matrices counted at once (memory grows with ``chunk`` x examples).

    >>> y = np.array([0] * 50 + [1] * 50); p = y.copy(); p[:10] = 1
    >>> lo, hi = bootstrap_macro_f1(y, p, 2)
    >>> lo < 0.899 < hi
    True
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    n = len(y_true)
    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    chunk = max(1, min(chunk, 2_000_000 // n))  # about 50 MB of indices per chunk however large the test set
    codes = y_true * k + y_pred
    out = []
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        idx = rng.integers(0, n, (b, n))
        flat = (np.arange(b)[:, None] * k * k + codes[idx]).ravel()
        cm = np.bincount(flat, minlength=b * k * k).reshape(b, k, k).astype(float)
        tp = np.diagonal(cm, axis1=1, axis2=2)
        denom = cm.sum(2) + cm.sum(1)  # 2tp + fp + fn = row sum + column sum
        f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
        present = denom > 0  # a class a resample happened to leave out is not scored 0 (sklearn's default labels)
        out.append((f1 * present).sum(1) / present.sum(1).clip(min=1))
    lo, hi = np.percentile(np.concatenate(out), [2.5, 97.5])
    return [float(lo), float(hi)]


def bootstrap_micro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_boot: int = 1000, seed: int = 0) -> list[float] | None:
    """95% percentile-bootstrap interval of multi-label micro-F1, resampling examples (rows)."""
    y_true, y_pred = np.asarray(y_true).astype(bool), np.asarray(y_pred).astype(bool)
    n = len(y_true)
    if n < 2:
        return None
    per = np.stack([(y_true & y_pred).sum(1), (~y_true & y_pred).sum(1), (y_true & ~y_pred).sum(1)], 1).astype(float)
    rng = np.random.default_rng(seed)
    sums = np.stack([per[rng.integers(0, n, n)].sum(0) for _ in range(n_boot)])
    denom = 2 * sums[:, 0] + sums[:, 1] + sums[:, 2]
    f1 = np.divide(2 * sums[:, 0], denom, out=np.zeros(n_boot), where=denom > 0)
    lo, hi = np.percentile(f1, [2.5, 97.5])
    return [float(lo), float(hi)]


def _wilson(k: int, n: int) -> list[float] | None:
    from .clinical import wilson

    return wilson(k, n)


def average_precisions(y_true: np.ndarray, scores: np.ndarray) -> list[float | None]:
    """Each class's average precision (sklearn's), None for a class whose truth holds one value only."""
    from sklearn.metrics import average_precision_score

    y_true = np.asarray(y_true).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    out: list[float | None] = []
    for j in range(y_true.shape[1]):
        pos = int(y_true[:, j].sum())
        out.append(float(average_precision_score(y_true[:, j], scores[:, j])) if 0 < pos < len(y_true) else None)
    return out


def mean_average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """mAP: the mean of :func:`average_precisions` over the classes with a positive and a negative (0.0 where no
    class has both). What multi-label runs choose epochs and models by: it needs no threshold, so the per-label
    thresholds tuned afterwards do not move it.

    >>> round(mean_average_precision(np.array([[1, 0], [0, 1], [1, 1]]), np.array([[.9, .1], [.2, .3], [.6, .2]])), 4)
    0.9167
    """
    ap = [a for a in average_precisions(y_true, scores) if a is not None]
    return float(np.mean(ap)) if ap else 0.0


def multilabel_metrics(y_true: np.ndarray, probs: np.ndarray, classes: list[str],
                       threshold: float | Sequence[float] = 0.5) -> dict[str, Any]:
    """Multi-label scores at ``threshold``: exact-match accuracy, Hamming score, micro-F1 (with a 95% bootstrap
    interval over examples), macro-F1, per-class P/R/F1/support, log-loss (mean binary cross-entropy over classes),
    and the threshold-free ranking scores mAP and macro-AUROC.

    ``threshold`` is one probability cut for every class, or one per class (``len(classes)`` of them, e.g. from
    :func:`tune_label_thresholds` on validation); a class is predicted when its probability is >= its cut.
    ``"threshold"`` in the result is a float, or a list of floats when per class.

    ``"hamming_score"`` is 1 - Hamming loss: the share of (example, class) decisions that are right. ``"map"`` is
    the mean over classes of sklearn's average precision, and ``"macro_auroc"`` the mean of per-class ROC AUC, both
    over the classes whose truth holds both values (a positive and a negative); None when no class does. Each
    ``"per_class"`` entry adds ``"ap"`` and ``"auroc"`` (None for a class with one value only).

    >>> m = multilabel_metrics(np.array([[1, 0], [1, 1]]), np.array([[.9, .2], [.8, .3]]), ["a", "b"])
    >>> m["accuracy"], round(m["micro_f1"], 4), round(m["macro_f1"], 4)
    (0.5, 0.8, 0.5)
    >>> m["hamming_score"], m["map"], m["macro_auroc"], m["per_class"]["a"]["ap"]
    (0.75, 1.0, 1.0, None)
    >>> multilabel_metrics(np.array([[1, 0], [1, 1]]), np.array([[.9, .2], [.8, .3]]), ["a", "b"],
    ...                    threshold=[0.5, 0.25])["accuracy"]
    1.0
    """
    from sklearn.metrics import f1_score, precision_recall_fscore_support, roc_auc_score

    y_true = np.asarray(y_true).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    cut = np.asarray(threshold, dtype=np.float64)
    if cut.ndim == 0:
        shown: float | list[float] = float(cut)
    elif cut.shape == (len(classes),):
        shown = [float(t) for t in cut]
    else:
        raise ValueError(f"threshold: a float or one per class ({len(classes)}), got shape {cut.shape}")
    y_pred = (probs >= cut).astype(int)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    eps = 1e-12
    clipped = np.clip(probs, eps, 1 - eps)
    log_loss = float(-np.mean(y_true * np.log(clipped) + (1 - y_true) * np.log(1 - clipped)))
    ap = average_precisions(y_true, probs) if len(y_true) else [None] * len(classes)
    # both values: ranking scores are defined (as for the average precisions)
    auc = [float(roc_auc_score(y_true[:, j], probs[:, j])) if a is not None else None for j, a in enumerate(ap)]
    scored_ap = [a for a in ap if a is not None]
    scored_auc = [a for a in auc if a is not None]
    return {
        "n": int(len(y_true)),
        "multi_label": True,
        "threshold": shown,
        "accuracy": float((y_pred == y_true).all(1).mean()) if len(y_true) else 0.0,
        "hamming_score": float((y_pred == y_true).mean()) if y_true.size else 0.0,
        "micro_f1": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
        "micro_f1_ci": bootstrap_micro_f1(y_true, y_pred),
        "macro_f1": float(f.mean()),
        "map": float(np.mean(scored_ap)) if scored_ap else None,
        "macro_auroc": float(np.mean(scored_auc)) if scored_auc else None,
        "log_loss": log_loss,
        "per_class": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i]),
                "ap": ap[i], "auroc": auc[i]}
            for i, c in enumerate(classes)
        },
    }


def tune_label_thresholds(y_true: np.ndarray, probs: np.ndarray,
                          grid: Sequence[float] | None = None) -> list[float]:
    """Per-class probability cuts for a multi-label model: for each class, the cut that maximises that class's F1
    (a class is predicted when its probability is >= its cut), to pass to :func:`multilabel_metrics` as
    ``threshold``.

    Candidates for a class are the midpoints between its consecutive distinct predicted probabilities (so no cut
    falls on an example), or the values of ``grid`` when given, and 0.5 in either case; ties in F1 go to the cut
    closest to 0.5. A class whose truth holds only one value (no positives, or no negatives) keeps 0.5. Cuts are
    rounded to 4 decimals and clipped to [0.01, 0.99].

    Tune on validation or out-of-fold predictions and score on other data: F1 measured on the examples the cuts
    were tuned on is optimistic (the cut was chosen for those very examples).

    >>> y = np.array([[0, 0], [0, 0], [1, 1], [1, 1]])
    >>> p = np.array([[.1, .6], [.2, .7], [.35, .8], [.4, .9]])
    >>> tune_label_thresholds(y, p)
    [0.275, 0.75]
    """
    y_true = np.asarray(y_true).astype(bool)
    probs = np.asarray(probs, dtype=np.float64)
    if y_true.ndim != 2 or probs.shape != y_true.shape:
        raise ValueError(f"y_true and probs: two (examples, classes) arrays of one shape, got {y_true.shape} and "
                         f"{probs.shape}")
    n = len(y_true)
    out = []
    for j in range(y_true.shape[1]):
        y, p = y_true[:, j], probs[:, j]
        positives = int(y.sum())
        if positives == 0 or positives == n:
            out.append(0.5)
            continue
        if grid is None:
            distinct = np.unique(p)
            candidates = (distinct[:-1] + distinct[1:]) / 2
        else:
            candidates = np.asarray(grid, dtype=np.float64).ravel()
        candidates = np.unique(np.append(candidates, 0.5))
        order = np.argsort(p, kind="stable")
        sorted_p = p[order]
        # positives among the examples below index i of sorted_p: those from i on are predicted at a cut in between
        below = np.concatenate([[0], np.cumsum(y[order])])
        first = np.searchsorted(sorted_p, candidates, side="left")  # first example with p >= cut
        predicted = n - first
        tp = positives - below[first]
        f1 = 2 * tp / (positives + predicted)  # 2tp / (2tp + fp + fn); positives > 0 so never 0 / 0
        best = np.flatnonzero(f1 >= f1.max() - 1e-12)
        t = candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]]
        out.append(float(np.clip(round(float(t), 4), 0.01, 0.99)))
    return out


def confidently_wrong(y_true: np.ndarray, probs: np.ndarray, classes: list[str], names: list[str],
                      texts: list[str] | None = None, k: int = 10, chars: int = 200,
                      y_pred: np.ndarray | None = None,
                      threshold: float | Sequence[float] = 0.5) -> list[dict[str, Any]]:
    """The ``k`` mistakes made with the highest confidence: where to look first for label noise or gaps.

    Single-label: wrong predictions (top-1, or the decisions ``y_pred``) ranked by the probability of the predicted
    class. Multi-label: the largest ``|probability - truth|`` over all (example, class) decisions that fell on the
    wrong side of the class's ``threshold`` (one for all, or one per class).
    """
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    rows: list[tuple[float, int, str, str]] = []
    if y_true.ndim == 1:
        pred = probs.argmax(1) if y_pred is None else np.asarray(y_pred)
        for i in np.nonzero(pred != y_true)[0]:
            rows.append((float(probs[i, pred[i]]), int(i), classes[pred[i]], classes[y_true[i]]))
    else:
        said_yes = probs >= np.asarray(threshold, dtype=np.float64)
        wrong = said_yes.astype(int) != y_true
        for i, c in zip(*np.nonzero(wrong), strict=True):
            said = "yes" if said_yes[i, c] else "no"
            rows.append((float(abs(probs[i, c] - y_true[i, c])), int(i), f"{classes[c]}: {said}",
                         f"{classes[c]}: {'no' if said == 'yes' else 'yes'}"))
    rows.sort(key=lambda r: -r[0])
    out = []
    for conf, i, predicted, true in rows[:k]:
        row = {"input": names[i] if i < len(names) else f"#{i}", "true": true, "predicted": predicted,
               "confidence": round(conf, 4)}
        if texts is not None:
            text = " ".join(texts[i].split())
            row["text"] = text[:chars] + ("..." if len(text) > chars else "")
        out.append(row)
    return out
