"""Multi-label images and audio (reading, splits, per-label thresholds, bundles) and class balance for every
classifier."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import transferkit
from transferkit.errors import DataError, TransferkitError

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def write_colour_pairs(folder: Path, n: int, seed: int = 0, size: int = 24) -> list[tuple[str, list[str]]]:
    """Images whose left and right halves each show one colour: the labels are the colours present (one or two)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(COLOURS)
    rows = []
    for i in range(n):
        left, right = rng.choice(names, 2)
        img = np.zeros((size, size, 3))
        img[:, : size // 2] = COLOURS[left]
        img[:, size // 2 :] = COLOURS[right]
        img = np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)
        path = folder / f"img_{i:03d}.png"
        Image.fromarray(img).save(path)
        rows.append((path.name, sorted({left, right})))
    return rows


def write_table(path: Path, rows: list[tuple[str, list[str]]], sep: str = "|", splits: list[str] | None = None) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", *(["split"] if splits else [])])
        for i, (name, labels) in enumerate(rows):
            w.writerow([name, sep.join(labels), *([splits[i]] if splits else [])])
    return path


@pytest.fixture
def colour_pairs(tmp_path) -> Path:
    """36 training and 12 test images of one or two colours each, as a CSV with "red|blue" cells."""
    rows = write_colour_pairs(tmp_path / "pairs", 48, seed=3)
    return write_table(tmp_path / "pairs" / "labels.csv", rows, splits=["train"] * 36 + ["test"] * 12)


def test_multilabel_images_fit_predict_reload_and_evaluate(colour_pairs, tiny_backbone, tmp_path):
    model = transferkit.fit(colour_pairs, backbone=tiny_backbone, strategy="linear", label_sep="|",
                            out=tmp_path / "run")
    m = model.metrics
    assert model.multi_label and model.classes == sorted(COLOURS)
    # each label's cut tuned on the out-of-fold predictions (small data: no validation split), the test scored there
    assert m["thresholds"]["tuned_on"] == "out-of-fold predictions"
    assert isinstance(model.threshold, list) and len(model.threshold) == 3
    assert m["test"]["threshold"] == model.threshold and m["estimate"]["metric"] == "map"
    assert {"map", "hamming_score", "macro_auroc", "macro_f1"} <= set(m["test"])
    assert all(v["auroc"] is not None for v in m["test"]["per_class"].values())
    assert m["test"]["map"] > 0.9  # colours are trivially separable, even for a random tiny network

    inputs = sorted(str(p) for p in (colour_pairs.parent).glob("img_04*.png"))
    rows = model.predict(inputs)
    cut = model.label_thresholds()
    for row in rows:  # every label at or above its own threshold, the most probable first
        probs = {t["label"]: t["probability"] for t in row["top"]}
        assert row["labels"] == [c for c in sorted(probs, key=lambda c: -probs[c])
                                 if probs[c] >= cut[model.classes.index(c)]]
    again = transferkit.load(tmp_path / "run" / "model")
    assert again.multi_label and again.threshold == model.threshold and again.meta["label_sep"] == "|"
    assert [r["labels"] for r in again.predict(inputs)] == [r["labels"] for r in rows]
    # evaluate reads "red|blue" cells with the separator the bundle kept
    scores = again.evaluate(colour_pairs)
    assert scores["n"] == 12 and scores["map"] == pytest.approx(m["test"]["map"])
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Macro-F1" in report and "| class | precision | recall | F1 | AP | AUROC | threshold | support |" in report


def test_one_threshold_for_every_label(colour_pairs, tiny_backbone):
    model = transferkit.fit(colour_pairs, backbone=tiny_backbone, strategy="linear", label_sep="|", thresholds=0.5)
    assert model.threshold == 0.5 and model.metrics["thresholds"]["tuned_on"] is None
    with pytest.raises(TransferkitError, match="thresholds 1 is out of range: give tuned, or a probability above 0"):
        transferkit.fit(colour_pairs, backbone=tiny_backbone, strategy="linear", label_sep="|", thresholds=1)
    with pytest.raises(TransferkitError, match="neither tuned nor a probability"):
        transferkit.fit(colour_pairs, backbone=tiny_backbone, strategy="linear", label_sep="|", thresholds="best")


def test_multilabel_splits_keep_every_label_in_training(tmp_path):
    from transferkit.data.sources import load_splits

    rows = write_colour_pairs(tmp_path / "p", 60, seed=1)
    rows.append(("img_000.png", ["red", "violet"]))  # a label on one image only: it must train
    table = write_table(tmp_path / "p" / "t.csv", rows)
    splits = load_splits(table, val_fraction=0.2, test_fraction=0.2, seed=0, label_sep="|")
    assert "iterative" in splits.how and splits.train.multi_label
    assert set(splits.train.label_names()) == {"blue", "green", "red", "violet"}
    for part in (splits.val, splits.test):  # every label with enough images reaches every split
        assert set(part.label_names()) >= {"blue", "green", "red"}
    n = {k: len(getattr(splits, k)) for k in ("train", "val", "test")}
    assert sum(n.values()) == 61 and abs(n["val"] - 12) <= 1 and abs(n["test"] - 12) <= 1


def test_multilabel_tables_read_as_documented(tmp_path):
    from transferkit.data.sources import load_splits, read_table

    rows = write_colour_pairs(tmp_path / "p", 4)
    jsonl = tmp_path / "p" / "t.jsonl"
    records = [{"path": n, "label": y} for n, y in rows] + [{"path": rows[0][0], "label": []}]
    jsonl.write_text("\n".join(json.dumps(r) for r in records))
    train, _ = read_table(jsonl)  # lists need no separator; [] says that no label applies
    assert train.multi_label and train.labels[-1] == () and train.labels[0] == tuple(rows[0][1])
    csv_path = write_table(tmp_path / "p" / "t.csv", [*rows[:2], (rows[2][0], [])])
    with pytest.raises(DataError, match=r"t\.csv line 4: the label \('label'\) is empty"):
        read_table(csv_path, label_sep="|")  # an empty cell is a missing label, not "none applies"
    (tmp_path / "folders" / "red").mkdir(parents=True)
    with pytest.raises(DataError, match="label_sep splits the label cells of a table"):
        load_splits(tmp_path / "folders", label_sep="|")


def test_multilabel_audio(tmp_path, tiny_backbone):
    import soundfile as sf

    rate, rng = 16_000, np.random.default_rng(0)
    tones = {"low": 300.0, "high": 2000.0, "mid": 800.0}
    records = []
    for i in range(30):
        present = sorted(rng.choice(sorted(tones), int(rng.integers(1, 3)), replace=False))
        t = np.arange(int(rate * 0.5)) / rate
        x = sum(np.sin(2 * np.pi * tones[c] * t) for c in present) * 0.2 + 0.01 * rng.standard_normal(len(t))
        sf.write(str(tmp_path / f"clip_{i}.wav"), x.astype(np.float32), rate)
        records.append({"path": f"clip_{i}.wav", "label": present, "split": "test" if i >= 24 else "train"})
    table = tmp_path / "clips.jsonl"
    table.write_text("\n".join(json.dumps(r) for r in records))
    model = transferkit.fit(table, backbone=tiny_backbone, strategy="linear", out=tmp_path / "run")
    assert model.multi_label and model.metrics["task"] == "audio-classification"
    assert len(model.threshold) == 3 and model.metrics["test"]["n"] == 6
    rows = model.predict([str(tmp_path / "clip_25.wav")])
    again = transferkit.load(tmp_path / "run" / "model")
    assert again.predict([str(tmp_path / "clip_25.wav")])[0]["labels"] == rows[0]["labels"]
    assert again.evaluate(table)["n"] == 6


def test_single_label_model_refuses_multilabel_data(colour_folder, colour_pairs, tiny_backbone):
    model = transferkit.fit(colour_folder, backbone=tiny_backbone, strategy="linear")
    with pytest.raises(TransferkitError, match="gives several labels per example; this model gives one"):
        model.evaluate(colour_pairs, label_sep="|")


# ------------------------------------------------------------------------------------------------ class balance


def _imbalanced_folder(root: Path, counts: dict[str, int]) -> Path:
    """Class folders of the colour images with ``counts`` images each."""
    import shutil

    from conftest import write_colour_images

    for name, n in counts.items():
        write_colour_images(root / ".all", n, seed=len(name))
        (root / ".all" / name).rename(root / name)
        shutil.rmtree(root / ".all")
    return root


def test_auto_turns_class_weights_on_when_classes_are_imbalanced(tmp_path, tiny_backbone, capsys, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_QUIET", "0")  # the choice is said on the console
    data = _imbalanced_folder(tmp_path / "imb", {"red": 14, "blue": 4})  # 3.5:1
    model = transferkit.fit(data, backbone=tiny_backbone, strategy="linear", out=tmp_path / "run")
    b = model.metrics["balance"]
    assert b["balance"] == "weights" and b["balanced"] and "14 vs 'blue' 4" in b["why"]
    assert "imbalanced classes" in capsys.readouterr().err
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Class balance: a class-weighted loss" in report and "| class | recall | precision |" in report
    model = transferkit.fit(data, backbone=tiny_backbone, strategy="linear", balance="none")
    assert model.metrics["balance"] == {"balance": "none", "balanced": False, "why": None}
    even = _imbalanced_folder(tmp_path / "even", {"red": 8, "blue": 4})  # 2:1
    assert transferkit.fit(even, backbone=tiny_backbone, strategy="linear").metrics["balance"]["balance"] == "none"


def test_balance_option_is_checked(colour_folder, tiny_backbone):
    with pytest.raises(TransferkitError, match="Balance 'even' is unknown"):
        transferkit.fit(colour_folder, backbone=tiny_backbone, strategy="linear", balance="even")


def _task(targets: torch.Tensor, balance: str, classes: list[str]):
    from transferkit.strategies import TrainTask

    class Data:
        def __init__(self, t):
            self.targets = t

        def __len__(self):
            return len(self.targets)

    return TrainTask(spec=None, backbone=None, train=Data(targets), val=None, classes=classes, accelerator=None,
                     balance=balance)


def test_class_weights_are_as_defined():
    single = _task(torch.tensor([0] * 8 + [1] * 2), "weights", ["a", "b"])
    # inverse frequency, mean 1 over the examples: n / (k * count)
    assert single.class_weights.tolist() == pytest.approx([10 / (2 * 8), 10 / (2 * 2)])
    assert _task(torch.tensor([0] * 8 + [1] * 2), "none", ["a", "b"]).class_weights is None
    y = torch.zeros(40, 3)
    y[:20, 0], y[:4, 1], y[:1, 2] = 1, 1, 1  # label c on 1 of 40: 39 would be too much
    multi = _task(y, "weights", ["a", "b", "c"])
    assert multi.class_weights.tolist() == pytest.approx([1.0, 36 / 4, 10.0])  # negatives/positives in [1, 10]
    from transferkit.engine.loop import classification_loss

    logits = torch.randn(40, 3)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, pos_weight=multi.class_weights)
    assert classification_loss(logits, y, True, weight=multi.class_weights) == pytest.approx(expected.item())


def test_balanced_sampler_draws_classes_equally_often():
    from transferkit.tasks import get_task

    y = torch.tensor([0] * 90 + [1] * 10)
    sampler = get_task("image").sampler(_task(y, "sampler", ["a", "b"]))
    drawn = y[list(iter(sampler))]
    assert len(drawn) == 100 and abs(int((drawn == 1).sum()) - 50) < 15  # seeded: 1 in 2, not 1 in 10
    assert get_task("text").sampler(_task(y, "weights", ["a", "b"])) is None
    multi = torch.zeros(100, 2)
    multi[:, 0], multi[:10, 1] = 1, 1  # every example has a; b, the rarer, marks 10 of them
    drawn = multi[list(iter(get_task("text").sampler(_task(multi, "sampler", ["a", "b"]))))]
    assert abs(int(drawn[:, 1].sum()) - 50) < 15


def test_probe_follows_the_run_balance():
    from transferkit.strategies.linear import LinearConfig, make_probe

    y = torch.tensor([0] * 8 + [1] * 2)
    assert make_probe(_task(y, "none", ["a", "b"]), LinearConfig()).class_weight is None
    assert make_probe(_task(y, "weights", ["a", "b"]), LinearConfig()).class_weight == "balanced"
    assert make_probe(_task(y, "none", ["a", "b"]), LinearConfig(class_weight="balanced")).class_weight == "balanced"


# ------------------------------------------------------------------------------------- test-time augmentation


def test_views_of_a_symmetric_input_change_nothing():
    """A left-right symmetric, flat image reads the same through every view: a model's TTA equals no TTA."""
    from transferkit.data.images import DecodedImages, ViewedPixels, test_time_views

    pixels = torch.full((2, 3, 20, 20), 90, dtype=torch.uint8)
    data = DecodedImages(pixels, torch.tensor([0, 1]), ["a", "b"], [], [0, 1])
    for view in test_time_views(data):
        assert torch.equal(view.pixels[torch.arange(2)], pixels) and torch.equal(view.pixels[0], pixels[0])
    ramp = torch.arange(20, dtype=torch.uint8).expand(1, 3, 20, 20)
    assert torch.equal(ViewedPixels(ramp, "hflip")[0], ramp[0].flip(-1))
    zoomed = ViewedPixels(ramp, "zoom")[0]  # the centre 90% resized back: the ends move inwards
    assert zoomed.shape == ramp[0].shape and zoomed[0, 0, 0] > 0 and zoomed[0, 0, -1] < 19


def test_tta_of_a_flip_invariant_model_equals_no_tta(colour_splits, tiny_backbone, tmp_path):
    model = transferkit.fit(colour_splits, backbone=tiny_backbone, strategy="linear", val_fraction=0.3,
                            out=tmp_path / "run")
    t = model.metrics["tta"]
    assert t["judged"] and t["views"] == 3 and set(t["val"]) == {"without", "with"} and "test" in t
    assert model.tta == t["kept"] and ("kept: predictions average" in (tmp_path / "run" / "report.md").read_text()
                                       or "not kept" in (tmp_path / "run" / "report.md").read_text())
    # a head over a mean-pooled constant is blind to flips and crops: TTA averages identical probabilities
    from PIL import Image

    Image.fromarray(np.full((24, 24, 3), 120, np.uint8)).save(tmp_path / "flat.png")
    flat = [str(tmp_path / "flat.png")]
    np.testing.assert_allclose(model.predict_proba(flat, tta=True), model.predict_proba(flat, tta=False), atol=1e-5)
    again = transferkit.load(tmp_path / "run" / "model")
    assert again.tta == model.tta
    assert again.evaluate(colour_splits, tta=True)["n"] == again.evaluate(colour_splits, tta=False)["n"]


def test_cross_validated_runs_do_not_judge_tta(colour_folder, tiny_backbone):
    model = transferkit.fit(colour_folder, backbone=tiny_backbone, strategy="linear")
    assert model.metrics["tta"] == {"judged": False, "kept": False} and model.tta is False


def test_tta_is_refused_where_there_are_no_views(text_folder, tiny_text_backbone, box_folder, tmp_path):
    from typer.testing import CliRunner

    from transferkit.cli import app

    model = transferkit.fit(text_folder, backbone=tiny_text_backbone, strategy="linear", out=tmp_path / "run")
    assert "tta" not in model.metrics
    with pytest.raises(TransferkitError, match="Test-time augmentation applies to image and audio classifiers"):
        model.predict(["goal"], tta=True)
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "run" / "model"), "goal team", "--tta"])
    assert r.exit_code == 2 and "applies to image and audio classifiers" in r.output and "Traceback" not in r.output


