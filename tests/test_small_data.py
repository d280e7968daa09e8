"""Small data (issue 16): the probe is scikit-learn's recipe, folds are honest, every label trains the final model,
and a given test split never takes part in choosing anything."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import transferkit
from transferkit.data.folds import repeated_folds, stratified_folds
from transferkit.heads.probe import DEFAULT_CS, LogisticProbe


def blobs(n_per_class: int = 12, classes: int = 4, dim: int = 40, seed: int = 0, shift: float = 1.5):
    """Gaussian classes in ``dim`` dimensions (overlapping, so C matters), with uneven feature scales."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per_class)
    centres = rng.normal(size=(classes, dim)) * shift
    x = centres[y] + rng.normal(size=(len(y), dim))
    return x * rng.uniform(0.1, 10, size=dim) + rng.normal(size=dim) * 5, y


# ----------------------------------------------------------------------------------------------------- folds


def test_folds_are_disjoint_cover_everything_and_are_stratified():
    y = ["a"] * 10 + ["b"] * 7 + ["c"] * 3
    folds = stratified_folds(y, k=5, seed=3)
    assert len(folds) == 5
    seen = np.concatenate([va for _, va in folds])
    assert sorted(seen.tolist()) == list(range(20))  # every example held out exactly once
    for tr, va in folds:
        assert not set(tr) & set(va)
        assert len(tr) + len(va) == 20
        counts = {c: sum(y[i] == c for i in va) for c in "abc"}
        assert counts["a"] == 2 and counts["b"] in (1, 2) and counts["c"] in (0, 1)
    assert max(len(va) for _, va in folds) - min(len(va) for _, va in folds) <= 1


def test_folds_are_seeded():
    y = [i % 3 for i in range(30)]
    same = [v.tolist() for _, v in stratified_folds(y, 5, seed=7)]
    assert same == [v.tolist() for _, v in stratified_folds(y, 5, seed=7)]
    assert same != [v.tolist() for _, v in stratified_folds(y, 5, seed=8)]
    runs = repeated_folds(y, 5, repeats=3, seed=7)
    assert [v.tolist() for _, v in runs[0]] == same and len(runs) == 3


def test_folds_keep_a_patient_together():
    groups = [f"p{i // 3}" for i in range(30)]  # 10 patients, 3 images each
    y = ["sick" if i < 15 else "well" for i in range(30)]
    for tr, va in stratified_folds(y, 5, seed=0, groups=groups):
        assert not {groups[i] for i in tr} & {groups[i] for i in va}


def test_too_few_examples_to_fold():
    with pytest.raises(ValueError):
        stratified_folds(["a"], 5)
    assert len(stratified_folds(["a", "b", "a"], 5)) == 3  # cut to the examples there are


# ----------------------------------------------------------------------------------------------------- probe


def test_probe_equals_scikit_learn_at_the_same_C():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = blobs(shift=0.5)  # overlapping classes: a moderate C, so the coefficients are well determined
    probe = LogisticProbe(seed=0, class_weight=None).fit(x, y)
    assert probe.C_ < 10
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=probe.C_, max_iter=5000, tol=1e-8)).fit(x, y)
    # tolerance: both solve the same convex problem with L-BFGS to ~1e-6; probabilities agree to 1e-4
    assert np.abs(probe.predict_proba(x) - ref.predict_proba(x)).max() < 1e-4
    lr = ref[-1]
    assert np.allclose(probe.coef_, lr.coef_, atol=1e-3 * np.abs(lr.coef_).max())
    assert np.allclose(probe.intercept_, lr.intercept_, atol=1e-3)


def test_probe_chooses_C_as_cross_validation_with_scikit_learn_does():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = blobs(seed=1)
    probe = LogisticProbe(seed=4, class_weight=None).fit(x, y)
    folds = stratified_folds([str(v) for v in y], 5, seed=4)
    scores = [cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000, tol=1e-8)),
                              x, y, cv=folds, scoring="neg_log_loss").mean() for c in DEFAULT_CS]
    assert probe.C_ == DEFAULT_CS[int(np.argmax(scores))]
    # the folds are equal-sized here, so the mean over folds equals the mean over examples
    assert np.allclose([probe.cv_scores_[c] for c in DEFAULT_CS], scores, atol=1e-3)


