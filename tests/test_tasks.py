"""The task interface: every registered task x every strategy it accepts goes through the whole life of a model
(tiny data -> fit -> save -> load -> predict equal to before saving -> evaluate), and a task defined here, in the
test file, runs through the same pipeline without touching the package."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

import transferkit
from transferkit.errors import TransferkitError
from transferkit.tasks import (TASKS, ClassificationTask, Prepared, get_task, register_task, resolve_task,
                               unregister_task)

from conftest import topic_texts, write_colour_images, write_tones

# the fewest epochs and steps each strategy takes (tiny data: the test is about the plumbing, not the score)
FAST = {"finetune": {"epochs": 1, "batch_size": 8}, "gradual": {"epochs": 2, "unfreeze_every": 1, "batch_size": 8},
        "scratch": {"epochs": 1, "batch_size": 8}, "auto": {"max_epochs": 1, "min_per_class": 1},
        "lora": {"epochs": 1, "batch_size": 8}, "contrastive": {"epochs": 1, "max_pairs": 16, "batch_size": 8},
        "linear": {"repeats": 1}, "frozen": {"epochs": 1, "batch_size": 4}}
DETECT_FAST = {"auto": {"epochs": 2, "batch_size": 4}, "gradual": {"epochs": 2, "unfreeze_every": 1, "batch_size": 4}}
PAIRS = [(name, s) for name in sorted(TASKS) for s in TASKS[name].strategy_names()]


def test_every_builtin_task_is_registered_with_its_strategies():
    assert {"image", "medical", "text", "audio", "detection"} <= set(TASKS)
    assert get_task("text").strategy_names() == ["linear", "finetune", "gradual", "scratch", "auto", "lora",
                                                 "contrastive"]
    assert get_task("image").strategy_names() == ["linear", "finetune", "gradual", "scratch", "auto"]
    assert get_task("detection").strategy_names() == ["frozen", "finetune", "gradual", "scratch", "auto"]


def _data(name: str, root: Path, backbones: dict[str, str]) -> tuple[Any, Any, dict[str, Any]]:
    """(training data, labelled evaluation data, fit options) for a tiny set of ``name``'s kind."""
    if name in ("image", "medical"):
        write_colour_images(root / "train", 8, seed=1)
        write_colour_images(root / "test", 3, seed=2)
        if name == "image":
            return root, root / "test", {"backbone": backbones["image"]}
        manifest = root / "manifest.csv"  # two images per patient; splits keep a patient together
        with manifest.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label", "patient_id", "split"])
            for split in ("train", "test"):
                for i, p in enumerate(sorted((root / split).rglob("*.png"))):
                    w.writerow([p.relative_to(root), p.parent.name, f"{split}-{p.parent.name}-{i // 2}", split])
        return manifest, manifest, {"backbone": backbones["image"]}  # a patient_id column: sniffed as medical
    if name == "text":
        train, test = topic_texts(8, seed=1), topic_texts(3, seed=2)
        root.mkdir(parents=True)
        path = root / "texts.csv"
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label", "split"])
            w.writerows([(t, y, "train") for t, y in train] + [(t, y, "test") for t, y in test])
        return path, path, {"backbone": backbones["text"]}
    if name == "audio":
        write_tones(root / "train", 8, seed=0)
        write_tones(root / "test", 3, seed=1)
        return root, root / "test", {"backbone": backbones["image"]}
    if name == "detection":
        return backbones["boxes"], backbones["boxes"], {"backbone": backbones["image"], "image_size": 64}
    raise AssertionError(f"no tiny data for task {name!r}: add them here when registering a task")


def _inputs(name: str, data: Any, root: Path) -> list[Any]:
    """A few raw inputs for predict."""
    if name == "text":
        return [t for t, _ in topic_texts(2, seed=5)]
    if name == "audio":
        return sorted(str(p) for p in (root / "test").rglob("*.wav"))[:4]
    if name == "detection":
        return sorted(str(p) for p in Path(data).rglob("*.jpg"))[:3] or sorted(str(p) for p in
                                                                              Path(data).rglob("*.png"))[:3]
    return sorted(str(p) for p in (root / "test").rglob("*.png"))[:4]


