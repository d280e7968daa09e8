"""The real thing, offline: packaged EfficientNet-Lite0 ImageNet weights on a small Fashion-MNIST subset."""

from __future__ import annotations

import json

import numpy as np
import pytest

import transferkit
from transferkit.data.sources import ImageSet


@pytest.mark.weights
def test_efficientnet_lite0_linear_probe_on_fashion_mnist(tmp_path):
    from transferkit.datasets.fashion_mnist import export_image_folder

    root = export_image_folder(tmp_path / "fm", train_per_class=10, test_size=200, seed=0)
    out = tmp_path / "run"
    model = transferkit.fit(root, backbone="efficientnet_lite0", strategy="linear", out=out)
    m = json.loads((out / "metrics.json").read_text())
    # 8 labelled images per class for training (2 go to validation), 200 official test images.
    # Chance is 0.10; ImageNet features reach about 0.77 here (seed 0).
    assert m["test"]["n"] == 200
    assert m["test"]["accuracy"] >= 0.65
    assert m["backbone"]["name"] == "efficientnet_lite0" and m["backbone"]["input_size"] == [224, 224]
    # the bundle reloads to the same predictions with the real weights too
    imgs = sorted((root / "test").rglob("*.png"))[:16]
    assert np.array_equal(model.predict_proba(imgs), transferkit.load(out / "model").predict_proba(imgs))


@pytest.mark.weights
def test_fit_from_arrays_in_memory():
    from transferkit.datasets.fashion_mnist import CLASSES, load_fashion_mnist, sample_per_class

    x, y = load_fashion_mnist("train")
    idx = sample_per_class(y, 6, seed=1)
    data = ImageSet([x[i] for i in idx], [CLASSES[y[i]] for i in idx], "fashion-mnist arrays")
    model = transferkit.fit(data, backbone="efficientnet_lite0", strategy="linear", test_fraction=0.34)
    assert model.metrics["data"]["test"] == 20 and model.metrics["test"]["accuracy"] > 0.4  # chance 0.1