def test_probe_with_more_dimensions_than_examples_matches_scikit_learn():
    # 1,280-d features and a few dozen labels: the probe solves in the examples' span, which must not change it
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = blobs(n_per_class=6, classes=3, dim=300, seed=2)
    probe = LogisticProbe(Cs=[0.05], class_weight=None).fit(x, y)
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=5000, tol=1e-8)).fit(x, y)
    assert np.abs(probe.predict_proba(x) - ref.predict_proba(x)).max() < 1e-4
    assert np.allclose(probe.coef_, ref[-1].coef_, atol=1e-3 * np.abs(ref[-1].coef_).max())


def test_probe_as_a_linear_head_gives_the_same_logits():
    x, y = blobs(seed=3)
    probe = LogisticProbe(seed=0).fit(x, y)
    head = probe.to_head()
    logits = head(torch.tensor(x, dtype=torch.float32)).detach().numpy()
    assert np.allclose(logits, probe.decision_function(x), atol=1e-3 * np.abs(logits).max())


def test_two_class_and_imbalanced_probe_matches_weighted_scikit_learn():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = blobs(n_per_class=20, classes=2, seed=5, shift=0.6)
    keep = np.r_[np.arange(20), np.arange(20, 26)]  # 20 vs 6: imbalanced
    x, y = x[keep], y[keep]
    probe = LogisticProbe(seed=0).fit(x, y)  # "auto": balanced weights at this ratio
    assert probe.class_weight_ is not None and probe.class_weight_[1] > probe.class_weight_[0]
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=probe.C_, class_weight="balanced", max_iter=5000,
                                                             tol=1e-8)).fit(x, y)
    assert np.abs(probe.predict_proba(x) - ref.predict_proba(x)).max() < 1e-4
    balanced = LogisticProbe(seed=0).fit(*blobs(n_per_class=10, classes=2, seed=6))
    assert balanced.class_weight_ is None  # equal classes: no weights


def test_multi_label_probe_is_one_vs_rest_scikit_learn():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, y = blobs(n_per_class=10, classes=4, seed=7)
    targets = np.stack([y == 0, (y == 1) | (y == 2), y >= 2], 1).astype(float)
    probe = LogisticProbe(seed=0, class_weight=None).fit(x, targets)
    z = StandardScaler().fit_transform(x)
    for j in range(3):
        ref = LogisticRegression(C=probe.C_, max_iter=5000, tol=1e-8).fit(z, targets[:, j])
        assert np.abs(probe.predict_proba(x)[:, j] - ref.predict_proba(z)[:, 1]).max() < 1e-4


# ------------------------------------------------------------------------------------------- every label used


def test_small_data_hold_nothing_out_and_the_final_probe_saw_every_label(colour_folder, tiny_backbone, tmp_path):
    from transferkit.backbones import create_backbone
    from transferkit.data.images import decode
    from transferkit.data.sources import load_splits
    from transferkit.engine.accel import make_accelerator
    from transferkit.engine.features import extract_features

    out = tmp_path / "run"
    model = transferkit.fit(colour_folder, backbone=tiny_backbone, strategy="linear", out=out)
    m = model.metrics
    assert (m["data"]["train"], m["data"]["val"], m["data"]["test"]) == (36, 0, 0)
    assert m["test"] is None and m["estimate"]["kind"] == "cross-validation"
    assert m["estimate"]["folds"] == 5 and m["estimate"]["repeats"] == 3 and m["estimate"]["n"] == 36
    assert m["val"]["n"] == 36  # every example has an out-of-fold prediction
    report = (out / "report.md").read_text()
    assert "cross-validated estimate" in report and "transferkit evaluate" in report
    # the bundled head is the probe refitted on all 36 images, with the C the folds chose
    bb = create_backbone(tiny_backbone)
    splits = load_splits(colour_folder)
    dec = decode(splits.train, bb.preprocess, splits.classes)
    feats, _ = extract_features(bb, dec, make_accelerator("auto", seed=0), cache=False)
    probe = LogisticProbe(seed=0).fit(feats, dec.targets.numpy(), num_classes=3)
    assert probe.C_ == m["estimate"]["chosen"]["C"]
    head = model.classifier.head.fc
    ref = probe.to_head().fc
    assert torch.allclose(head.weight, ref.weight, atol=1e-4) and torch.allclose(head.bias, ref.bias, atol=1e-4)


def test_fractions_keep_held_out_splits_for_those_who_want_them(colour_folder, tiny_backbone):
    model = transferkit.fit(colour_folder, backbone=tiny_backbone, strategy="linear", val_fraction=0.15,
                            test_fraction=0.2)
    d = model.metrics["data"]
    assert (d["train"], d["val"], d["test"]) == (24, 6, 6) and model.metrics.get("estimate") is None
    only_test = transferkit.fit(colour_folder, backbone=tiny_backbone, strategy="linear", test_fraction=0.25)
    d = only_test.metrics["data"]
    assert (d["train"], d["val"], d["test"]) == (27, 0, 9) and only_test.metrics["estimate"]["n"] == 27


