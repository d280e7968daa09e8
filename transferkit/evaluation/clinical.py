"""The scores clinicians read: AUROC, sensitivity and specificity at an operating threshold, PPV/NPV,
balanced accuracy, and calibration (expected calibration error before and after temperature scaling).

Binary tasks have a *positive* class (the finding: "pneumonia", "defective"); its probability is compared
with a threshold chosen on the validation set (:func:`tune_threshold`), never on the test set. Intervals are
95%: Wilson score intervals for proportions, a stratified bootstrap for AUROC.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ..errors import TransferkitError

NEGATIVE_NAMES = re.compile(r"^(0|no|false|neg|negative|normal|healthy|benign|control|clean|ok|good|functional|"
                            r"no[ _-]?finding|absent|none)$", re.IGNORECASE)


def choose_positive(classes: list[str], counts: dict[str, int], positive: str | None = None) -> str | None:
    """The positive class of a binary task: ``positive`` when given (checked), else the class whose name does not
    mean "normal" (normal, healthy, negative, benign, 0, ...), else the rarer class. None for 3+ classes."""
    if positive is not None:
        if positive not in classes:
            raise TransferkitError(f"Positive class {positive!r} is not one of the classes ({', '.join(classes)}).")
        if len(classes) != 2:
            raise TransferkitError(f"positive applies to two classes (a finding and its absence); these data have "
                                   f"{len(classes)}: each class gets its own sensitivity and specificity instead.")
        return positive
    if len(classes) != 2:
        return None
    negative = [c for c in classes if NEGATIVE_NAMES.match(c.strip())]
    if len(negative) == 1:
        return next(c for c in classes if c != negative[0])
    return min(classes, key=lambda c: (counts.get(c, 0), c))


def parse_threshold_rule(rule: str | float | None) -> str | float:
    """``youden`` (default), a probability such as 0.3, ``sensitivity=0.95`` or ``specificity=0.9``."""
    if rule is None:
        return "youden"
    if isinstance(rule, (int, float)) and not isinstance(rule, bool):
        value = float(rule)
    else:
        text = str(rule).strip().lower().replace(" ", "")
        if text == "youden":
            return "youden"
        m = re.fullmatch(r"(sensitivity|specificity|sens|spec)[=:]([0-9.]+)", text)
        if m:
            target = float(m.group(2))
            if 0 < target <= 1:
                return f"{'sensitivity' if m.group(1).startswith('sens') else 'specificity'}={target:g}"
        try:
            value = float(text)
        except ValueError:
            value = -1.0
    if 0 < value < 1:
        return value
    raise TransferkitError(f"Threshold {rule!r} is not valid: give a probability between 0 and 1, youden, "
                           "sensitivity=0.95 or specificity=0.9.")


def tune_threshold(y_pos: np.ndarray, p_pos: np.ndarray, rule: str | float = "youden") -> tuple[float, str]:
    """The decision threshold on the positive probability, and how it was chosen.

    ``youden``: maximise sensitivity + specificity - 1. ``sensitivity=S``: the highest threshold whose
    sensitivity reaches S (the most specific rule-out test that misses at most 1 - S of the positives).
    ``specificity=S``: the lowest threshold whose specificity reaches S. A number: used as it is.

    >>> tune_threshold(np.array([0, 0, 1, 1]), np.array([.1, .3, .6, .8]))
    (0.45, 'youden on validation')
    """
    rule = parse_threshold_rule(rule)
    if isinstance(rule, float):
        return rule, "given"
    y = np.asarray(y_pos).astype(bool)
    p = np.asarray(p_pos, dtype=np.float64)
    if y.all() or not y.any():
        return 0.5, "0.5 (validation has one class only)"
    cuts = np.unique(p)
    # candidate thresholds half-way between neighbouring scores, plus both ends
    cand = np.concatenate([[cuts[0] - 1e-6], (cuts[1:] + cuts[:-1]) / 2, [cuts[-1] + 1e-6]])
    pred = p[None, :] >= cand[:, None]
    sens = (pred & y).sum(1) / y.sum()
    spec = (~pred & ~y).sum(1) / (~y).sum()
    if rule == "youden":
        j = sens + spec - 1
        best = np.flatnonzero(j >= j.max() - 1e-12)
        i = best[len(best) // 2]  # the middle of a plateau of equally good thresholds
        return round(float(np.clip(cand[i], 0.0, 1.0)), 6), "youden on validation"
    kind, target = rule.split("=")
    target_f = float(target)
    if kind == "sensitivity":
        ok = np.flatnonzero(sens >= target_f - 1e-12)
        i = ok.max()
    else:
        ok = np.flatnonzero(spec >= target_f - 1e-12)
        i = ok.min() if len(ok) else len(cand) - 1
    return round(float(np.clip(cand[i], 0.0, 1.0)), 6), f"{kind} >= {target_f:g} on validation"


def wilson(k: int, n: int, z: float = 1.96) -> list[float] | None:
    """95% Wilson score interval for the proportion k/n (None when n = 0).

    >>> [round(x, 3) for x in wilson(9, 10)]
    [0.596, 0.982]
    """
    if n == 0:
        return None
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # at k = 0 or k = n the bound is exactly 0 or 1; rounding must not put it on the wrong side of p
    lo = 0.0 if k == 0 else float(max(0.0, centre - half))
    hi = 1.0 if k == n else float(min(1.0, centre + half))
    return [lo, hi]


def auroc(y_pos: np.ndarray, p_pos: np.ndarray) -> float | None:
    """Area under the ROC curve (the Mann-Whitney statistic, ties counted half); None with one class only."""
    from scipy.stats import rankdata

    y = np.asarray(y_pos).astype(bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return None
    ranks = rankdata(np.asarray(p_pos, dtype=np.float64))
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def auroc_interval(y_pos: np.ndarray, p_pos: np.ndarray, n_boot: int = 1000, seed: int = 0,
                   chunk: int = 50) -> list[float] | None:
    """95% percentile interval of AUROC over bootstrap resamples drawn within each class (so every resample has
    the observed prevalence). Each resample's AUROC comes from ranks, ``chunk`` resamples at a time: memory grows
    with the number of images, not with positives x negatives."""
    from scipy.stats import rankdata

    y = np.asarray(y_pos).astype(bool)
    p = np.asarray(p_pos, dtype=np.float64)
    pos, neg = p[y], p[~y]
    n1, n0 = len(pos), len(neg)
    if n1 < 2 or n0 < 2:
        return None
    rng = np.random.default_rng(seed)
    stats = []
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        a = pos[rng.integers(0, n1, (k, n1))]
        b = neg[rng.integers(0, n0, (k, n0))]
        ranks = rankdata(np.concatenate([a, b], axis=1), axis=1)  # ties share their average rank
        stats.append((ranks[:, :n1].sum(1) - n1 * (n1 + 1) / 2) / (n1 * n0))
    stats = np.concatenate(stats)
    return [float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))]


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE: the gap between confidence and accuracy, averaged over ``bins`` equal-width confidence bins
    weighted by how many predictions fall in each.

    >>> round(expected_calibration_error(np.array([0, 0, 1, 1]), np.array([[.9, .1], [.6, .4], [.3, .7], [.2, .8]])), 3)
    0.25
    """
    probs = np.asarray(probs, dtype=np.float64)
    conf = probs.max(1)
    right = (probs.argmax(1) == np.asarray(y_true)).astype(np.float64)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            ece += m.mean() * abs(right[m].mean() - conf[m].mean())
    return float(ece)


