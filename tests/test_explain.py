"""Explanations: maps for every image backbone family, the deletion check, the border-shortcut check, word
attributions, the report section and ``predict --explain``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import transferkit
from transferkit.datasets.shortcut import write_marked_images
from transferkit.evaluation.explain import (
    border_share,
    deletion_check,
    pick_examples,
    shortcut_warning,
)

pytestmark = pytest.mark.explain  # fits here keep their explanations (tests/conftest.py)

# ------------------------------------------------------------------------------------- the pieces, pinned


def test_border_share_of_known_maps():
    even = np.ones((100, 100))
    assert border_share(even) == pytest.approx(0.36)  # 1 - 0.8^2
    centre = np.zeros((100, 100))
    centre[40:60, 40:60] = 1
    assert border_share(centre) == 0.0
    corner = np.zeros((100, 100))
    corner[:5, :5] = 1
    assert border_share(corner) == 1.0
    assert np.isnan(border_share(np.zeros((10, 10))))  # no positive mass: nothing to share


def test_shortcut_warning_flags_one_border_class_only():
    said = shortcut_warning({"tagged": 0.81, "plain": 0.20, "other": 0.25})
    assert said is not None and "'tagged'" in said and "81%" in said and "(other classes: 22%;" in said  # their median
    assert shortcut_warning({"a": 0.2, "b": 0.25, "c": 0.3}) is None  # clean: all central
    assert shortcut_warning({"a": 0.6, "b": 0.5}) is None  # both lean on the border alike: no one class stands out
    assert shortcut_warning({"a": 0.44, "b": 0.1}) is None  # not clearly above an even map's 36%
    # the unmarked class beside a marked one has no map (its evidence is an absence): the marked one stands alone
    alone = shortcut_warning({"tagged": 0.64}, band=1 / 7)
    assert alone is not None and "outer 14% band (no other class has a map to compare; an evenly spread map puts " \
        "49% there)" in alone
    assert shortcut_warning({"even": 0.52}, band=1 / 7) is None


def test_pick_examples_takes_confident_right_and_wrong_answers_per_class():
    y = np.array([0, 0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7], [0.95, 0.05], [0.1, 0.9]])
    rows = pick_examples(y, probs, probs.argmax(1), ["a", "b"], correct=1, wrong=1)
    assert [(r["class"], r["index"], r["target"], r["correct"]) for r in rows] == [
        (0, 0, 0, True), (0, 2, 1, False),  # a: the surest right one, and the one said to be b
        (1, 5, 1, True), (1, 4, 0, False)]
    multi = pick_examples(np.array([[1, 0], [0, 1], [1, 1]]), np.array([[0.9, 0.7], [0.8, 0.9], [0.6, 0.2]]), None,
                          ["a", "b"], cut=np.array([0.5, 0.5]), correct=1, wrong=1)
    # a: right = present and said (0.9), wrong = said but absent (example 1 at 0.8); b: right 0.9, wrong 0.7
    assert [(r["index"], r["target"], r["correct"]) for r in multi] == [(0, 0, True), (1, 0, False),
                                                                      (1, 1, True), (0, 1, False)]


class WeightedUnits:
    """A toy explainer: the probability of class 0 rests on units 0-3 only (sigmoid of their sum)."""

    kind, multi_label = "image", False

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(x[:, :4].sum(1) * 2 - 2)
        return torch.stack([p, 1 - p], 1)

    def remove(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return x * keep

    def units(self, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.arange(16, 0, -1).float().expand(len(x), 16), torch.ones(len(x), 16, dtype=torch.bool)


def test_deletion_check_tells_a_faithful_order_from_a_reversed_one():
    x = torch.ones(8, 16)
    targets = torch.zeros(8, dtype=torch.long)
    toy = WeightedUnits()
    right = deletion_check(toy, x, targets, seed=0)  # the toy's own order: units 0-3 first
    reverse = torch.arange(1, 17).float().expand(8, 16)  # units 0-3 last
    wrong = deletion_check(toy, x, targets, reverse, torch.ones(8, 16, dtype=torch.bool), seed=0)
    s = [float(torch.sigmoid(torch.tensor(v))) for v in (6.0, 2.0, -2.0)]
    # 0, 2, 4, 8 of the 16 units removed: the decisive four go first
    assert right["fractions"] == [0.0, 0.125, 0.25, 0.5]
    assert right["map_curve"] == pytest.approx([s[0], s[1], s[2], s[2]], abs=1e-4)
    assert wrong["map_curve"] == pytest.approx([s[0]] * 4, abs=1e-4)  # half removed, none of them decisive
    assert right["score"] > 0.2 and right["map_auc"] < right["random_auc"] < wrong["map_auc"]
    assert wrong["score"] < 0


# ------------------------------------------------------------------------------- every image backbone family


def _classifier(bb: Any, k: int = 2) -> nn.Module:
    from transferkit.heads.linear import Classifier, LinearHead

    torch.manual_seed(0)
    head = LinearHead(bb.num_features, k)
    nn.init.normal_(head.fc.weight, std=1.0)
    return Classifier(bb, head).eval()


class Pixels:
    def __init__(self, pixels: torch.Tensor):
        self.pixels = pixels


@pytest.mark.parametrize("name", ["timm:resnet18", "timm:convnext_atto", "timm:vit_tiny_patch16_224",
                                  "timm:swin_tiny_patch4_window7_224", "torchvision:resnet18", "file"])
def test_maps_for_every_image_backbone_family(name, tmp_path):
    from transferkit.backbones import create_backbone
    from transferkit.evaluation.explainers import PixelExplainer

    if name == "file":  # a timm ResNet from a checkpoint file, as --backbone FILE --arch resnet18 loads it
        from safetensors.torch import save_file

        src = create_backbone("timm:resnet18", pretrained=False)
        save_file(src.body.state_dict(), str(tmp_path / "resnet.safetensors"))
        bb = create_backbone(str(tmp_path / "resnet.safetensors"), arch="resnet18")
    else:
        bb = create_backbone(name, pretrained=False)
    explainer = PixelExplainer(_classifier(bb), bb.preprocess, False, ["a", "b"])
    h, w = bb.preprocess.input_size
    data = Pixels(torch.randint(0, 256, (3, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)))
    found = explainer.explain(data, [0, 1, 2], [0, 1, 0], [0.9, 0.8, 0.7])
    expected_grid = (14, 14) if "vit" in name else (7, 7)
    assert explainer.grid == expected_grid
    for e in found:
        assert e.attribution.shape == (h, w) and e.display.shape == (h, w, 3)
        assert np.isfinite(e.attribution).all() and e.attribution.min() >= 0 and e.attribution.max() <= 1
        assert e.units.shape == (expected_grid[0] * expected_grid[1],)
    # a real map, not zeros (a class-token ViT's last-block outputs never reach the head: its inputs are read)
    assert max(e.attribution.max() for e in found) == 1
    result = deletion_check(explainer, explainer.inputs(data, [0, 1]), torch.tensor([0, 1]))
    assert result["n"] == 2 and np.isfinite(result["score"])


# ------------------------------------------------------------------------------- real weights, known answers


@pytest.mark.weights
def test_the_map_peaks_on_the_square_that_decides_the_class(tmp_path):
    write_marked_images(tmp_path / "train", 16, seed=0)
    model = transferkit.fit(tmp_path, strategy="linear", seed=0, explain=False)
    rng = np.random.default_rng(5)
    hits, files, boxes = 0, [], []
    (tmp_path / "new").mkdir()
    for i in range(6):  # new images, the square in a known place
        img = rng.normal(110, 25, (96, 96, 3)).clip(0, 255)
        y, x = rng.integers(10, 70, 2)
        img[y:y + 16, x:x + 16] = 250
        files.append(str(tmp_path / "new" / f"{i}.png"))
        Image.fromarray(img.astype(np.uint8)).save(files[-1])
        boxes.append((y, x))
    rows = model.predict(files, explain=tmp_path / "why")
    data, _ = model.task.encode(model, files, False)
    explainer = model.task.explainer(model)
    k = model.classes.index("square")
    found = explainer.explain(data, list(range(len(files))), [k] * len(files), [0.5] * len(files))
    scale = model.preprocess.input_size[0] / 96  # 96 px images resized to the backbone's input
    for e, (y, x) in zip(found, boxes, strict=True):
        py, px = np.unravel_index(np.argmax(e.attribution), e.attribution.shape)
        cell = e.attribution.shape[0] / 7  # a map is as sharp as the 7x7 feature grid
        hits += (y * scale - cell <= py <= (y + 16) * scale + cell) and (x * scale - cell <= px <= (x + 16) * scale
                                                                         + cell)
    assert hits == len(files)
    assert all(r["label"] == "square" and Path(r["explanation"]).is_file() for r in rows)


@pytest.mark.weights
def test_a_corner_marker_shortcut_is_flagged_and_clean_data_are_not(tmp_path):
    write_marked_images(tmp_path / "marked" / "train", 14, seed=1, marker="corner")
    write_marked_images(tmp_path / "marked" / "test", 8, seed=2, marker="corner")
    write_marked_images(tmp_path / "clean" / "train", 14, seed=1)
    write_marked_images(tmp_path / "clean" / "test", 8, seed=2)
    marked = transferkit.fit(tmp_path / "marked", strategy="linear", seed=0, out=tmp_path / "run-marked")
    clean = transferkit.fit(tmp_path / "clean", strategy="linear", seed=0, out=tmp_path / "run-clean")
    said = marked.metrics["explanations"]
    assert said["shortcut"] is not None and "'tagged'" in said["shortcut"], said["border_share"]
    assert clean.metrics["explanations"]["shortcut"] is None, clean.metrics["explanations"]["border_share"]
    report = (tmp_path / "run-marked" / "report.md").read_text()
    assert "**Warning: possible shortcut.** Class 'tagged' relies on the image border" in report
    assert "possible shortcut" not in (tmp_path / "run-clean" / "report.md").read_text()
    assert (tmp_path / "run-clean" / "explanations.png").is_file()


@pytest.mark.weights
def test_deletion_score_of_real_maps_beats_random_order_on_fashion_mnist(tmp_path):
    from transferkit.datasets.fashion_mnist import export_image_folder

    export_image_folder(tmp_path / "fm", train_per_class=10, test_size=60, seed=0)
    model = transferkit.fit(tmp_path / "fm", strategy="linear", seed=0, out=tmp_path / "run")
    e = json.loads((tmp_path / "run" / "metrics.json").read_text())["explanations"]
    d = e["deletion"]
    assert e["available"] and e["kind"] == "image" and e["shortcut"] is None
    assert d["n"] == 16 and d["map_auc"] < d["random_auc"] and d["score"] > 0.03, d
    assert model.metrics["timings"]["explain_s"] < model.metrics["timings"]["total_s"]
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## What the model looks at" in report and "![what the model looks at](explanations.png)" in report


# ----------------------------------------------------------------------------------------------------- texts


def test_word_attributions_cover_the_text_and_html_is_escaped(tmp_path, tiny_text_backbone):
    from conftest import topic_texts

    from transferkit.evaluation.explain_plots import explanation_html

    texts = topic_texts(8, seed=1)
    model = transferkit.fit([t for t, _ in texts], labels=[y for _, y in texts], backbone=tiny_text_backbone,
                            strategy="linear", seed=0, out=tmp_path / "run")
    e = model.metrics["explanations"]
    assert e["available"] and e["kind"] == "tokens" and e["deletion"]["n"] > 0
    assert all(t["words"] and all(isinstance(w, str) for w, _ in t["words"]) for t in e["texts"])
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## What the model looks at" in report and "explanations.png" not in report
    hostile = "<script>alert(1)</script> match goal team"
    rows = model.predict([hostile, "rain storm wind"], explain=tmp_path / "why")
    page = Path(rows[0]["explanation"]).read_text()
    assert rows[0]["explanation"].endswith("001-text.html") and "<script>" not in page and "&lt;" in page
    data, _ = model.task.encode(model, [hostile], False)
    found = model.task.explainer(model).explain(data, [0], [0], [0.5])[0]
    assert "".join(t for t, _ in found.words) == hostile  # the pieces put back give the text
    assert "<span" in explanation_html(found)


# ---------------------------------------------------------------------------------------------- the CLI side


def test_predict_explain_on_the_command_line(tmp_path, colour_folder, tiny_backbone):
    from typer.testing import CliRunner

    from transferkit.cli import app

    transferkit.fit(colour_folder, backbone=tiny_backbone, strategy="linear", seed=0, out=tmp_path / "run",
                    explain=False)
    assert "explanations" not in json.loads((tmp_path / "run" / "metrics.json").read_text())
    files = sorted(str(p) for p in Path(colour_folder).rglob("*.png"))[:2]
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "run" / "model"), *files, "--json", "--explain",
                                      str(tmp_path / "why")])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [Path(r["explanation"]).name for r in rows] == [f"00{i + 1}-{Path(f).stem}.png" for i, f in
                                                            enumerate(files)]
    assert all(Path(r["explanation"]).stat().st_size > 1000 for r in rows)
    (tmp_path / "blocked").write_text("a file, not a folder")
    bad = CliRunner().invoke(app, ["predict", str(tmp_path / "run" / "model"), files[0], "--explain",
                                   str(tmp_path / "blocked")])
    assert bad.exit_code == 2 and "Cannot write explanations to" in bad.output


def test_the_report_says_what_the_deletion_score_means_on_either_side_of_zero():
    from transferkit.evaluation.report import explanation_lines

    base = {"available": True, "on": "test set", "kind": "image", "method": "HiResCAM", "examples": 4,
            "seconds": 1.0, "border_share": {"a": 0.2, "b": 0.25}, "border_band": 0.1, "shortcut": None}
    said = {}
    for score in (0.3, 0.01, -0.4):
        d = {"score": score, "map_auc": 0.5, "random_auc": 0.5 + score, "n": 16}
        said[score] = "\n".join(explanation_lines({**base, "deletion": d, "empty_maps": 2 if score < 0 else 0}))
    assert "Here the maps point at what the model uses" in said[0.3]
    assert "do no better than random order" in said[0.01]
    assert "do worse than random order" in said[-0.4] and "2 of the right answers drawn" in said[-0.4]
    assert "outer 10% band (a map spread evenly puts 36% there): a 20%, b 25%" in said[0.3]
    assert explanation_lines({"available": False, "why": "no map here"}) == ["No explanations: no map here"]


def test_predict_explain_takes_false_as_none_and_refuses_what_is_not_a_folder(tmp_path, colour_folder,
                                                                            tiny_backbone):
    from transferkit.errors import TransferkitError

    model = transferkit.fit(colour_folder, backbone=tiny_backbone, strategy="linear", seed=0, explain=False)
    files = sorted(str(p) for p in Path(colour_folder).rglob("*.png"))[:1]
    assert "explanation" not in model.predict(files, explain=False)[0]
    for bad in ("", "  ", True, 3):
        with pytest.raises(TransferkitError, match="is not a folder"):
            model.predict(files, explain=bad)