def test_audio_windows_shift_within_their_recording():
    from transferkit.data.audio import DecodedAudio, shifted_views
    from transferkit.data.wavestore import Waves

    source = torch.arange(30, dtype=torch.float16)  # recording 0: samples 0-17 (two windows), 1: 20-27
    data = DecodedAudio(Waves(source, [0, 10, 20], [8, 8, 8], 8), torch.tensor([0, 0, 1]), torch.tensor([0, 1]),
                        ["a", "b"])
    back, ahead = shifted_views(data)
    assert back.waves.starts.tolist() == [0, 8, 20] and ahead.waves.starts.tolist() == [2, 12, 22]
    # a window never reads the next recording: its valid samples end where its recording does
    assert (ahead.waves.starts + ahead.waves.valid).tolist() == [10, 18, 28]


# ------------------------------------------------------------------------------------------------ label noise


def test_the_report_lists_training_examples_likely_mislabelled(tmp_path, tiny_backbone):
    from conftest import write_colour_images

    write_colour_images(tmp_path / "c", 12)
    for name in ("red_000.png", "red_001.png"):  # two red images filed as blue
        (tmp_path / "c" / "red" / name).rename(tmp_path / "c" / "blue" / name)
    model = transferkit.fit(tmp_path / "c", backbone=tiny_backbone, strategy="linear", out=tmp_path / "run")
    noise = model.metrics["label_noise"]
    assert noise["checked"] and noise["examples"] == 36 and noise["issues"] >= 2
    flagged = [r["input"] for r in noise["rows"][:4]]
    assert any(f.endswith("blue/red_000.png") for f in flagged) and any(f.endswith("blue/red_001.png") for f in flagged)
    assert {r["suggested"] for r in noise["rows"] if "/blue/red_" in r["input"]} == {"red"}
    assert "## Possibly mislabelled training examples" in (tmp_path / "run" / "report.md").read_text()


