"""A bundle folder is a Hugging Face Hub model repository: README.md parses with huggingface_hub's own model-card
parser, and ``transferkit.load("org/name")`` reads a bundle from the hub cache, offline."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import transferkit
from transferkit.bundle.card import render_hub_readme


def _card(path):
    from huggingface_hub import ModelCard

    return ModelCard.load(path, ignore_metadata_errors=False)  # a malformed header or model-index raises


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_backbone):
    from conftest import write_colour_images

    root = tmp_path_factory.mktemp("hub") / "parts"
    write_colour_images(root / "train", 10, seed=1)
    write_colour_images(root / "test", 4, seed=2)
    out = root.parent / "run"
    model = transferkit.fit(root, backbone=tiny_backbone, strategy="linear", out=out)
    return out / "model", model


def test_bundle_readme_is_a_hub_model_card(bundle):
    folder, model = bundle
    assert {"README.md", "config.json", "model.safetensors", "model_card.md"} <= {p.name for p in folder.iterdir()}
    card = _card(folder / "README.md")
    d = card.data
    assert (d.library_name, d.pipeline_tag, d.datasets) == ("transferkit", "image-classification", None)
    assert {"transferkit", "transfer-learning", "linear"} <= set(d.tags) and d.metrics == ["accuracy", "f1"]
    scores = {r.metric_name: r for r in d.eval_results}
    acc = scores["test accuracy"]
    assert acc.metric_value == pytest.approx(round(model.metrics["test"]["accuracy"], 4))
    assert (acc.task_type, acc.dataset_name, acc.dataset_split) == ("image-classification", "parts", "test")
    assert scores["test macro-F1"].metric_args == {"average": "macro"}
    assert "## What it does" in card.text and 'transferkit.load("ORG/NAME")' in card.text
    assert (folder / "model_card.md").read_text() in card.content  # the same card, under the header


def test_hub_readme_for_detectors_estimates_and_hub_backbones(tmp_path):
    detector = {"task": "object-detection", "labels": ["a"], "backbone": {"name": "efficientnet_lite0"},
                "metrics": {"strategy": "finetune", "test": {"map": 0.41, "map_50": 0.7, "n_images": 9}}}
    text = {"task": "text-classification", "labels": ["x", "y"], "dataset": "reviews",
            "backbone": {"name": "bert", "source": "hf", "arch": "google-bert/bert-base-uncased"},
            "metrics": {"strategy": "lora", "test": {}, "val": {"accuracy": 0.8, "macro_f1": 0.75, "n": 40},
                        "estimate": {"kind": "cross-validation", "folds": 3, "repeats": 1, "metric": "accuracy",
                                     "score": 0.8, "score_ci": [0.7, 0.9], "n": 40, "method": "3-fold",
                                     "fold_mean": 0.8, "fold_std": 0.05, "chosen": {"epochs": 4}}}}
    for config, task, split, kinds in ((detector, "object-detection", "test", {"map"}),
                                       (text, "text-classification", "train (cross-validated)", {"accuracy", "f1"})):
        (tmp_path / "README.md").write_text(render_hub_readme(config))
        d = _card(tmp_path / "README.md").data
        assert d.pipeline_tag == task and {r.metric_type for r in d.eval_results} == kinds
        assert {r.dataset_split for r in d.eval_results} == {split}
    assert d.base_model == "google-bert/bert-base-uncased"
    assert {(r.dataset_name, r.dataset_type) for r in d.eval_results} == {("reviews", "custom")}


def test_load_by_hub_id_from_the_cache_offline(bundle, tmp_path, monkeypatch):
    from huggingface_hub import constants

    folder, model = bundle
    cache = tmp_path / "hub"
    repo = cache / "models--acme--parts"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    loaded = transferkit.load("acme/parts")
    images = sorted(str(p) for p in folder.parent.parent.rglob("test/*/*.png"))[:5]
    same = [[c["probability"] for c in r["top"]] for r in model.predict(images)]
    np.testing.assert_allclose([[c["probability"] for c in r["top"]] for r in loaded.predict(images)], same,
                               atol=1e-6)

    # a run continues from it by its id too, and its run.yaml keeps the id, not this machine's cache path
    import yaml

    again = transferkit.fit(folder.parent.parent / "parts", init_from="acme/parts", strategy="linear",
                            out=tmp_path / "more")
    assert again.metrics["continued"]["bundle_classes"] == model.classes
    assert yaml.safe_load((tmp_path / "more" / "run.yaml").read_text())["settings"]["init_from"] == "acme/parts"

    with pytest.raises(transferkit.TransferkitError) as err:
        transferkit.load("acme/missing")
    text = str(err.value)
    assert "\n" not in text and text.startswith("acme/missing is not a folder here, and the Hugging Face Hub")

    # a hub repository that is not a bundle (a backbone's) is refused after its config.json, before any weights
    other = cache / "models--acme--encoder" / "snapshots" / ("1" * 40)
    other.mkdir(parents=True)
    (other / "config.json").write_text('{"model_type": "bert"}')
    (other.parent.parent / "refs").mkdir()
    (other.parent.parent / "refs" / "main").write_text("1" * 40)
    with pytest.raises(transferkit.TransferkitError, match="acme/encoder is not a transferkit bundle"):
        transferkit.load("acme/encoder")


def test_a_missing_local_path_is_not_taken_for_a_hub_id(tmp_path, monkeypatch):
    from transferkit.bundle.hub import is_hub_id

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert is_hub_id("acme/parts") and not is_hub_id("runs/missing") and not is_hub_id("../x/y")
    assert not is_hub_id("a/b/c") and not is_hub_id("")
    with pytest.raises(transferkit.TransferkitError, match="runs/missing") as err:
        transferkit.load("runs/missing")
    assert "Hugging Face" not in str(err.value)