# below this many validation examples of some class, calibrating did more harm than good on ELPV (test ECE
# 0.034 -> 0.089 with 3 defective validation cells, 0.036 -> 0.052 with 10; with 28: 0.031 -> 0.025 for the probe,
# 0.066 -> 0.030 fine-tuned)
MIN_PER_CLASS_FOR_TEMPERATURE = 20


def fit_temperature(probs: np.ndarray, y_true: np.ndarray, min_per_class: int = MIN_PER_CLASS_FOR_TEMPERATURE) -> float:
    """Temperature scaling (Guo et al. 2017): the T > 0 minimising the validation log-loss of softmax(log p / T).

    One parameter, so it changes how confident the model is, never which class it ranks first. When validation
    holds no mistake, nothing shows the model should be surer than it is, so T stays at 1 or above (otherwise a
    perfectly separated validation set drives T towards 0 and every probability to 0 or 1). With fewer than
    ``min_per_class`` validation examples of some class the fit is noise (measured on ELPV, see
    :data:`MIN_PER_CLASS_FOR_TEMPERATURE`), so T stays 1.
    """
    from scipy.optimize import minimize_scalar

    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0))
    y = np.asarray(y_true)
    counts = np.bincount(y, minlength=logp.shape[1]) if len(y) else np.zeros(logp.shape[1], dtype=int)
    if len(y) == 0 or (counts > 0).sum() < 2 or counts.min() < min_per_class:
        return 1.0

    def nll(log_t: float) -> float:
        z = logp / np.exp(log_t)
        z = z - z.max(1, keepdims=True)
        return float(-(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(1))).mean())

    lowest = 1.0 if (logp.argmax(1) == y).all() else 0.05
    res = minimize_scalar(nll, bounds=(np.log(lowest), np.log(20.0)), method="bounded")
    t = float(np.exp(res.x))
    return t if nll(np.log(t)) < nll(0.0) else 1.0


