"""The linear probe as an estimator: standardised features -> logistic regression (L-BFGS, L2), its strength C
chosen by stratified k-fold cross-validation, then refitted on every labelled example.

This is the recipe a practitioner writes with scikit-learn (``StandardScaler`` + ``LogisticRegression``, C by
cross-validation), and scikit-learn fits it: on a few hundred cached feature vectors the convex problem is solved
exactly in well under a second, where a gradient optimiser with early stopping on a small validation split left
6-17 points on the table (issue 16). The fitted probe becomes an ordinary :class:`LinearHead` (the
standardisation folded into its weights), so bundles, fine-tuning from the probe (LP-FT) and export see a plain
linear layer.

Examples:

    >>> probe = LogisticProbe(cv=5, seed=0).fit(features, labels)      # features (N, D), labels (N,) ints
    >>> probe.C_, probe.predict_proba(features[:3])
    >>> head = probe.to_head()                                          # LinearHead on the raw features
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..data.folds import cross_val_folds, fold_strata, label_strata
from .linear import LinearHead

# multi-label class weights: a rare label's positives weigh at most this much (a label on 2 of 500 examples would
# otherwise weigh 249), a common one's at least as much as its negatives
MAX_POSITIVE_WEIGHT = 10.0
# half-decade steps over the range where standardised image/text/audio features land (measured: Fashion-MNIST,
# BBC News, ELPV and spoken digits choose 1e-3 to 1e-1)
DEFAULT_CS: tuple[float, ...] = tuple(float(c) for c in np.logspace(-4, 2, 13))
IMBALANCE_RATIO = 1.5  # "auto" class weights: the largest class at least this many times the smallest


class LogisticProbe:
    """Standardise, then multinomial logistic regression (one-vs-rest for multi-label targets) with C by CV.

    Args:
        Cs: inverse L2 strengths to try (one value: no cross-validation).
        cv: folds for choosing C (stratified by class, seeded; cut to the examples there are).
        scoring: ``"log_loss"`` (smooth, so it separates Cs even on a handful of validation examples) or
            ``"accuracy"``; ties go to the smaller C (the stronger regularisation).
        class_weight: ``"auto"`` (balanced when the largest class has 1.5x the examples of the smallest, else
            none), ``"balanced"``, or ``None``.
        seed: fold shuffling.
        groups: with ``fit``, examples that must stay in one fold (patients); passed to :meth:`fit`.

    Learned attributes: ``C_``, ``coef_`` (K, D) and ``intercept_`` (K,) on standardised features, ``mean_``,
    ``scale_``, ``cv_scores_`` ({C: mean fold score}), ``class_weight_`` (the weights used, or None),
    ``multi_label_``.
    """

    def __init__(self, Cs: Sequence[float] = DEFAULT_CS, cv: int = 5, scoring: str = "log_loss",
                 class_weight: str | None = "auto", seed: int = 0, max_iter: int = 2000):
        if scoring not in ("log_loss", "accuracy"):
            raise ValueError(f"scoring must be log_loss or accuracy, not {scoring!r}")
        self.Cs, self.cv, self.scoring, self.class_weight = tuple(Cs), cv, scoring, class_weight
        self.seed, self.max_iter = seed, max_iter

    # ------------------------------------------------------------------------------------------------ fitting
    def fit(self, X: Any, y: Any, num_classes: int | None = None, groups: Sequence | None = None) -> LogisticProbe:
        """Choose C by cross-validation on ``(X, y)`` and refit on all of it. ``y``: (N,) class indices, or (N, K)
        0/1 for multi-label. ``num_classes`` keeps classes absent from ``y`` (they get probability ~0)."""
        import sklearn.linear_model  # noqa: F401  scipy's own BLAS loads on this import: the limit must see it
        from threadpoolctl import threadpool_limits

        # one BLAS thread: these matrices are a few hundred rows wide, and threads that wait on each other made the
        # same fits 5x slower on 2 busy cores (measured)
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        # at the largest Cs, nearly separable features converge slowly; those Cs rarely win, and their last
        # iterate is still a fair candidate for cross-validation to judge
        with threadpool_limits(1), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return self._fit(X, y, num_classes, groups)

    def _fit(self, X: Any, y: Any, num_classes: int | None, groups: Sequence | None) -> LogisticProbe:
        X = _array(X)
        y = _array(y)
        self.multi_label_ = y.ndim == 2
        k = y.shape[1] if self.multi_label_ else int(num_classes or (int(y.max()) + 1))
        self.num_classes_ = k
        self.class_weight_ = self._weights(y, k)
        self.cv_scores_: dict[float, float] = {}
        strata = label_strata(y)
        can_cv = len(self.Cs) > 1 and len(y) >= 4 and len(set(strata)) > 1
        if can_cv:
            folds = cross_val_folds(fold_strata(y), self.cv, self.seed, groups)  # multi-label: iterative
            totals = np.zeros(len(self.Cs))
            for tr, va in folds:
                mean, scale = _standardiser(X[tr])
                z_tr, z_va = (X[tr] - mean) / scale, (X[va] - mean) / scale
                for j, probs in enumerate(self._path(z_tr, y[tr], k, z_va)):
                    totals[j] += _fold_score(probs, y[va], self.scoring) * len(va)
            scores = totals / len(y)
            self.cv_scores_ = {c: float(s) for c, s in zip(self.Cs, scores, strict=True)}
            best = float(np.max(scores))
            self.C_ = min(c for c, s in zip(self.Cs, scores, strict=True) if s >= best - 1e-12)
        else:
            self.C_ = self.Cs[len(self.Cs) // 2] if len(self.Cs) > 1 else self.Cs[0]
        self.mean_, self.scale_ = _standardiser(X)
        z = (X - self.mean_) / self.scale_
        self.coef_, self.intercept_ = self._fit_one(z, y, k, self.C_)
        return self

    def _weights(self, y: np.ndarray, k: int) -> np.ndarray | None:
        if self.class_weight is None:
            return None
        counts = y.sum(0) if y.ndim == 2 else np.bincount(y, minlength=k)
        present = counts[counts > 0]
        if self.class_weight == "auto" and present.max() < IMBALANCE_RATIO * present.min():
            return None
        if self.class_weight not in ("auto", "balanced"):
            raise ValueError(f"class_weight must be auto, balanced or None, not {self.class_weight!r}")
        if y.ndim == 2:  # per label: positives weighed against that label's negatives, within 1 to 10
            return np.clip(np.where(counts > 0, (len(y) - counts) / np.maximum(counts, 1), 1.0), 1.0,
                           MAX_POSITIVE_WEIGHT)
        return np.where(counts > 0, counts.sum() / (len(present) * np.maximum(counts, 1)), 0.0)

    def _path(self, z: np.ndarray, y: np.ndarray, k: int, z_val: np.ndarray):
        """Validation probabilities for every C, each fit warm-started from the previous (smaller) C."""
        if z.shape[1] > z.shape[0]:  # project once per fold (see _fit_raw)
            basis = _row_basis(z)
            z, z_val = z @ basis, z_val @ basis
        warm = None
        for c in self.Cs:
            coef, intercept, warm = self._fit_raw(z, y, k, c, warm)
            yield _probs(z_val @ coef.T + intercept, self.multi_label_)

    def _fit_one(self, z: np.ndarray, y: np.ndarray, k: int, c: float) -> tuple[np.ndarray, np.ndarray]:
        coef, intercept, _ = self._fit_raw(z, y, k, c, None)
        return coef, intercept

    def _fit_raw(self, z, y, k, c, warm):
        """Full (k, D) weights for one C; ``warm`` carries the solver state between Cs.

        With more feature dimensions than examples (1,280-d features, a hundred labels), the L2 solution lies in
        the span of the examples: with ``z = U S V^T``, ``w = V b`` and ``|w| = |b|``, so fitting on ``z V`` (N
        columns instead of D) gives exactly the same logits and penalty, at a fraction of the cost."""
        if z.shape[1] > z.shape[0]:
            basis = _row_basis(z)
            coef, intercept, warm = self._fit_raw(z @ basis, y, k, c, warm)
            return coef @ basis.T, intercept, warm
        if self.multi_label_:
            warm = warm or [None] * k
            rows, biases = [], []
            for j in range(k):
                w = None if self.class_weight_ is None else {0: 1.0, 1: float(self.class_weight_[j])}
                coef, b, warm[j] = _binary(z, y[:, j].astype(int), c, w, self.max_iter, warm[j])
                rows.append(coef)
                biases.append(b)
            return np.stack(rows), np.array(biases), warm
        present = np.unique(y)
        if len(present) == 1:  # one class only in this fold: it always wins
            coef, intercept = np.zeros((k, z.shape[1])), np.full(k, -30.0)
            intercept[present[0]] = 0.0
            return coef, intercept, None
        lr = _lbfgs(c, self.max_iter, warm)
        sw = None if self.class_weight_ is None else self.class_weight_[y]
        lr.fit(z, y, sample_weight=sw)
        coef, intercept = np.zeros((k, z.shape[1])), np.full(k, -30.0)  # an absent class: probability ~0
        if len(present) == 2:  # scikit-learn keeps one row for two classes: logits (0, w.x + b) give the same softmax
            coef[present[1]], intercept[present[1]], intercept[present[0]] = lr.coef_[0], lr.intercept_[0], 0.0
        else:
            coef[present], intercept[present] = lr.coef_, lr.intercept_
        return coef, intercept, lr

    # ------------------------------------------------------------------------------------------------ use
    def decision_function(self, X: Any) -> np.ndarray:
        z = (_array(X) - self.mean_) / self.scale_
        return z @ self.coef_.T + self.intercept_

    def predict_proba(self, X: Any) -> np.ndarray:
        """(N, K) class probabilities (softmax), or per-label probabilities (sigmoid) for multi-label."""
        return _probs(self.decision_function(X), self.multi_label_)

    def predict(self, X: Any) -> np.ndarray:
        p = self.predict_proba(X)
        return (p >= 0.5).astype(int) if self.multi_label_ else p.argmax(1)

    def to_head(self) -> LinearHead:
        """A :class:`LinearHead` on the raw features whose logits equal :meth:`decision_function` (float32)."""
        import torch

        w = self.coef_ / self.scale_
        b = self.intercept_ - w @ self.mean_
        head = LinearHead(len(self.mean_), self.num_classes_)
        with torch.no_grad():
            head.fc.weight.copy_(torch.from_numpy(w).float())
            head.fc.bias.copy_(torch.from_numpy(b).float())
        return head

    def summary(self) -> dict[str, Any]:
        """What the report and metrics keep of the fit."""
        return {"C": self.C_, "cv_folds": self.cv, "scoring": self.scoring,
                "cv_scores": {f"{c:.3g}": round(s, 5) for c, s in self.cv_scores_.items()},
                "class_weight": None if self.class_weight_ is None
                else [round(float(w), 4) for w in self.class_weight_]}


def _array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    return x.astype(np.float64) if x.dtype.kind == "f" else x


def _standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(0)
    scale = x.std(0)  # population std, as StandardScaler
    return mean, np.where(scale > 1e-12, scale, 1.0)


def _row_basis(z: np.ndarray) -> np.ndarray:
    """(D, r) orthonormal basis of the rows' span (r = rank <= N), from the N x N Gram matrix (cheaper than an
    SVD of the N x D matrix when N << D)."""
    vals, vecs = np.linalg.eigh(z @ z.T)
    keep = vals > max(vals.max(), 1e-300) * 1e-10
    basis = z.T @ (vecs[:, keep] / np.sqrt(vals[keep]))
    return basis if basis.shape[1] else np.zeros((z.shape[1], 1))


def _lbfgs(c: float, max_iter: int, warm):
    from sklearn.linear_model import LogisticRegression

    if warm is not None:
        warm.set_params(C=c)
        return warm
    return LogisticRegression(C=c, solver="lbfgs", max_iter=max_iter, tol=1e-6, warm_start=True)


def _binary(z, y, c, weight, max_iter, warm):
    """One label of a multi-label probe: coef (D,), bias, and the solver (for warm starts)."""
    if y.min() == y.max():  # a label that is always (never) on in this fold
        return np.zeros(z.shape[1]), (30.0 if y[0] else -30.0), None
    lr = _lbfgs(c, max_iter, warm)
    lr.set_params(class_weight=weight)
    lr.fit(z, y)
    return lr.coef_[0], float(lr.intercept_[0]), lr


def _probs(logits: np.ndarray, multi_label: bool) -> np.ndarray:
    if multi_label:
        return 1.0 / (1.0 + np.exp(-np.clip(logits, -50, 50)))
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def _fold_score(probs: np.ndarray, y: np.ndarray, scoring: str) -> float:
    """Higher is better: minus the mean log loss, or accuracy (multi-label: per-label, averaged)."""
    eps = 1e-15
    if y.ndim == 2:
        if scoring == "accuracy":
            return float(((probs >= 0.5) == (y > 0.5)).mean())
        p = np.clip(probs, eps, 1 - eps)
        return float(np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    if scoring == "accuracy":
        return float((probs.argmax(1) == y).mean())
    return float(np.mean(np.log(np.clip(probs[np.arange(len(y)), y], eps, 1.0))))