@pytest.mark.slow
@pytest.mark.explain
@pytest.mark.parametrize(("task_name", "strategy"), PAIRS, ids=[f"{t}-{s}" for t, s in PAIRS])
def test_task_contract(task_name, strategy, tmp_path, tiny_backbone, tiny_text_backbone, box_folder):
    torch.manual_seed(0)
    root = tmp_path / "data"
    backbones = {"image": tiny_backbone, "text": tiny_text_backbone, "boxes": box_folder}
    data, labelled, options = _data(task_name, root, backbones)
    assert resolve_task(data).name == task_name  # auto resolution recognises every built-in task's data
    opts = (DETECT_FAST if task_name == "detection" else {}).get(strategy, FAST[strategy])
    model = transferkit.fit(data, strategy=strategy, out=tmp_path / "run", seed=0, **options, **opts)
    assert model.metrics["task"] == (get_task(task_name).run_label or get_task(task_name).bundle_task)
    assert (tmp_path / "run" / "metrics.json").is_file() and (tmp_path / "run" / "report.md").is_file()
    if task_name != "detection":  # every classifier explains itself: maps (or words), a deletion score, a section
        e = model.metrics["explanations"]
        assert e["available"] and e["deletion"]["n"] > 0 and np.isfinite(e["deletion"]["score"]), e
        assert "## What the model looks at" in (tmp_path / "run" / "report.md").read_text()
        assert (tmp_path / "run" / "explanations.png").is_file() == (e["kind"] != "tokens")

    inputs = _inputs(task_name, data, root)
    before = model.predict(inputs)
    again = transferkit.load(tmp_path / "run" / "model")
    assert getattr(again, "task", get_task("detection")) is get_task(task_name)  # read back by the task that saved it
    after = again.predict(inputs)
    assert len(before) == len(after) == len(inputs)
    if task_name == "detection":
        for b, a in zip(before, after, strict=True):
            assert len(a["boxes"]) == len(b["boxes"])
            np.testing.assert_allclose([x["score"] for x in a["boxes"]], [x["score"] for x in b["boxes"]],
                                       atol=1e-5)
    else:
        for b, a in zip(before, after, strict=True):
            assert a["label"] == b["label"]
            np.testing.assert_allclose([t["probability"] for t in a["top"]], [t["probability"] for t in b["top"]],
                                       atol=1e-5)
    if task_name != "detection" and strategy == "linear":  # predict --explain: one file per input, any task
        rows = again.predict(inputs[:2], explain=tmp_path / "why")
        assert all(Path(r["explanation"]).is_file() for r in rows)
    scores = again.evaluate(str(labelled))
    key, n = ("map", "n_images") if task_name == "detection" else ("accuracy", "n")
    assert 0.0 <= scores[key] <= 1.0 and scores[n] > 0


# ---------------------------------------------------------------------------------------- a task of our own


@dataclass
class VectorOptions:
    """Options of the toy task: how far apart the class means are (nothing else)."""

    spread: float = 3.0


