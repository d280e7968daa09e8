"""Transferability scores: how well a frozen backbone's features (or its source classifier's outputs) suit a
target task, computed in seconds from features, before any fine-tuning. Higher is better for every score.

Each is a small scikit-learn-style estimator: ``Score().fit(X, y)`` sets ``score_``.

==========  ====================================================================================  ==============
LogME       log marginal evidence of a Bayesian linear model from features to one-hot labels, per  You et al. 2021
            example, averaged over classes (maximised over its two precisions)
LEEP        log expected empirical prediction: the target labels predicted through the source      Nguyen et al. 2020
            classifier's soft outputs and an empirical P(target | source class)
NCE         negative conditional entropy of target labels given the source classifier's hard        Tran et al. 2019
            predictions
H-score     tr(cov(f)^-1 cov(E[f | y])): between-class spread of the features relative to their     Bao et al. 2019
            whole spread (covariance shrunk Ledoit-Wolf style for small samples)
k-NN        leave-one-out accuracy of a k-nearest-neighbour vote on cosine similarity
==========  ====================================================================================  ==============

LEEP and NCE take ``X`` = the source classifier's probabilities (e.g. ImageNet's 1000 classes), the others take
pooled features.
"""

from __future__ import annotations

import numpy as np


def _labels(y: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels -> indices 0..K-1 (in sorted order of the values) and K."""
    values, idx = np.unique(np.asarray(y), return_inverse=True)
    return idx.astype(np.int64), len(values)


class LogME:
    """LogME: for each class c, the evidence p(y_c | F) of y_c = F w + noise with w ~ N(0, 1/alpha), noise
    precision beta, both maximised by fixed-point iteration (MacKay's updates, solved in the SVD basis of F);
    ``score_`` is the mean over classes of log-evidence / N. ``y``: class labels, or (N, K) 0/1 multi-label rows,
    whose columns are the targets y_c as they are (LogME regresses one-hot columns; a multi-hot one is no different).

    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 50)
    >>> good = np.c_[y + rng.normal(0, .1, 100), rng.normal(size=(100, 3))]
    >>> LogME().fit(good, y).score_ > LogME().fit(rng.normal(size=(100, 4)), y).score_
    True
    """

    def __init__(self, max_iter: int = 100, tol: float = 1e-4):
        self.max_iter = max_iter
        self.tol = tol

    def fit(self, X: np.ndarray, y: np.ndarray) -> LogME:
        F = np.asarray(X, dtype=np.float64)
        y = np.asarray(y)
        if y.ndim == 2:
            columns = y.astype(np.float64)
        else:
            idx, k = _labels(y)
            columns = (idx[:, None] == np.arange(k)[None, :]).astype(np.float64)
        k = columns.shape[1]
        n, d = F.shape
        u, s, _ = np.linalg.svd(F, full_matrices=False)
        keep = s > s.max() * 1e-10 if s.size else s > 0
        u, s = u[:, keep], s[keep]
        sigma = s**2
        r = len(s)
        evidences, alphas, betas = [], [], []
        for c in range(k):
            t = columns[:, c]
            z = u.T @ t
            outside = max(float(t @ t - z @ z), 0.0)  # the part of t no feature direction can reach
            alpha, beta = 1.0, 1.0
            for _ in range(self.max_iter):
                denom = alpha + beta * sigma
                gamma = float((beta * sigma / denom).sum())
                m = beta * s * z / denom  # posterior mean, in the SVD basis
                m2 = float(m @ m)
                res2 = float(((s * m - z) ** 2).sum()) + outside
                new_alpha = gamma / max(m2, 1e-12)
                new_beta = (n - gamma) / max(res2, 1e-12)
                done = abs(new_alpha - alpha) / alpha < self.tol and abs(new_beta - beta) / beta < self.tol
                alpha, beta = new_alpha, new_beta
                if done:
                    break
            denom = alpha + beta * sigma
            m = beta * s * z / denom
            m2 = float(m @ m)
            res2 = float(((s * m - z) ** 2).sum()) + outside
            log_det = float(np.log(denom).sum()) + (d - r) * np.log(alpha)
            evidence = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - n / 2 * np.log(2 * np.pi)
                        - beta / 2 * res2 - alpha / 2 * m2 - log_det / 2)
            evidences.append(evidence / n)
            alphas.append(alpha)
            betas.append(beta)
        self.evidence_ = np.asarray(evidences)
        self.alpha_, self.beta_ = np.asarray(alphas), np.asarray(betas)
        self.score_ = float(self.evidence_.mean())
        return self


class LEEP:
    """LEEP: with theta(x) the source classifier's probabilities over Z source classes, the empirical joint
    P(y, z) = mean over examples of theta(x)_z [y_i = y] gives P(y | z); ``score_`` = mean over examples of
    log sum_z P(y_i | z) theta(x_i)_z. At most 0; 0 when the source classes determine the target.

    >>> theta = np.array([[1., 0.], [1., 0.], [0., 1.], [0., 1.]])
    >>> round(LEEP().fit(theta, [0, 0, 1, 1]).score_, 6)
    0.0
    """

    def fit(self, X: np.ndarray, y: np.ndarray) -> LEEP:
        theta = np.asarray(X, dtype=np.float64)
        idx, k = _labels(y)
        n = len(idx)
        joint = np.zeros((k, theta.shape[1]))
        np.add.at(joint, idx, theta)
        joint /= n
        cond = joint / np.clip(joint.sum(0, keepdims=True), 1e-300, None)  # P(y | z)
        eep = (theta * cond[idx]).sum(1)
        self.score_ = float(np.mean(np.log(np.clip(eep, 1e-300, None))))
        return self


class NCE:
    """NCE: -H(Y | Z) with Z the source classifier's top class (``X``: its probabilities, or class indices).
    At most 0; 0 when each source class maps to one target class.

    >>> round(NCE().fit(np.array([0, 0, 1, 1]), [0, 1, 1, 1]).score_, 4)   # z=0 splits y evenly: -log(2)/2
    -0.3466
    """

    def fit(self, X: np.ndarray, y: np.ndarray) -> NCE:
        X = np.asarray(X)
        z = X.argmax(1) if X.ndim == 2 else X.astype(np.int64)
        idx, k = _labels(y)
        _, z = np.unique(z, return_inverse=True)
        joint = np.zeros((k, int(z.max()) + 1))
        np.add.at(joint, (idx, z), 1.0)
        joint /= len(idx)
        pz = joint.sum(0, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(joint > 0, joint * np.log(joint / pz), 0.0)
        self.score_ = float(terms.sum())
        return self


class HScore:
    """H-score: tr(cov(f)^-1 cov(E[f | y])). The feature covariance is shrunk towards a scaled identity (its mean
    variance times I; ``shrinkage`` = that share, default the Ledoit-Wolf estimate), since with a few hundred
    examples and hundreds of dimensions the plain inverse is dominated by noise.

    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 50)
    >>> HScore().fit(np.c_[3.0 * y, np.zeros(100)] + rng.normal(size=(100, 2)), y).score_ > 0.5
    True
    """

    def __init__(self, shrinkage: float | None = None):
        self.shrinkage = shrinkage

    def fit(self, X: np.ndarray, y: np.ndarray) -> HScore:
        F = np.asarray(X, dtype=np.float64)
        F = F - F.mean(0)
        idx, k = _labels(y)
        if self.shrinkage is None:
            from sklearn.covariance import ledoit_wolf

            cov, shrink = ledoit_wolf(F, assume_centered=True)
            self.shrinkage_ = float(shrink)
        else:
            self.shrinkage_ = float(self.shrinkage)
            emp = F.T @ F / len(F)
            mu = np.trace(emp) / emp.shape[0]
            cov = (1 - self.shrinkage_) * emp + self.shrinkage_ * mu * np.eye(emp.shape[0])
        means = np.zeros((k, F.shape[1]))
        np.add.at(means, idx, F)
        means /= np.bincount(idx, minlength=k)[:, None]
        g = means[idx]  # each example replaced by its class mean
        between = g.T @ g / len(F)
        self.score_ = float(np.trace(np.linalg.pinv(cov, hermitian=True) @ between))
        return self


class KNNAccuracy:
    """Leave-one-out accuracy of a ``k``-nearest-neighbour majority vote on cosine similarity (ties go to the
    nearer neighbour's class).

    >>> KNNAccuracy(k=1).fit(np.array([[1., 0], [.9, .1], [0, 1], [.1, .9]]), [0, 0, 1, 1]).score_
    1.0
    """

    def __init__(self, k: int = 5):
        self.k = k

    def fit(self, X: np.ndarray, y: np.ndarray) -> KNNAccuracy:
        F = np.asarray(X, dtype=np.float64)
        F = F / np.clip(np.linalg.norm(F, axis=1, keepdims=True), 1e-12, None)
        idx, n_classes = _labels(y)
        n = len(F)
        k = max(1, min(self.k, n - 1))
        right = 0
        for start in range(0, n, 1024):  # similarity rows in blocks: memory grows with n, not n^2
            sim = F[start:start + 1024] @ F.T
            rows = np.arange(sim.shape[0])
            sim[rows, start + rows] = -np.inf  # leave the example itself out
            nearest = np.argsort(-sim, axis=1)[:, :k]
            for i, nb in enumerate(nearest):
                votes = np.zeros(n_classes)
                for rank, j in enumerate(nb):
                    votes[idx[j]] += 1 + 1e-6 * (k - rank)  # ties: the nearer neighbours win
                right += int(votes.argmax() == idx[start + i])
        self.score_ = right / n
        return self


SCORES = {"logme": LogME, "leep": LEEP, "nce": NCE, "hscore": HScore, "knn": KNNAccuracy}
