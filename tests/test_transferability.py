"""Transferability scores against direct computations from their definitions."""

from __future__ import annotations

import numpy as np
import pytest

from transferkit.evaluation.transferability import LEEP, NCE, HScore, KNNAccuracy, LogME


def _log_gauss(t: np.ndarray, cov: np.ndarray) -> float:
    sign, logdet = np.linalg.slogdet(cov)
    return float(-0.5 * (t @ np.linalg.solve(cov, t) + logdet + len(t) * np.log(2 * np.pi)))


def test_logme_is_the_maximised_evidence_of_bayesian_linear_regression():
    rng = np.random.default_rng(0)
    F = rng.normal(size=(40, 6))
    y = (F[:, 0] + 0.5 * rng.normal(size=40) > 0).astype(int)
    est = LogME().fit(F, y)
    for c in (0, 1):
        t = (y == c).astype(float)
        a, b = est.alpha_[c], est.beta_[c]

        def evidence(alpha, beta):  # y ~ N(0, I / beta + F F^T / alpha), written out directly
            return _log_gauss(t, np.eye(40) / beta + F @ F.T / alpha) / 40

        assert est.evidence_[c] == pytest.approx(evidence(a, b), abs=1e-8)
        for fa, fb in ((1.3, 1), (0.7, 1), (1, 1.3), (1, 0.7)):  # a maximum: every nearby precision is worse
            assert evidence(a * fa, b * fb) < evidence(a, b)
    assert est.score_ == pytest.approx(est.evidence_.mean())


def test_logme_with_more_dimensions_than_examples_and_ranking():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], 10)
    noise = rng.normal(size=(30, 100))
    informative = noise.copy()
    informative[:, :3] += 3 * np.eye(3)[y]
    assert LogME().fit(informative, y).score_ > LogME().fit(noise, y).score_
    assert np.isfinite(LogME().fit(noise, y).score_)


def test_leep_against_its_definition():
    rng = np.random.default_rng(2)
    theta = rng.dirichlet(np.ones(5), size=30)
    y = rng.integers(0, 3, 30)
    joint = np.array([[theta[y == a, z].sum() / 30 for z in range(5)] for a in range(3)])
    cond = joint / joint.sum(0)
    expected = np.mean([np.log(sum(cond[y[i], z] * theta[i, z] for z in range(5))) for i in range(30)])
    assert LEEP().fit(theta, y).score_ == pytest.approx(expected)
    assert LEEP().fit(theta, y).score_ <= 0


def test_nce_and_hscore_pinned():
    assert NCE().fit(np.array([0, 0, 1, 1]), ["a", "b", "b", "b"]).score_ == pytest.approx(-np.log(2) / 2)
    assert NCE().fit(np.array([3, 3, 7, 7]), ["a", "a", "b", "b"]).score_ == 0.0
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9]])
    assert NCE().fit(probs, [0, 0, 1, 1]).score_ == 0.0  # probabilities: their top class
    # H-score without shrinkage: tr(cov^-1 cov_between) written out
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1], 20)
    F = rng.normal(size=(40, 3)) + np.c_[2.0 * y, np.zeros((40, 2))]
    Fc = F - F.mean(0)
    g = np.stack([Fc[y == c].mean(0) for c in (0, 1)])[y]
    expected = np.trace(np.linalg.inv(Fc.T @ Fc / 40) @ (g.T @ g / 40))
    assert HScore(shrinkage=0.0).fit(F, y).score_ == pytest.approx(expected)
    from sklearn.covariance import ledoit_wolf

    est = HScore().fit(F, y)
    assert est.shrinkage_ == pytest.approx(ledoit_wolf(Fc, assume_centered=True)[1])
    assert est.score_ == pytest.approx(HScore(shrinkage=est.shrinkage_).fit(F, y).score_)
    assert HScore(shrinkage=1.0).fit(F, y).score_ == pytest.approx(np.trace(g.T @ g / 40) / np.trace(Fc.T @ Fc / 120))


def test_knn_leave_one_out():
    F = np.array([[1.0, 0.0], [0.95, 0.05], [0.9, 0.1], [0.0, 1.0], [0.05, 0.95], [0.7, 0.3]])
    y = [0, 0, 0, 1, 1, 1]  # the last one sits among class 0
    assert KNNAccuracy(k=1).fit(F, y).score_ == pytest.approx(5 / 6)
    assert KNNAccuracy(k=3).fit(F, y).score_ == pytest.approx(5 / 6)


def _second_backbone(tmp_path) -> str:
    """Another random tiny timm network (a different architecture from the shared fixture) as a backbone folder."""
    import dataclasses

    import torch

    from transferkit.backbones import create_backbone
    from transferkit.backbones.checkpoint import save_backbone

    torch.manual_seed(1)
    bb = create_backbone("timm:test_resnet", pretrained=False)
    bb.preprocess = dataclasses.replace(bb.preprocess, input_size=(32, 32), crop_pct=1.0)
    save_backbone(bb, tmp_path / "other", provenance={"note": "random init, for tests"})
    return str(tmp_path / "other")


def test_rank_scores_every_backbone_and_validates(colour_folder, tiny_backbone, tmp_path):
    import json

    import transferkit

    other = _second_backbone(tmp_path)
    result = transferkit.rank(colour_folder, [tiny_backbone, other], validate=True, epochs=2, out=tmp_path / "rank")
    assert sorted(result["ranking"]) == sorted([tiny_backbone, other])
    for row in result["rows"]:
        assert all(np.isfinite(row[k]) for k in ("logme", "hscore", "knn"))
        assert row["leep"] is None and row["nce"] is None  # random backbones have no source classifier
        assert 0 <= row["finetuned_val"] <= 1
    taus = result["validation"]["weighted_kendall_tau"]
    assert set(taus) == {"logme", "leep", "nce", "hscore", "knn"} and taus["leep"] is None
    saved = json.loads((tmp_path / "rank" / "rank.json").read_text())
    assert saved["ranking"] == result["ranking"]
    assert "Weighted Kendall tau" in (tmp_path / "rank" / "rank.md").read_text()


def test_rank_needs_two_distinct_backbones(colour_folder, tiny_backbone):
    import transferkit
    from transferkit.errors import TransferkitError

    with pytest.raises(TransferkitError, match="at least two"):
        transferkit.rank(colour_folder, [tiny_backbone])
    with pytest.raises(TransferkitError, match="twice"):
        transferkit.rank(colour_folder, [tiny_backbone, tiny_backbone])


@pytest.mark.weights
def test_rank_with_source_classifier_and_cli(colour_folder, tmp_path):
    """The packaged ImageNet weights keep their classifier, so LEEP and NCE are computed; the CLI prints the table."""
    from typer.testing import CliRunner

    from transferkit.cli import app

    r = CliRunner().invoke(app, ["rank", str(colour_folder), "--backbones", "efficientnet_lite0,efficientnet_lite1",
                                 "--image-size", "64", "--json"])
    assert r.exit_code == 0, r.output
    import json

    result = json.loads(r.output.strip().splitlines()[-1])
    for row in result["rows"]:
        assert row["leep"] is not None and row["leep"] <= 0 and row["nce"] <= 0
        assert row["knn"] > 0.8  # colour patches: neighbours in ImageNet feature space share the colour