@pytest.mark.parametrize("strategy", ["linear", "auto"])
def test_a_given_test_split_never_takes_part_in_choosing(strategy, colour_splits, tiny_backbone, monkeypatch):
    from transferkit.data.images import load_pil
    from transferkit.strategies import base, linear

    test_prints = {load_pil(p)[1] for p in (colour_splits / "test").rglob("*.png")}
    seen: list[str] = []
    extract = linear.extract_features
    fold = base.TrainTask.fold

    def spy_extract(backbone, data, *args, **kwargs):
        seen.extend(data.fingerprints)
        return extract(backbone, data, *args, **kwargs)

    def spy_fold(self, train_idx, val_idx, deadline=None):
        sub = fold(self, train_idx, val_idx, deadline)
        seen.extend(sub.train.fingerprints + sub.val.fingerprints)
        return sub

    monkeypatch.setattr(linear, "extract_features", spy_extract)
    monkeypatch.setattr(base.TrainTask, "fold", spy_fold)
    options = {"max_epochs": 2, "min_epochs": 1, "min_per_class": 2} if strategy == "auto" else {}
    model = transferkit.fit(colour_splits, backbone=tiny_backbone, strategy=strategy, **options)
    assert seen and not set(seen) & test_prints
    assert model.metrics["test"]["n"] == 12 and model.metrics["data"]["train"] == 30


def test_cross_validated_finetune_trains_the_final_model_for_the_folds_median_epoch(colour_folder, tiny_backbone):
    model = transferkit.fit(colour_folder, backbone=tiny_backbone, strategy="finetune", epochs=3, batch_size=8, cv=3)
    e = model.metrics["estimate"]
    assert e["folds"] == 3 and len(e["chosen"]["fold_best_epochs"]) == 3
    assert e["chosen"]["epochs"] == int(np.median(e["chosen"]["fold_best_epochs"]))
    assert len(model.metrics["history"]["epochs"]) == e["chosen"]["epochs"]  # the final run stopped there
    assert model.metrics["history"]["epochs"][-1]["val_acc"] is None  # nothing held out to validate on
    assert model.metrics["data"]["train"] == 36


def test_auto_decides_across_folds(colour_folder, tiny_backbone):
    model = transferkit.fit(colour_folder, backbone=tiny_backbone, strategy="auto", max_epochs=2, min_epochs=1, cv=3,
                            finetune_folds=2)
    d = model.metrics["details"]
    assert d["chosen"] in ("linear", "finetune")
    assert "fold" in d["decision"]
    assert model.metrics["estimate"]["chosen"]["strategy"] == d["chosen"]
    assert d["candidates"]["linear"]["cv_score"] >= 0


def test_cv_must_be_a_number_of_folds(colour_folder, tiny_backbone):
    with pytest.raises(transferkit.TransferkitError, match="cv"):
        transferkit.fit(colour_folder, backbone=tiny_backbone, strategy="linear", cv=1)


def test_the_small_data_rule_holds_out_nothing_below_50_a_class():
    from transferkit.data.sources import SMALL_DATA_PER_CLASS, ImageSet, load_splits

    pixel = np.zeros((4, 4, 3), dtype=np.uint8)
    n = SMALL_DATA_PER_CLASS - 1
    small = load_splits(ImageSet([pixel] * (2 * n), ["a"] * n + ["b"] * n))
    assert small.val is None and small.test is None and len(small.train) == 2 * n
    assert "cross-validation" in small.how
    n = SMALL_DATA_PER_CLASS
    big = load_splits(ImageSet([pixel] * (2 * n), ["a"] * n + ["b"] * n))
    assert (len(big.train), len(big.val), len(big.test)) == (64, 16, 20)  # 15% and 20% of each class, rounded


def test_medical_threshold_and_folds_use_patients_without_a_validation_split(dicom_manifest, tiny_backbone):
    model = transferkit.fit(dicom_manifest, backbone=tiny_backbone, strategy="linear", threshold="youden")
    m = model.metrics
    assert m["estimate"]["kind"] == "cross-validation" and m["data"]["val"] == 0 and m["data"]["test"] == 0
    assert "clinical" in m["val"] and m["clinical"]["threshold_rule"] == "youden on the out-of-fold predictions"