def test_runs_with_a_validation_split_say_the_noise_check_needs_folds(colour_splits, tiny_backbone):
    model = transferkit.fit(colour_splits, backbone=tiny_backbone, strategy="linear", val_fraction=0.3)
    assert model.metrics["label_noise"]["checked"] is False


# ---------------------------------------------------------------------------------------------- compare and rank


def test_rank_multilabel_data_by_logme_alone(colour_pairs, tiny_backbone, tmp_path):
    from test_transferability import _second_backbone

    result = transferkit.rank(colour_pairs, [tiny_backbone, _second_backbone(tmp_path)], label_sep="|")
    for row in result["rows"]:
        assert np.isfinite(row["logme"]) and all(row[k] is None for k in ("leep", "nce", "hscore", "knn"))


def test_logme_takes_multi_hot_columns_as_they_are():
    from transferkit.evaluation.transferability import LogME

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 50)
    X = np.c_[y + rng.normal(0, .1, 100), rng.normal(size=(100, 3))]
    one_hot = np.eye(2)[y]
    assert LogME().fit(X, one_hot).score_ == pytest.approx(LogME().fit(X, y).score_)
    both = np.c_[y, 1 - y, rng.integers(0, 2, 100)]  # a third label no feature explains: the mean evidence drops
    assert LogME().fit(X, both).score_ < LogME().fit(X, both[:, :2]).score_


