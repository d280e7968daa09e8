"""Further fine-tuning from a bundle (``fit --init-from``): the start, head growth, replay, forgetting, lineage, and
L2-SP; tiny random backbones, seconds each."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import transferkit
from transferkit.errors import TransferkitError

COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200), "yellow": (200, 200, 30)}


def write(folder: Path, names: list[str], n: int, seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in names:
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = np.clip(np.array(COLOURS[c]) + rng.normal(0, 25, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / c / f"{c}{i}.png")


@pytest.fixture(scope="module")
def bundle_a(tmp_path_factory, tiny_backbone) -> tuple[Path, Path]:
    """Bundle A (red, green; trained at 40 px) and the folder of its data (train/ and test/)."""
    root = tmp_path_factory.mktemp("continued")
    write(root / "old" / "train", ["red", "green"], 12, 0)
    write(root / "old" / "test", ["red", "green"], 4, 1)
    transferkit.fit(str(root / "old"), backbone=tiny_backbone, strategy="finetune", epochs=2, image_size=40,
                    out=root / "A")
    return root / "A" / "model", root / "old"


@pytest.fixture
def new_data(tmp_path) -> Path:
    """Two new classes (blue, yellow): train/ 8 each, test/ 4 each."""
    write(tmp_path / "new" / "train", ["blue", "yellow"], 8, 2)
    write(tmp_path / "new" / "test", ["blue", "yellow"], 4, 3)
    return tmp_path / "new"


def test_linear_keeps_the_bundle_backbone_preprocessing_and_rows_of_absent_classes(bundle_a, new_data, tmp_path):
    a_path, old = bundle_a
    a = transferkit.load(a_path)
    b = transferkit.fit(str(new_data), init_from=a_path, strategy="linear", out=tmp_path / "B")
    # the bundle's classes first, in its order, then the new ones
    assert b.classes == [*a.classes, "blue", "yellow"]
    assert b.preprocess.input_size == a.preprocess.input_size == (40, 40)  # not the backbone's default 32
    wa, wb = load_file(str(a_path / "model.safetensors")), load_file(str(tmp_path / "B/model/model.safetensors"))
    for name, t in wa.items():  # the probe leaves the backbone as the bundle had it
        if name.startswith("backbone."):
            assert torch.equal(t, wb[name]), name
    # red and green have no example here: their rows are the bundle's, so they stay predictable
    assert torch.allclose(wb["head.fc.weight"][:2], wa["head.fc.weight"], atol=1e-5)
    assert torch.allclose(wb["head.fc.bias"][:2], wa["head.fc.bias"], atol=1e-5)
    probs = b.predict_proba([str(p) for p in sorted((old / "test" / "red").glob("*.png"))])
    assert probs.shape == (4, 4) and np.all(probs[:, :2].sum(1) > 0.01)
    c = b.metrics["continued"]
    assert c["new_classes"] == ["blue", "yellow"] and c["missing_from_new_data"] == a.classes
    assert c["replay"] is None and c["forgetting"] is None
    report = (tmp_path / "B" / "report.md").read_text()
    assert "## Continued from a bundle" in report and "Forgetting: not measured" in report
    config = json.loads((tmp_path / "B/model/config.json").read_text())
    (entry,) = config["lineage"]
    assert entry["bundle"] == str(a_path.resolve()) and entry["classes"] == a.classes
    assert entry["data"]["train"] == 24 and entry["scores"]["on"] == "test"
    card = (tmp_path / "B/model/model_card.md").read_text()
    assert "## Lineage" in card and str(a_path.resolve()) in card


def test_a_probe_bundle_head_is_tempered_before_fine_tuning(bundle_a, new_data, tmp_path, tiny_backbone):
    a_path, old = bundle_a
    transferkit.fit(str(old), backbone=tiny_backbone, strategy="linear", image_size=40, out=tmp_path / "P")
    probe = transferkit.load(tmp_path / "P" / "model").classifier.head.fc.weight
    from transferkit.tasks import get_task
    from transferkit.tasks.base import RunSettings
    from transferkit.engine.accel import make_accelerator

    task = get_task("image")
    settings = RunSettings(init_from=tmp_path / "P" / "model", strategy="finetune")
    prepared = task.prepare(str(new_data), None, settings, task.options())
    train = task.train_task(prepared, settings, task.options(), make_accelerator("no", cpu=True), None, None)
    head, scale = train.start.for_training(train)
    assert 0 < scale <= 1
    # one factor for every row: the bundle's decisions among its own classes are unchanged
    assert torch.allclose(head.fc.weight[:2], probe * scale, atol=1e-6)
    from transferkit.engine.features import extract_features
    from transferkit.strategies.base import START_LOGIT_REACH, START_LOGIT_SPREAD

    features, _ = extract_features(train.backbone, train.train, train.accelerator)
    logits = (features @ head.fc.weight[:2].T + head.fc.bias[:2]).detach()
    reach = float(head.fc.weight[:2].detach().norm(dim=1).max() * features.norm(dim=1).mean())
    assert float(logits.std()) <= START_LOGIT_SPREAD + 1e-4 and reach <= START_LOGIT_REACH + 1e-3


def test_finetune_starts_from_the_bundle_head_and_replay_and_old_test_are_reported(bundle_a, new_data, tmp_path):
    a_path, old = bundle_a
    b = transferkit.fit(str(new_data), init_from=a_path, strategy="finetune", epochs=2, replay=str(old),
                        replay_fraction=0.25, old_test=str(old / "test"), l2sp=0.1, out=tmp_path / "B")
    m = b.metrics
    assert m["details"]["head_from"] == "bundle" and m["details"]["config"]["l2sp"] == 0.1
    c = m["continued"]
    # 12 training images of each old class: ceil(0.25 * 12) = 3 each join the 16 new ones
    assert c["replay"]["per_class"] == {"green": 3, "red": 3} and c["replay"]["examples"] == 6
    assert m["data"]["train_per_class"] == {"blue": 8, "green": 3, "red": 3, "yellow": 8}
    assert c["missing_from_new_data"] == ["green", "red"]  # in the new data; replay brings them into training
    f = c["forgetting"]
    assert f["n"] == 8 and f["metric"] == "accuracy"
    before = transferkit.load(a_path).evaluate(str(old / "test"))["accuracy"]
    after = b.evaluate(str(old / "test"))["accuracy"]
    assert f["before"]["accuracy"] == pytest.approx(before) and f["after"]["accuracy"] == pytest.approx(after)
    assert f["forgotten"] == pytest.approx(before - after)
    report = (tmp_path / "B" / "report.md").read_text()
    assert "Replay: 6 old training examples" in report and "**Forgetting**" in report
    assert "L2-SP: strength 0.1" in report
    # the lineage goes on: C from B names B first, then A
    c_model = transferkit.fit(str(new_data), init_from=tmp_path / "B" / "model", strategy="linear",
                              out=tmp_path / "C")
    chain = c_model.meta["lineage"]
    assert [e["bundle"] for e in chain] == [str((tmp_path / "B/model").resolve()), str(a_path.resolve())]


def test_same_classes_continue_and_the_head_starts_where_the_bundle_ended(bundle_a, tmp_path):
    a_path, old = bundle_a
    write(tmp_path / "more" / "train", ["red", "green"], 6, 7)
    from transferkit.tasks import get_task
    from transferkit.tasks.base import RunSettings
    from transferkit.engine.accel import make_accelerator

    task = get_task("image")
    settings = RunSettings(init_from=a_path, strategy="finetune")
    options = task.options()
    prepared = task.prepare(str(tmp_path / "more"), None, settings, options)
    assert prepared.classes == ["green", "red"] and prepared.start.new_classes == []
    accelerator = make_accelerator("no", cpu=True)
    train = task.train_task(prepared, settings, options, accelerator, None, None)
    a = transferkit.load(a_path)
    assert train.start.kept == [0, 1]
    assert torch.equal(train.start.head.fc.weight, a.classifier.head.fc.weight)
    for (n, p), q in zip(train.backbone.named_parameters(), a.classifier.backbone.parameters(), strict=True):
        assert torch.equal(p, q), n
    # --resume checks which bundle it was (its weights), not only where it lay
    from transferkit.io import file_digest
    from transferkit.rundir import run_identity

    identity = run_identity(task, settings, options, prepared, None, accelerator)["settings"]
    assert identity["init_from_sha256"] == file_digest(a_path / "model.safetensors") and "replay" not in identity


def test_one_new_class_with_replay_and_old_classes_in_the_new_test(bundle_a, tmp_path):
    a_path, old = bundle_a
    write(tmp_path / "one" / "train", ["blue"], 6, 11)
    write(tmp_path / "one" / "test", ["blue", "red"], 3, 12)  # red: the bundle's, absent from the new training
    with pytest.raises(TransferkitError, match="one class only \\(blue\\): add --replay"):
        transferkit.fit(str(tmp_path / "one"), init_from=a_path, strategy="linear")
    b = transferkit.fit(str(tmp_path / "one"), init_from=a_path, strategy="linear", replay=str(old),
                        replay_fraction=0.25)
    assert b.classes == ["green", "red", "blue"] and b.metrics["test"]["n"] == 6
    assert b.metrics["data"]["train_per_class"] == {"blue": 6, "green": 3, "red": 3}
    with pytest.raises(TransferkitError, match="scratch would replace"):
        transferkit.fit(str(tmp_path / "one"), init_from=a_path, strategy="scratch", replay=str(old))


def test_replay_reaches_validation_and_leaves_the_bundle_test_files_out(bundle_a, tmp_path):
    from transferkit.tasks import get_task
    from transferkit.tasks.base import RunSettings

    a_path, old = bundle_a
    write(tmp_path / "many" / "train", ["blue", "yellow"], 60, 13)  # 60 a class: not small data, a validation split
    task = get_task("image")
    settings = RunSettings(init_from=a_path, replay=str(old), replay_fraction=0.5)
    start, splits = task.start_and_splits(str(tmp_path / "many"), settings, task.options())
    assert start.replayed_examples == 12 and start.replayed_to_val > 0  # ceil(0.5 * 12) per class: 6 + 6
    val_labels = set(splits.val.labels)
    assert {"red", "green"} <= val_labels and {"red", "green"} <= set(splits.train.labels)
    # a copy of A's data whose test files are recorded in A: those are never replayed
    tested = set(json.loads((a_path / "config.json").read_text())["test_files"])
    replayed = {str(Path(p).resolve()) for p in splits.train.items + splits.val.items}
    assert tested and not tested & replayed
    mixed = tmp_path / "mixed"  # A's data in one folder, the test images copied under other names
    import shutil

    for part in ("train", "test"):
        for c in ("red", "green"):
            (mixed / c).mkdir(parents=True, exist_ok=True)
            for f in (old / part / c).glob("*.png"):
                shutil.copy(f, mixed / c / f"{part}-{f.name}")
    start, splits = task.start_and_splits(str(tmp_path / "many"), RunSettings(init_from=a_path, replay=str(mixed),
                                                                                 replay_fraction=1.0), task.options())
    replayed = {Path(p).name for p in splits.train.items + splits.val.items}
    assert start.replayed_examples == 24 and not any(n.startswith("test-") for n in replayed)  # 8 of 32 left out


def test_l2sp_penalty_pulls_toward_the_start_and_replaces_decay():
    from transferkit.engine.optim import L2SP, param_groups, without_decay_on

    layer = torch.nn.Linear(3, 2)
    head = torch.nn.Linear(2, 2)
    penalty = L2SP(layer, alpha=0.5)
    assert penalty().item() == 0.0
    with torch.no_grad():
        layer.weight += 2.0
    value = penalty()
    assert value.item() == pytest.approx(0.5 * 0.5 * 4.0 * 6)  # alpha/2 * sum of 2^2 over 6 weights
    value.backward()
    assert torch.allclose(layer.weight.grad, torch.full((2, 3), 0.5 * 2.0))  # alpha * (w - w0)
    layer.weight.requires_grad_(False)  # frozen (gradual unfreezing): only the bias's term, which is 0
    assert penalty().item() == 0.0
    layer.weight.requires_grad_(True)
    groups = without_decay_on(param_groups([list(layer.parameters())], list(head.parameters()), 1e-3, 0.05),
                              penalty)
    decays = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert decays[id(layer.weight)] == 0.0 and decays[id(head.weight)] == 0.05


def test_l2sp_refusals(colour_folder, tiny_backbone):
    with pytest.raises(TransferkitError, match="scratch starts from random"):
        transferkit.fit(str(colour_folder), backbone=tiny_backbone, strategy="scratch", l2sp=0.1)
    with pytest.raises(TransferkitError, match="l2sp"):
        transferkit.fit(str(colour_folder), backbone=tiny_backbone, strategy="linear", l2sp=0.1)
    with pytest.raises(TransferkitError, match="l2sp"):
        transferkit.fit(str(colour_folder), backbone=tiny_backbone, strategy="finetune", l2sp=math.nan)


def test_bad_starts_are_refused_in_one_line(bundle_a, new_data, tmp_path, text_folder, tiny_backbone):
    a_path, old = bundle_a
    cases = [
        ({"init_from": tmp_path / "nowhere"}, "no such bundle folder"),
        ({"init_from": a_path, "image_size": 64}, "keeps the bundle's preprocessing \\(40 px\\); leave image_size out"),
        ({"init_from": a_path, "backbone": "resnet18"}, "not resnet18: leave --backbone out"),
        ({"init_from": a_path, "backbone": "resnet18,efficientnet_lite0"}, "leave the list of backbones out"),
        ({"replay": str(old)}, "need --init-from"),
        ({"old_test": str(old / "test")}, "need --init-from"),
        ({"init_from": a_path, "replay_fraction": 0}, "replay_fraction"),
        ({"init_from": a_path, "old_test": str(new_data / "test")}, "--old-test .*blue"),
        ({"init_from": a_path / "config.json"}, "is a file, not a bundle folder"),
        ({"init_from": a_path, "out": a_path.parent}, "holds the bundle --init-from continues"),
        ({"init_from": a_path, "replay": str(new_data)}, "holds no example of the classes of --init-from"),
        ({"replay_fraction": 0.5}, "give --replay OLD_DATA too"),
        ({"init_from": a_path, "old_test": str(tmp_path / "gone")}, "--old-test .*gone: no such file"),
    ]
    for kwargs, message in cases:
        with pytest.raises(TransferkitError, match=message):
            transferkit.fit(str(new_data), strategy="linear", **kwargs)
    other = tmp_path / "other"
    write(other / "train", ["red", "green"], 4, 5)
    from PIL import Image

    (other / "train" / "purple").mkdir()
    for i in range(4):
        Image.new("RGB", (24, 24), (120, 0, 120)).save(other / "train" / "purple" / f"p{i}.png")
    with pytest.raises(TransferkitError, match="--replay .* purple, which neither"):
        transferkit.fit(str(new_data), strategy="linear", init_from=a_path, replay=str(other))
    with pytest.raises(TransferkitError, match="holds an image-classification model, but these data are text"):
        transferkit.fit(str(text_folder), strategy="linear", init_from=a_path)
    assert (a_path / "model.safetensors").is_file()  # the refused --out did not touch the bundle
    # the bundle's own value of a preprocessing option may be given again
    again = transferkit.fit(str(new_data), strategy="linear", init_from=a_path, image_size=40)
    assert again.preprocess.input_size == (40, 40)
    tampered = tmp_path / "tampered"
    import shutil

    shutil.copytree(a_path, tampered)
    config = json.loads((tampered / "config.json").read_text())
    (tampered / "config.json").write_text(json.dumps({**config, "metrics": "x"}))
    with pytest.raises(TransferkitError, match="metrics must be"):
        transferkit.fit(str(new_data), strategy="linear", init_from=tampered)


def test_text_and_audio_continue_from_their_bundles(tmp_path, text_folder, tiny_text_backbone, audio_folder):
    from conftest import write_tones

    a = transferkit.fit(str(text_folder), backbone=tiny_text_backbone, strategy="linear", max_length=32,
                        out=tmp_path / "TA")
    more = tmp_path / "more-texts" / "train"
    for label, words in (("cooking", "oven bake flour salt pan boil fry recipe"),
                         ("travel", "train flight hotel ticket airport beach map")):
        (more / label).mkdir(parents=True)
        rng = np.random.default_rng(0)
        for i in range(8):
            (more / label / f"{i}.txt").write_text(" ".join(rng.choice(words.split(), 8)))
    b = transferkit.fit(str(more.parent), init_from=tmp_path / "TA" / "model", strategy="finetune", epochs=1,
                        replay=str(text_folder), replay_fraction=0.2, old_test=str(text_folder / "test"))
    assert b.classes == [*a.classes, "cooking", "travel"] and b.preprocess.max_length == 32
    assert b.metrics["continued"]["replay"]["examples"] == 6 and b.metrics["continued"]["forgetting"]["n"] == 12
    with pytest.raises(TransferkitError, match="leave max_length out"):
        transferkit.fit(str(more.parent), init_from=tmp_path / "TA" / "model", max_length=16)

    audio = transferkit.fit(str(audio_folder), strategy="linear", clip_seconds=0.5, out=tmp_path / "AA")
    new = tmp_path / "new-tones"
    write_tones(new / "train", 4, seed=5)
    continued = transferkit.fit(str(new), init_from=tmp_path / "AA" / "model", strategy="linear")
    assert continued.classes == audio.classes and continued.preprocess.clip_seconds == 0.5
    assert continued.preprocess.mean == audio.preprocess.mean  # the bundle's spectrogram statistics, not new ones


def test_cli_continues_from_a_bundle(bundle_a, new_data, tmp_path):
    from typer.testing import CliRunner

    from transferkit.cli import app

    a_path, old = bundle_a
    result = CliRunner().invoke(app, ["fit", str(new_data), "--init-from", str(a_path), "--strategy", "linear",
                                      "--replay", str(old), "--replay-fraction", "0.1", "--old-test",
                                      str(old / "test"), "--out", str(tmp_path / "B"), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "B" / "metrics.json").read_text())
    assert metrics["continued"]["replay"]["examples"] == 4  # ceil(0.1 * 12) = 2 per old class
    bad = CliRunner().invoke(app, ["fit", str(new_data), "--init-from", str(tmp_path / "missing"), "--out",
                                   str(tmp_path / "C")])
    assert bad.exit_code == 2 and "no such bundle folder" in bad.output and "Traceback" not in bad.output


def test_a_detector_continues_with_a_new_class(box_folder, tiny_backbone, tmp_path):
    from transferkit.datasets.composed import build_composed_detection

    transferkit.fit(box_folder, backbone=tiny_backbone, strategy="finetune", epochs=1, batch_size=4,
                    out=tmp_path / "A")
    a = transferkit.load(tmp_path / "A" / "model")
    new = tmp_path / "new-boxes"
    build_composed_detection(new, train_images=8, test_images=4, classes=("Bag", "Sneaker"), image_size=80,
                             objects=(1, 2), scale=(0.3, 0.5), seed=3)
    b = transferkit.fit(new, init_from=tmp_path / "A" / "model", strategy="finetune", epochs=1, batch_size=4,
                        replay=str(box_folder), replay_fraction=0.25, old_test=str(box_folder),
                        out=tmp_path / "B")
    assert b.classes == [*a.classes, "Sneaker"] and b.image_size == a.image_size  # 96 px from A, not 80
    head = b.detector.model.head.classification_head
    assert head.cls_logits.out_channels == len(b.classes) + 1 and b.detector.config["num_classes"] == 3
    # growing keeps the trained outputs of the old classes (checked on A's own detector, before any training)
    import copy

    grown = copy.deepcopy(a.detector)
    old_layer = a.detector.model.head.classification_head.cls_logits
    grown.grow(3)
    new_layer = grown.model.head.classification_head.cls_logits
    assert torch.equal(new_layer.weight[:3], old_layer.weight) and torch.equal(new_layer.bias[:3], old_layer.bias)
    assert torch.allclose(new_layer.bias[3:], torch.tensor(-4.59))
    c = b.metrics["continued"]
    assert c["new_classes"] == ["Sneaker"] and c["replay"]["examples"] > 0
    assert c["forgetting"]["metric"] == "map" and c["forgetting"]["n"] == 6
    assert "## Continued from a bundle" in (tmp_path / "B" / "report.md").read_text()
    again = transferkit.load(tmp_path / "B" / "model")  # the grown detector saves and loads
    assert again.classes == b.classes and again.meta["lineage"][0]["classes"] == a.classes
    with pytest.raises(TransferkitError, match="object-detection model, but these data are"):
        transferkit.fit(str(tmp_path / "B"), init_from=tmp_path / "A" / "model", modality="image")


def test_a_multi_label_text_model_continues_and_forgetting_is_map(tmp_path, tiny_text_backbone, text_folder):
    import csv

    from conftest import topic_texts

    def table(path: Path, rows: list[tuple[str, str]]) -> Path:
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows(rows)
        return path

    rows = topic_texts(10, seed=4)  # each text one topic; every third also "short"
    old = table(tmp_path / "old.csv", [(t, f"{y}|short" if i % 3 == 0 else y) for i, (t, y) in enumerate(rows)])
    a = transferkit.fit(str(old), backbone=tiny_text_backbone, strategy="linear", label_sep="|", out=tmp_path / "A")
    assert a.multi_label
    new = table(tmp_path / "new.csv", [(t + " recipe oven", f"{y}|cooking") for t, y in topic_texts(6, seed=5)])
    b = transferkit.fit(str(new), init_from=tmp_path / "A" / "model", strategy="linear", label_sep="|",
                        old_test=str(old))
    assert b.multi_label and b.classes == [*a.classes, "cooking"]
    f = b.metrics["continued"]["forgetting"]
    assert f["metric"] == "map" and f["n"] == 30 and 0 <= f["after"]["map"] <= 1 and f["multi_label"]
    with pytest.raises(TransferkitError, match="multi-label model, but these data are single-label"):
        transferkit.fit(str(text_folder), init_from=tmp_path / "A" / "model", strategy="linear")