class Vectors:
    """Fixed-length numeric vectors with labels: the toy task's encoded data."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.targets, self.kept, self.skipped = x, y, list(range(len(y))), []

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, idx: Any) -> Vectors:
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        return Vectors(self.x[idx], self.targets[idx])

    @property
    def fingerprints(self) -> list[str]:  # what the feature cache keys on
        import hashlib

        return [hashlib.sha256(row.numpy().tobytes()).hexdigest() for row in self.x]

    def model_input(self, idx: torch.Tensor, device: Any) -> torch.Tensor:  # what the engine feeds the network
        return self.x[idx].to(device)


class VectorSplits:
    def __init__(self, train: Vectors, test: Vectors, classes: list[str]):
        self.train, self.val, self.test, self.classes = train, None, test, classes

    def summary(self) -> dict[str, Any]:
        return {"train": len(self.train), "val": 0, "test": len(self.test), "classes": self.classes,
                "split": "every fourth vector for test", "cross_validated": True}


class MLPBackbone(nn.Module):
    """A small MLP standing in for a pretrained backbone: ``forward_features`` -> pooled features."""

    modality = "vectors"
    profile = "image"  # strategies' default settings

    def __init__(self, dim: int = 8, width: int = 16):
        super().__init__()
        from transferkit.backbones.protocol import BackboneSpec, PreprocessConfig

        self.body = nn.Sequential(nn.Linear(dim, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        self.num_features = width
        self.spec = BackboneSpec(name="toy-mlp", source="test", arch="mlp", weights="random")
        self.preprocess = PreprocessConfig()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)

    def layer_groups(self) -> list[list[nn.Parameter]]:  # shallow to deep, for layer-wise learning rates
        return [list(self.body[0].parameters()), list(self.body[2].parameters())]

    def random_like(self) -> MLPBackbone:
        return MLPBackbone()


class VectorDataset(Dataset):
    def __init__(self, data: Vectors):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return self.data.x[i], self.data.targets[i]


class VectorTask(ClassificationTask):
    """Classify 8-dimensional vectors (a dict ``{"x": array, "y": labels}``) with a small MLP."""

    name = "vectors"
    title = "vector classification"
    bundle_task = "vector-classification"
    modality = "vectors"
    Options = VectorOptions
    sniff_order = 5
    plural = "vectors"

    def sniff(self, data: Any, hints: dict[str, Any]) -> bool:
        return isinstance(data, dict) and "x" in data

    strategies_for = "image"  # dense features from a small network: the image strategies (and their defaults) fit

    def load_splits(self, data: Any, settings: Any, options: VectorOptions) -> VectorSplits:
        x, y = torch.as_tensor(data["x"], dtype=torch.float32), torch.as_tensor(data["y"])
        test = torch.arange(len(y)) % 4 == 0
        return VectorSplits(Vectors(x[~test], y[~test]), Vectors(x[test], y[test]), ["a", "b"])

    def prepare(self, data: Any, backbone: Any, settings: Any, options: VectorOptions,
                parts: tuple[str, ...] = ("train", "val", "test")) -> Prepared:
        torch.manual_seed(settings.seed)
        splits = self.load_splits(data, settings, options)
        encoded = {"train": splits.train, "test": splits.test}
        return Prepared(splits, MLPBackbone(), {k: v for k, v in encoded.items() if k in parts})

    def dataset(self, data: Vectors, augment: bool = False, hflip: bool = True) -> Dataset:
        return VectorDataset(data)

    def sample(self, data: Vectors, n: int) -> torch.Tensor:
        return data.x[:n]

    def encode(self, model: Any, inputs: Any, skip_bad: bool) -> tuple[Vectors, list[Any]]:
        x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
        if x.ndim != 2 or x.shape[1] != 8:
            raise TransferkitError("Pass vectors of 8 numbers each.")
        return Vectors(x, torch.zeros(len(x), dtype=torch.long)), list(inputs)

    def load_backbone(self, folder: Path, spec: Any, config: dict[str, Any]) -> MLPBackbone:
        return MLPBackbone()

    def data_summary(self, prepared: Prepared, multi_label: bool) -> dict[str, Any]:
        return prepared.splits.summary()


def _vectors(n: int = 80, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(size=(n, 8)) + 3.0 * y[:, None]
    return {"x": x.astype(np.float32), "y": y}


@pytest.fixture
def vector_task():
    register_task(VectorTask)
    yield TASKS["vectors"]
    unregister_task("vectors")


@pytest.mark.parametrize("strategy", ["linear", "finetune"])
def test_a_task_defined_outside_the_package_fits_saves_loads_and_predicts(vector_task, strategy, tmp_path):
    assert vector_task.strategy_names() == ["linear", "finetune", "gradual", "scratch", "auto"]
    data = _vectors()
    opts = {"epochs": 15, "lr": 1e-2, "batch_size": 16} if strategy == "finetune" else {}
    model = transferkit.fit(data, strategy=strategy, out=tmp_path / "run", **opts)
    assert model.metrics["task"] == "vector-classification"
    assert model.metrics["test"]["accuracy"] >= 0.9  # the class means are 3 standard deviations apart
    queries = _vectors(6, seed=1)["x"]
    before = model.predict_proba(queries)
    again = transferkit.load(tmp_path / "run" / "model")
    assert again.task is vector_task
    np.testing.assert_allclose(again.predict_proba(queries), before, atol=1e-6)


# ---------------------------------------------------------------------------------------- resolution and refusals


def test_options_of_another_task_are_refused_with_whose_they_are(colour_folder, text_csv, box_folder):
    with pytest.raises(TransferkitError, match=r"window applies to images \(DICOM"):
        transferkit.fit(text_csv, window="lung")
    with pytest.raises(TransferkitError, match="max_length applies to texts; for images set image_size"):
        transferkit.fit(colour_folder, max_length=32)
    with pytest.raises(TransferkitError, match=r"threshold applies to medical images \(modality='medical'\)"):
        transferkit.fit(colour_folder, threshold="youden")
    with pytest.raises(TransferkitError, match="encoding applies to texts"):
        transferkit.fit(colour_folder, encoding="latin-1")
    with pytest.raises(TransferkitError, match="Detection takes one backbone"):
        transferkit.fit(box_folder, backbone="efficientnet_lite0,efficientnet_lite1")
    with pytest.raises(TransferkitError, match="is not classification"):
        transferkit.fit(colour_folder, task="classify", modality="detection")
    with pytest.raises(TransferkitError, match="cv 1 is out of range: use a whole number from 2"):
        transferkit.fit(colour_folder, cv=1, modality="nonsense")  # run settings are checked first


def test_bundles_are_read_by_the_task_that_saved_them():
    from transferkit.tasks import task_for_bundle

    assert task_for_bundle({"task": "image-classification"}).name == "image"
    assert task_for_bundle({"task": "image-classification", "clinical": {"positive": "lesion"}}).name == "medical"
    assert task_for_bundle({"task": "text-classification"}).name == "text"
    assert task_for_bundle({"task": "object-detection"}).name == "detection"
    with pytest.raises(TransferkitError, match="No task reads bundles of kind 'segmentation'"):
        task_for_bundle({"task": "segmentation"})