def test_compare_multilabel_scores_by_map(tmp_path, tiny_backbone):
    rows = write_colour_pairs(tmp_path / "p", 40, seed=2)
    table = write_table(tmp_path / "p" / "t.csv", rows, splits=["train"] * 28 + ["test"] * 12)
    result = transferkit.compare(table, budgets="4,all", seeds=1, strategies="linear,classical",
                                 backbone=tiny_backbone, label_sep="|", out=tmp_path / "cmp")
    assert result["config"]["metric"] == "map" and len(result["runs"]) == 4 and not result["failed"]
    assert all(0 <= r["score"] <= 1 for r in result["runs"])
    assert {r.get("gap_metric") for r in result["runs"] if r["strategy"] == "linear"} == {"macro_f1"}
    assert "macro-F1 on its training examples" in (tmp_path / "cmp" / "report.md").read_text()
    with pytest.raises(TransferkitError, match="does not score multi-label data"):
        transferkit.compare(table, budgets="all", seeds=1, strategies="linear,classical", backbone=tiny_backbone,
                            label_sep="|", metric="balanced_accuracy")


def test_detection_sampler_draws_images_of_rare_objects_more_often():
    from transferkit.strategies.detection import image_sampler

    class Boxes:
        targets = [torch.tensor([0, 0])] * 18 + [torch.tensor([0, 1])] * 2  # class 1 on 2 of 20 images

        def __len__(self):
            return 20

    task = _task(torch.zeros(20, dtype=torch.long), "sampler", ["a", "b"])
    task.train = Boxes()
    drawn = [int(i) for i in image_sampler(task)]
    assert len(drawn) == 20 and sum(i >= 18 for i in drawn) >= 5  # about half the draws, not 1 in 10
    task.balance = "none"
    assert sorted(int(i) for i in image_sampler(task)) == list(range(20))  # plain shuffling
    with pytest.raises(TransferkitError, match="focal loss already weighs"):
        transferkit.fit("nothing", task="detect", balance="weights")