def correct_prior(probs: np.ndarray, class_weights: list[float] | None) -> np.ndarray:
    """Undo what class weights (or balanced sampling) did to the probabilities: training with weight w_c makes
    the model's p(c | x) about w_c times too high, before normalisation (the optimum of a weighted log-loss is
    proportional to w_c p(c | x)). Dividing by w_c restores the training prevalence."""
    if class_weights is None:
        return np.asarray(probs)
    p = np.asarray(probs, dtype=np.float64) / np.asarray(class_weights, dtype=np.float64)[None, :]
    return (p / p.sum(1, keepdims=True)).astype(np.asarray(probs).dtype)


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): the same ranking, softer (T > 1) or sharper (T < 1) probabilities."""
    if temperature == 1.0:
        return np.asarray(probs)
    z = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)) / temperature
    z = np.exp(z - z.max(1, keepdims=True))
    return (z / z.sum(1, keepdims=True)).astype(np.asarray(probs).dtype)


def binary_scores(y_pos: np.ndarray, p_pos: np.ndarray, threshold: float) -> dict[str, Any]:
    """Sensitivity, specificity, PPV, NPV (with Wilson intervals) and balanced accuracy at ``threshold``."""
    y = np.asarray(y_pos).astype(bool)
    pred = np.asarray(p_pos) >= threshold
    tp, fn = int((pred & y).sum()), int((~pred & y).sum())
    tn, fp = int((~pred & ~y).sum()), int((pred & ~y).sum())

    def ratio(k: int, n: int) -> float | None:
        return k / n if n else None

    sens, spec = ratio(tp, tp + fn), ratio(tn, tn + fp)
    return {
        "threshold": float(threshold),
        "sensitivity": sens, "sensitivity_ci": wilson(tp, tp + fn),
        "specificity": spec, "specificity_ci": wilson(tn, tn + fp),
        "ppv": ratio(tp, tp + fp), "ppv_ci": wilson(tp, tp + fp),
        "npv": ratio(tn, tn + fn), "npv_ci": wilson(tn, tn + fn),
        "balanced_accuracy": (sens + spec) / 2 if sens is not None and spec is not None else None,
        "tp": tp, "fn": fn, "tn": tn, "fp": fp,
    }


def clinical_metrics(y_true: np.ndarray, probs: np.ndarray, classes: list[str], positive: str | None = None,
                     threshold: float = 0.5, seed: int = 0) -> dict[str, Any]:
    """Binary (``positive`` given): AUROC with its interval, average precision, prevalence, the scores of
    :func:`binary_scores` at ``threshold`` and at 0.5, ECE and Brier score. Three or more classes: macro
    one-vs-rest AUROC, per class AUROC / sensitivity / specificity at the top-ranked class, balanced accuracy, ECE.
    """
    y = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    out: dict[str, Any] = {"n": int(len(y)), "ece": expected_calibration_error(y, probs)}
    if positive is not None:
        k = classes.index(positive)
        y_pos, p_pos = y == k, probs[:, k]
        from sklearn.metrics import average_precision_score

        out |= {
            "positive": positive, "prevalence": float(y_pos.mean()) if len(y) else None,
            "auroc": auroc(y_pos, p_pos), "auroc_ci": auroc_interval(y_pos, p_pos, seed=seed),
            "average_precision": float(average_precision_score(y_pos, p_pos)) if 0 < y_pos.sum() < len(y) else None,
            "brier": float(np.mean((p_pos - y_pos) ** 2)) if len(y) else None,
            **binary_scores(y_pos, p_pos, threshold),
            "at_0.5": {k2: v for k2, v in binary_scores(y_pos, p_pos, 0.5).items() if not k2.endswith("_ci")},
        }
        return out
    pred = probs.argmax(1)
    per_class = {}
    for k, c in enumerate(classes):
        yk, pk = y == k, pred == k
        per_class[c] = {
            "auroc": auroc(yk, probs[:, k]),
            "sensitivity": float((pk & yk).sum() / yk.sum()) if yk.any() else None,
            "specificity": float((~pk & ~yk).sum() / (~yk).sum()) if (~yk).any() else None,
            "support": int(yk.sum()),
        }
    aucs = [v["auroc"] for v in per_class.values() if v["auroc"] is not None]
    recalls = [v["sensitivity"] for v in per_class.values() if v["sensitivity"] is not None]
    out |= {"auroc_macro": float(np.mean(aucs)) if aucs else None,
            "balanced_accuracy": float(np.mean(recalls)) if recalls else None, "per_class": per_class}
    return out


def roc_png(y_true: np.ndarray, probs: np.ndarray, classes: list[str], positive: str | None, threshold: float,
            path, probs_uncalibrated: np.ndarray | None = None, title: str = "ROC") -> None:
    """ROC curve (one-vs-rest per class for 3+ classes) with the operating point marked, beside a reliability
    diagram (confidence vs accuracy, before and after calibration)."""
    from sklearn.metrics import roc_curve

    from .plots import pyplot, save_figure

    plt = pyplot()
    y = np.asarray(y_true)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.4))
    ax1.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--")
    targets = [positive] if positive is not None else classes
    for c in targets:
        k = classes.index(c)
        yk = y == k
        if yk.all() or not yk.any():
            continue
        fpr, tpr, _ = roc_curve(yk, probs[:, k])
        ax1.plot(fpr, tpr, lw=2 if positive else 1.2, label=f"{c} (AUROC {auroc(yk, probs[:, k]):.3f})")
    if positive is not None:
        s = binary_scores(y == classes.index(positive), probs[:, classes.index(positive)], threshold)
        if s["sensitivity"] is not None and s["specificity"] is not None:
            ax1.plot(1 - s["specificity"], s["sensitivity"], "o", color="crimson", ms=8,
                     label=f"threshold {threshold:.3f}: sens {s['sensitivity']:.2f}, spec {s['specificity']:.2f}")
    ax1.set_xlabel("1 - specificity (false positive rate)")
    ax1.set_ylabel("sensitivity (true positive rate)")
    ax1.set_xlim(-0.01, 1.01)
    ax1.set_ylim(-0.01, 1.01)
    ax1.legend(loc="lower right", fontsize=8)
    ax1.set_title(title)
    ax2.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--")
    for label, p in (("before calibration", probs_uncalibrated), ("calibrated", probs)):
        if p is None:
            continue
        conf, right = p.max(1), (p.argmax(1) == y)
        edges = np.linspace(0, 1, 11)
        which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, 9)
        xs = [conf[which == b].mean() for b in range(10) if (which == b).any()]
        ys = [right[which == b].mean() for b in range(10) if (which == b).any()]
        ax2.plot(xs, ys, marker="o", ms=4, label=f"{label} (ECE {expected_calibration_error(y, p):.3f})")
    ax2.set_xlabel("confidence")
    ax2.set_ylabel("accuracy")
    ax2.set_xlim(0, 1.01)
    ax2.set_ylim(0, 1.01)
    ax2.legend(loc="upper left", fontsize=8)
    ax2.set_title("Reliability")
    save_figure(fig, path)
