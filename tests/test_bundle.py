"""Bundles: safetensors + JSON, no pickle, identical predictions after reload, atomic writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

import transferkit
from transferkit.io import atomic_dir, write_json


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_backbone):
    from conftest import write_colour_images

    root = tmp_path_factory.mktemp("bundle-data")
    write_colour_images(root / "train", 8, seed=1)
    write_colour_images(root / "test", 3, seed=2)
    out = tmp_path_factory.mktemp("bundle-run")
    model = transferkit.fit(root, backbone=tiny_backbone, strategy="finetune", epochs=2, batch_size=8, out=out)
    return model, out, root


def test_save_load_parity(trained, tmp_path):
    model, out, root = trained
    images = sorted((root / "test").rglob("*.png"))
    before = model.predict_proba(images)
    again = transferkit.load(out / "model")
    after = again.predict_proba(images)
    assert np.array_equal(before, after)
    assert again.classes == model.classes == ["blue", "green", "red"]
    model.save(tmp_path / "copy")
    assert np.array_equal(transferkit.load(tmp_path / "copy").predict_proba(images), before)


def test_bundle_is_json_and_safetensors_only(trained):
    _, out, _ = trained
    files = sorted(p.name for p in (out / "model").iterdir())
    assert files == ["README.md", "config.json", "model.safetensors", "model_card.md"]  # no pickle anywhere
    cfg = json.loads((out / "model" / "config.json").read_text())
    assert cfg["format"] == "transferkit-bundle/1" and cfg["transferkit_version"] == transferkit.__version__
    assert cfg["backbone"]["source"] == "backbone_dir" and cfg["head"]["num_classes"] == 3
    assert cfg["preprocess"]["input_size"] == [32, 32]
    assert "test" in cfg["metrics"] and "accuracy" in cfg["metrics"]["test"]


def test_bundle_loads_when_the_backbone_folder_is_gone(trained, tmp_path, tiny_backbone):
    """A bundle holds every tensor: it must not need the backbone it was trained from."""
    import shutil

    _, out, root = trained
    moved = tmp_path / "moved-backbone"
    shutil.move(tiny_backbone, moved)
    try:
        again = transferkit.load(out / "model")
        assert again.predict(sorted((root / "test").rglob("*.png"))[:1])[0]["label"] in again.classes
    finally:
        shutil.move(moved, tiny_backbone)


def test_predict_top_k(trained):
    model, _, root = trained
    preds = model.predict(sorted((root / "test" / "red").glob("*.png")), top_k=2)
    assert len(preds) == 3 and all(len(p["top"]) == 2 for p in preds)
    assert all(p["top"][0]["probability"] >= p["top"][1]["probability"] for p in preds)


def test_evaluate_matches_fit_metrics(trained):
    model, out, root = trained
    m = transferkit.load(out / "model").evaluate(root)
    fit_metrics = json.loads((out / "metrics.json").read_text())["test"]
    assert m["n"] == 9 and m["accuracy"] == pytest.approx(fit_metrics["accuracy"])


def test_not_a_bundle(tmp_path):
    with pytest.raises(transferkit.TransferkitError, match="is not a transferkit bundle"):
        transferkit.load(tmp_path)


def test_failed_write_leaves_the_old_bundle(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as d:
        (d / "config.json").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as d:
            (d / "config.json").write_text("half")
            raise RuntimeError("crash while writing")
    assert (target / "config.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_failed_json_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"accuracy": np.float64(0.5), "where": tmp_path, "curve": np.arange(2)})
    assert json.loads(path.read_text()) == {"accuracy": 0.5, "where": str(tmp_path), "curve": [0, 1]}
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        write_json(path, {"accuracy": object()})
    assert json.loads(path.read_text())["accuracy"] == 0.5
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left behind


def test_failed_run_writes_no_bundle(colour_splits, tiny_backbone, tmp_path, monkeypatch):
    import transferkit.strategies.finetune as ft

    def boom(*a, **k):
        raise RuntimeError("simulated crash during training")

    monkeypatch.setattr(ft, "train", boom)
    with pytest.raises(RuntimeError):
        transferkit.fit(colour_splits, backbone=tiny_backbone, strategy="finetune", out=tmp_path / "run")
    assert not (tmp_path / "run" / "model").exists()
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_every_bundle_has_a_model_card(colour_folder, tiny_backbone, tmp_path):
    import transferkit

    # a test split asked for: scored on it, with the cross-validated estimate of the training images beside it
    model = transferkit.fit(colour_folder, backbone=tiny_backbone, strategy="linear", out=tmp_path / "run",
                            test_fraction=0.34)
    card = (tmp_path / "run" / "model" / "model_card.md").read_text()
    m = model.metrics["test"]
    lo, hi = m["accuracy_ci"]
    assert lo <= m["accuracy"] <= hi
    assert "cross-validated estimate" in card and model.metrics["estimate"]["n"] == 24
    for needed in ("# Model card: image-classification", "## Data", "## Backbone", "## Training",
                   "## Scores (test set)", "## Known limitations", f"95% CI {lo:.3f}-{hi:.3f}", "--scratch-baseline",
                   "blue, green, red"):
        assert needed in card, needed
    assert "not shown to be better or worse" in card  # a dozen test images cannot separate close models
    assert "not shown to be better or worse" in (tmp_path / "run" / "report.md").read_text()
    model.save(tmp_path / "again")
    assert (tmp_path / "again" / "model_card.md").read_text() == card


def test_scratch_baseline_and_backbone_ranking_reach_report_and_card(colour_splits, tiny_backbone, tmp_path):
    import dataclasses

    import torch

    import transferkit
    from transferkit.backbones import create_backbone
    from transferkit.backbones.checkpoint import save_backbone

    torch.manual_seed(1)
    bb = create_backbone("timm:test_efficientnet", pretrained=False)
    bb.preprocess = dataclasses.replace(bb.preprocess, input_size=(32, 32), crop_pct=1.0)
    other = tmp_path / "other"
    save_backbone(bb, other, provenance={"note": "another random init"})
    model = transferkit.fit(colour_splits, backbone=f"{tiny_backbone},{other}", strategy="linear",
                            scratch_baseline=True, out=tmp_path / "run")
    ranking = model.metrics["backbone_ranking"]
    assert ranking["chosen"] == max(ranking["rows"], key=lambda r: r["logme"])["backbone"]
    assert model.metrics["backbone"]["name"] in (tiny_backbone, str(other))
    base = model.metrics["scratch_baseline"]
    assert base["set"] == "test" and 0 <= base["score"] <= 1 and base["epochs"] >= 1
    assert base["lead"] == pytest.approx(model.metrics["test"]["accuracy"] - base["score"])
    assert "scratch_baseline_s" in model.metrics["timings"] and "rank_s" in model.metrics["timings"]
    report = (tmp_path / "run" / "report.md").read_text()
    card = (tmp_path / "run" / "model" / "model_card.md").read_text()
    for text in (report, card):
        assert "ranked first of 2 by LogME" in text and "trained from random weights on the same splits" in text
    assert "## Comparison with scratch" in card
    # the classical baseline beside scratch, on the same test set (colour patches: HOG or a colour thumbnail)
    classical = model.metrics["classical_baseline"]
    assert classical["set"] == "test" and classical["name"].endswith("logistic regression")
    assert classical["lead"] == pytest.approx(model.metrics["test"]["accuracy"] - classical["score"])
    assert "## Against a classical baseline" in report and classical["name"] in card