# ------------------------------------------------------------------------------------------------ review cases


def test_tta_is_the_mean_of_the_views(colour_splits, tiny_backbone):
    from transferkit.data.images import decode, test_time_views
    from transferkit.data.sources import load_test_set

    model = transferkit.fit(colour_splits, backbone=tiny_backbone, strategy="linear", val_fraction=0.3)
    data = decode(load_test_set(colour_splits), model.preprocess, model.classes)
    views = [data, *test_time_views(data)]
    each = [model.predict_encoded(v, tta=False) for v in views]
    assert not np.allclose(each[0], each[1])  # the views do differ
    np.testing.assert_allclose(model.predict_encoded(data, tta=True), np.mean(each, axis=0), atol=1e-6)


def test_label_lists_and_cells_are_checked_item_by_item(tmp_path):
    from transferkit.data.sources import read_table

    rows = write_colour_pairs(tmp_path / "p", 3)
    for bad, said in (([None, "red"], r"line 1: the labels \[None, 'red'\] hold an empty or missing item"),
                      ([["red", "blue"]], "a list inside the list"), ([1, "1"], "labels mix types")):
        table = tmp_path / "p" / "bad.jsonl"
        table.write_text("\n".join(json.dumps({"path": n, "label": bad if i == 0 else y})
                                   for i, (n, y) in enumerate(rows)))
        with pytest.raises(DataError, match=said):
            read_table(table)
    spaced = write_table(tmp_path / "p" / "spaced.csv", rows, sep=" ")  # "blue red": a space separates them
    train, _ = read_table(spaced, label_sep=" ")
    assert train.labels[0] == tuple(rows[0][1])
    with pytest.raises(DataError, match=r"line 2: the labels 'red\|nan' hold an empty or missing item"):
        read_table(write_table(tmp_path / "p" / "nan.csv", [(rows[0][0], ["red", "nan"])]), label_sep="|")


def test_small_multilabel_data_is_judged_by_its_rarest_label(tmp_path):
    from transferkit.data.sources import ImageSet, load_splits

    items = [np.zeros((8, 8, 3), np.uint8)] * 121
    labels = [["a", "b"] if i % 2 else ["a"] for i in range(120)] + [[]]  # b on 60, one image without labels
    splits = load_splits(ImageSet(items, labels))
    assert splits.val is not None and splits.test is not None  # 60 of the rarest label: not small data
    few = load_splits(ImageSet(items[:41], labels[:40] + [[]]))  # b on 20: small, cross-validated
    assert few.val is None and "smallest label: 20 examples" in few.how


def test_thresholds_are_for_multilabel_data(colour_folder, tiny_backbone):
    with pytest.raises(TransferkitError, match="--thresholds sets where a multi-label model says yes"):
        transferkit.fit(colour_folder, backbone=tiny_backbone, strategy="linear", thresholds=0.5)


def test_detector_evaluate_takes_no_tta_in_one_line(box_folder, tiny_backbone, tmp_path):
    from typer.testing import CliRunner

    from transferkit.bundle.detection import DetectionModel
    from transferkit.cli import app
    from transferkit.heads.detection import build_detector

    torch.manual_seed(0)
    DetectionModel(build_detector(tiny_backbone, ["Bag", "Trouser"], 64, pretrained=True),
                   ["Bag", "Trouser"]).save(tmp_path / "det")
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "det"), str(box_folder), "--tta"])
    assert r.exit_code == 2 and "--tta applies to image and audio classifiers" in r.output
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "det"), str(box_folder), "--no-tta", "--json"])
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["finetune", "gradual", "scratch", "auto"])
def test_every_image_strategy_trains_multilabel(strategy, colour_pairs, tiny_backbone, tmp_path):
    from test_tasks import FAST

    model = transferkit.fit(colour_pairs, backbone=tiny_backbone, strategy=strategy, label_sep="|", seed=0,
                            out=tmp_path / "run", **FAST[strategy])
    m = model.metrics
    assert model.multi_label and len(model.threshold) == 3 and m["test"]["map"] is not None
    assert all(np.isfinite(e["train_loss"]) for e in m["history"]["epochs"])
    inputs = sorted(str(p) for p in colour_pairs.parent.glob("img_04*.png"))
    again = transferkit.load(tmp_path / "run" / "model")
    np.testing.assert_allclose(again.predict_proba(inputs), model.predict_proba(inputs), atol=1e-5)
    assert [r["labels"] for r in again.predict(inputs)] == [r["labels"] for r in model.predict(inputs)]


def test_several_findings_per_image_train_per_finding(tmp_path, tiny_backbone):
    rows = write_colour_pairs(tmp_path / "p", 40, seed=4)
    manifest = tmp_path / "p" / "findings.csv"
    with manifest.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "patient_id"])
        for i, (name, labels) in enumerate(rows):
            w.writerow([name, "|".join(labels), f"p{i // 2}"])  # two images per patient
    model = transferkit.fit(manifest, backbone=tiny_backbone, strategy="linear", label_sep="|", out=tmp_path / "run")
    m = model.metrics
    assert m["task"] == "medical-classification" and model.multi_label and model.clinical is None
    assert len(model.threshold) == 3 and m["val"]["per_class"]["red"]["auroc"] is not None
    assert not (tmp_path / "run" / "roc.png").exists()  # no one positive class to draw
    with pytest.raises(TransferkitError, match="--positive choose one finding's operating point"):
        transferkit.fit(manifest, backbone=tiny_backbone, strategy="linear", label_sep="|", positive="red")
