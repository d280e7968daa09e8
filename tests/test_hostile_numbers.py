"""Hostile input, numbers and labels: non-finite options, losses and samples, labels that are not labels, a COCO
export's folder layout, long audio against the budget, and a model at chance. Each case pins the exact answer:
exit code, the one line, no traceback, nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import transferkit
from transferkit.cli import app
from transferkit.errors import DataError, TransferkitError

from conftest import write_colour_images, write_tones

runner = CliRunner()


def _fails_with_one_line(r, expected: str) -> str:
    """The CLI answered ``expected`` as its last line, exit 2, without a traceback; returns that line."""
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    last = r.output.strip().splitlines()[-1]
    assert last.startswith("error: ") and expected in last, r.output
    return last


# --------------------------------------------------------------------------- options: refused before any work

@pytest.mark.parametrize("args, expected", [
    (["--lr", "nan"], "lr nan is out of range: use a finite number above 0, e.g. 1e-4."),
    (["--lr", "inf"], "lr inf is out of range: use a finite number above 0"),
    (["--lr", "-1"], "lr -1.0 is out of range: use a finite number above 0"),
    (["--lr", "0"], "lr 0.0 is out of range: use a finite number above 0"),
    (["--batch-size", "0"], "batch_size 0 is out of range: use a whole number from 1 to 2147483647."),
    (["--batch-size", "-3"], "batch_size -3 is out of range: use a whole number from 1 to 2147483647."),
    (["--epochs", "0"], "epochs 0 is out of range: use a whole number from 1 to 2147483647."),
    (["--epochs", "-1"], "epochs -1 is out of range: use a whole number from 1 to 2147483647."),
    (["--epochs", "9" * 400], "epochs 999999999999... (400 digits) is out of range: use a whole number from 1 to "
                              "2147483647."),
    (["--budget", "0s"], "budget 0.0 is out of range: use a finite number above 0 and up to 1000000000, e.g. 600 "
                         "(seconds), or 90s, 10m, 1h30m."),
    (["--val-fraction", "1"], "val_fraction 1.0 is out of range: use a finite number from 0 to below 1, e.g. 0.2."),
    (["--test-fraction", "nan"], "test_fraction nan is out of range: use a finite number from 0 to below 1"),
    (["--cv", "1"], "cv 1 is out of range: use a whole number from 2 to"),
    (["--val-fraction", "0.6", "--test-fraction", "0.5"],
     "val_fraction 0.6 and test_fraction 0.5 leave nothing to train on: together they must stay below 1"),
    (["--image-size", "0"], "image_size 0 is out of range: use a whole number from 32 to 2048, e.g. 224."),
    (["--image-size", "3000"], "image_size 3000 is out of range: use a whole number from 32 to 2048, e.g. 224."),
    (["--seed", "-1"], "seed -1 is out of range: use a whole number from 0 to 4294967295, e.g. 0."),
    (["--seed", str(2**32)], "seed 4294967296 is out of range: use a whole number from 0 to 4294967295, e.g. 0."),
    (["--seed", "9" * 400], "seed 999999999999... (400 digits) is out of range: use a whole number from 0 to"),
])
def test_out_of_range_options_are_refused_before_any_work(colour_folder, tiny_backbone, tmp_path, args, expected):
    out = tmp_path / "run"
    r = runner.invoke(app, ["fit", str(colour_folder), "--backbone", tiny_backbone, "--strategy", "finetune",
                            "--out", str(out), *args])
    _fails_with_one_line(r, expected)
    assert len(r.output.strip().splitlines()) == 1, r.output  # refused before reading a single image
    assert not out.exists()


@pytest.mark.parametrize("option, value, expected", [
    ("weight_decay", float("nan"), "weight_decay nan is out of range: use a finite number, 0 or more."),
    ("layer_decay", 0.0, "layer_decay 0.0 is out of range: use a finite number above 0 and up to 1, e.g. 0.7."),
    ("epochs", True, "epochs True is not a number: use a whole number"),
    ("epochs", 2.5, "epochs 2.5 is not a whole number: use a whole number"),
    ("epochs", 10**400, "epochs 100000000000... (401 digits) is out of range: use a whole number from 1 to"),
    ("lr", "0.1", "lr '0.1' is not a number: use a finite number above 0"),
    ("lr", 10**400, "lr 100000000000... (401 digits) is out of range: use a finite number above 0, e.g. 1e-4."),
    ("seed", 2**32, "seed 4294967296 is out of range: use a whole number from 0 to 4294967295, e.g. 0."),
    ("budget", 10**400, "budget 100000000000... (401 digits) is out of range: use a finite number above 0 and up to"),
    ("cv", 1.5, "cv 1.5 is not a whole number: use a whole number from 2 to"),
    ("val_fraction", "0.2", "val_fraction '0.2' is not a number: use a finite number from 0 to below 1"),
    ("warmup_epochs", float("-inf"), "warmup_epochs -inf is out of range"),
])
def test_python_api_options_are_checked_the_same_way(colour_folder, tiny_backbone, tmp_path, option, value,
                                                     expected):
    with pytest.raises(TransferkitError, match=expected.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        transferkit.fit(colour_folder, backbone=tiny_backbone, strategy="finetune", out=tmp_path / "run",
                        **{option: value})
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("given, expected", [
    ({"lr": float("nan")}, "lr nan is out of range: use a finite number above 0, e.g. 1e-4."),
    ({"weight_decay": -0.5}, "weight_decay -0.5 is out of range: use a finite number, 0 or more, e.g. 0.01."),
    ({"log_every": 0}, "log_every 0 is out of range: use a whole number from 1 to 2147483647."),
    ({"batch_size": 10**400}, "batch_size 100000000000... (401 digits) is out of range: use a whole number from 1 to "
                              "2147483647."),
    ({"seed": 2**32}, "seed 4294967296 is out of range: use a whole number from 0 to 4294967295, e.g. 0."),
    ({"image_size": 3000}, "image_size 3000 is out of range: use a whole number from 8 to 2048, e.g. 224."),
    ({"label_smoothing": 1.0}, "label_smoothing 1.0 is out of range: use a finite number from 0 to below 1, e.g. 0.1."),
])
def test_pretraining_options_are_checked_before_any_work(colour_folder, tiny_backbone, tmp_path, given, expected):
    with pytest.raises(TransferkitError) as err:
        transferkit.pretrain(colour_folder, init=tiny_backbone, out=tmp_path / "bb", steps=2, **given)
    assert str(err.value) == expected
    assert not (tmp_path / "bb").exists()


# ------------------------------------------------------------------------------- a loss that stops being a number

def test_a_diverging_fit_stops_at_the_first_non_finite_loss_and_writes_nothing(colour_folder, tiny_backbone,
                                                                                tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(app, ["fit", str(colour_folder), "--backbone", tiny_backbone, "--strategy", "finetune",
                            "--epochs", "3", "--lr", "1e30", "--out", str(out)])
    last = _fails_with_one_line(r, "Training diverged: the loss became ")
    import re

    assert re.search(r"became (nan|inf|-inf) at epoch \d+, batch \d+ \(learning rate 1e\+30\); nothing was saved "
                     r"from it: lower --lr \(e\.g\. ten times\) and run again\.$", last), last
    assert not (out / "model").exists() and not (out / "metrics.json").exists() and not (out / "report.md").exists()


def test_diverging_pretraining_stops_with_its_step_and_writes_no_backbone(colour_folder, tiny_backbone, tmp_path):
    out = tmp_path / "bb"
    with pytest.raises(TransferkitError, match=r"Training diverged: the loss became \S+ at step \d+ \(epoch 1, batch "
                                               r"\d+\) \(learning rate 1e\+30\)"):
        transferkit.pretrain(colour_folder, init=tiny_backbone, out=out, steps=6, batch_size=8, lr=1e30,
                             precision="no", workers=0)
    assert not (out / "backbone.safetensors").exists()


# ------------------------------------------------------------------------------------- audio holding NaN or inf

def _write_float_wav(path: Path, bad: float) -> Path:
    import soundfile as sf

    x = (0.3 * np.sin(2 * np.pi * 440 * np.arange(8000) / 16000)).astype(np.float32)
    x[1234] = bad
    sf.write(str(path), x, 16000, subtype="FLOAT")
    return path


@pytest.fixture(scope="module")
def tone_bundle(tmp_path_factory, tiny_backbone) -> Path:
    root = tmp_path_factory.mktemp("tones")
    write_tones(root / "data" / "train", 6, seed=0)
    out = root / "run"
    transferkit.fit(root / "data", backbone=tiny_backbone, strategy="linear", out=out, val_fraction=0.0,
                    test_fraction=0.0)
    return out / "model"


@pytest.mark.parametrize("bad, word", [(float("nan"), "NaN"), (float("inf"), "infinite")])
def test_predict_refuses_a_float_wav_holding_nan_or_inf(tone_bundle, tmp_path, bad, word):
    wav = _write_float_wav(tmp_path / "broken.wav", bad)
    r = runner.invoke(app, ["predict", str(tone_bundle), str(wav), "--json"])
    last = _fails_with_one_line(r, f"Audio file {wav} holds {word} samples (first at sample 1234): re-export it")
    assert "NaN" not in r.output.replace(last, "") and '"probability"' not in r.output
    with pytest.raises(DataError, match="holds NaN samples"):
        transferkit.load(tone_bundle).predict([np.where(np.arange(8000) == 5, np.nan, 0.1).astype(np.float32)])


@pytest.mark.parametrize("rate", [1, 99, 800_000])
def test_predict_refuses_a_recording_declaring_an_absurd_sample_rate(tone_bundle, tmp_path, rate):
    import soundfile as sf

    wav = tmp_path / "tiny.wav"
    sf.write(str(wav), np.zeros(8000, dtype=np.float32) + 0.1, rate)  # 16 kB; at 1 Hz once 4.3 GB when resampled
    r = runner.invoke(app, ["predict", str(tone_bundle), str(wav), "--json"])
    _fails_with_one_line(r, f"Audio file {wav} declares a sample rate of {rate} Hz, outside 100 to 768,000 Hz: "
                            "re-export it at its real rate or remove it (or pass --skip-bad).")


def test_fit_refuses_nan_audio_and_skip_bad_skips_it(tiny_backbone, tmp_path):
    root = tmp_path / "tones"
    write_tones(root, 6, seed=0)
    wav = _write_float_wav(root / "high" / "nan.wav", float("nan"))
    with pytest.raises(DataError, match=f"Audio file {wav} holds NaN samples"):
        transferkit.fit(root, backbone=tiny_backbone, strategy="linear", val_fraction=0.0, test_fraction=0.0)
    model = transferkit.fit(root, backbone=tiny_backbone, strategy="linear", val_fraction=0.0, test_fraction=0.0,
                            skip_bad=True)
    assert model.metrics["data"]["audio"]["train"]["skipped"] == 1 and np.isfinite(model.metrics["val"]["log_loss"])


# ----------------------------------------------------------------------------------- labels that are not labels

@pytest.fixture
def colour_files(tmp_path) -> list[Path]:
    write_colour_images(tmp_path / "img", 4)
    return sorted((tmp_path / "img").rglob("*.png"))


@pytest.mark.parametrize("cell", ["NaN", "nan", "", "null", "\u200b", "\u00a0\u200b\ufeff"])
def test_a_csv_label_that_is_no_label_is_refused_with_its_line(colour_files, tmp_path, cell):
    from transferkit.data.sources import load_splits

    rows = [f"{p},{cell if i == 5 else p.parent.name}" for i, p in enumerate(colour_files)]
    (tmp_path / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    held = "is empty" if cell == "" else f"is {cell!r}"
    with pytest.raises(DataError) as err:
        load_splits(tmp_path / "labels.csv")
    assert str(err.value) == (f"{tmp_path / 'labels.csv'} line 7: the label ('label') {held}, which is no label: fill "
                              "it in or remove the row.")


def test_jsonl_null_and_mixed_label_types_are_named(colour_files, tmp_path):
    from transferkit.data.sources import load_splits

    def write(labels):
        path = tmp_path / "labels.jsonl"
        path.write_text("".join(json.dumps({"path": str(p), "label": y}) + "\n"
                                for p, y in zip(colour_files, labels, strict=True)))
        return path

    names = [p.parent.name for p in colour_files]
    with pytest.raises(DataError, match=r"labels.jsonl line 3: the label \('label'\) is empty \(null\), which is no "
                                        r"label"):
        load_splits(write(names[:2] + [None] + names[3:]))
    numbers = [1 if n == "blue" else 2 if n == "green" else 3 for n in names]
    with pytest.raises(DataError) as err:
        load_splits(write(numbers[:5] + ["2"] + numbers[6:]))
    path = tmp_path / "labels.jsonl"
    assert str(err.value) == (f"The 'label' labels mix types: {path} line 1 has the whole number 1, {path} line 6 the "
                              "text '2'; write every label the same way (all as text, e.g. \"1\").")
    assert load_splits(write(numbers)).classes == ["1", "2", "3"]  # numbers alone are fine
    with pytest.raises(DataError) as err:
        load_splits(write(names[:3] + ["red\nline2"] + names[4:]))
    assert str(err.value) == (f"{path} line 4: the label 'red\\nline2' ('label') holds a line break or another "
                              "control character, which would break every report and table it appears in: write it on "
                              "one line.")


def test_text_labels_none_nan_and_mixed_types_are_refused(tmp_path):
    texts = ["goal match team", "bank market shares", "rain storm wind", "coach league score"]
    for bad, held in ((None, "is empty (null)"), (float("nan"), "is nan"), ("NaN", "is 'NaN'")):
        with pytest.raises(DataError) as err:
            transferkit.fit(texts, labels=["sport", bad, "weather", "sport"])
        assert str(err.value) == (f"the text list row 1: the label ('label') {held}, which is no label: fill it in or "
                                  "remove the row (or pass --skip-bad).")
    with pytest.raises(DataError, match=r"The 'label' labels mix types: the text list row 0 has the whole number 1, "
                                        r"the text list row 1 the text '1'"):
        transferkit.fit(texts, labels=[1, "1", 2, 1])
    (tmp_path / "t.csv").write_text("text,topic\ngoal match,sport\nbank market,null\n")
    from transferkit.data.text import load_text_splits

    with pytest.raises(DataError, match=r"t.csv line 3: the label \('topic'\) is 'null', which is no label"):
        load_text_splits(tmp_path / "t.csv")


def test_an_image_set_with_missing_labels_is_refused(colour_files):
    from transferkit.data.sources import ImageSet, load_splits

    labels = [p.parent.name for p in colour_files]
    labels[4] = float("nan")
    with pytest.raises(DataError, match=r"label #4 of the ImageSet: the label \('labels'\) is nan, which is no label"):
        load_splits(ImageSet(list(colour_files), labels))


# ------------------------------------------------------------------------- a COCO export: annotations.json + images/

def test_a_folder_holding_its_coco_file_beside_images_is_read_as_coco(box_folder, tmp_path):
    from transferkit.api import resolve
    from transferkit.data.boxes import detect_box_format, load_box_splits

    export = tmp_path / "export"
    shutil.copytree(box_folder / "train", export / "images")
    shutil.copy(box_folder / "annotations" / "instances_train.json", export / "annotations.json")
    assert detect_box_format(export) == "coco" and resolve(str(export))[0].name == "detection"
    splits = load_box_splits(export, val_fraction=0.25, test_fraction=0.25, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 4, 4)
    assert splits.classes == ["Trouser", "Bag"] and splits.format == "coco"

    # per-split files in the folder itself: train.json and test.json
    (export / "annotations.json").rename(export / "train.json")
    shutil.copytree(box_folder / "test", export / "images" / "test")
    shutil.copy(box_folder / "annotations" / "instances_test.json", export / "test.json")
    splits = load_box_splits(export, val_fraction=0.25, seed=0)
    assert len(splits.test) == 6 and len(splits.train) + len(splits.val) == 16

    # several files that name no split: which one is meant cannot be guessed
    shutil.copy(export / "train.json", export / "more.json")
    with pytest.raises(DataError, match=r"export holds several COCO files \(more.json, test.json, train.json\): pass "
                                        r"the one to read"):
        load_box_splits(export)


# -------------------------------------------------------------------------------- long audio against the budget

def test_a_long_test_recording_is_named_and_counted_against_the_budget(tiny_backbone, tmp_path):
    import soundfile as sf

    root = tmp_path / "tones"
    write_tones(root / "train", 6, seed=0)
    write_tones(root / "test", 2, seed=1)
    rng = np.random.default_rng(0)
    long_wav = root / "test" / "high" / "long.wav"
    sf.write(str(long_wav), (0.3 * np.sin(np.arange(16000 * 150) * 0.2)
                             + 0.01 * rng.standard_normal(16000 * 150)).astype(np.float32), 16000)
    out = tmp_path / "run"
    r = runner.invoke(app, ["fit", str(root), "--backbone", tiny_backbone, "--strategy", "finetune", "--budget",
                            "0.01", "--out", str(out)])
    last = _fails_with_one_line(r, "Scoring the validation and test recordings (")
    assert f"the longest, {long_wav}, lasts 2m30s) would take about" in last
    assert last.endswith("more than the whole budget (0.01 s): cut long recordings into clips, or raise --budget.")
    assert f"1 test recording(s) last over 60 s, e.g. {long_wav} (2m30s, " in " ".join(r.output.split())
    assert not out.exists()


def test_a_long_test_recording_that_fits_the_budget_is_timed_and_kept_out_of_training(tiny_backbone, tmp_path):
    import soundfile as sf

    root = tmp_path / "tones"
    write_tones(root / "train", 6, seed=0)
    write_tones(root / "test", 2, seed=1)
    long_wav = root / "test" / "high" / "long.wav"
    sf.write(str(long_wav), (0.3 * np.sin(np.arange(16000 * 90) * 0.2)).astype(np.float32), 16000)
    out = tmp_path / "run"
    r = runner.invoke(app, ["fit", str(root), "--backbone", tiny_backbone, "--strategy", "linear", "--budget", "10m",
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert f"1 test recording(s) last over 60 s, e.g. {long_wav} (1m30s, " in " ".join(r.output.split())
    metrics = json.loads((out / "metrics.json").read_text())
    plan = metrics["budget"]
    assert 0 < plan["scoring_s"] < 600, "the test's scoring was timed and taken off the training budget"
    assert plan["train_s"] <= 600 - plan["scoring_s"] - plan["report_s"]


# ----------------------------------------------------------------------------------- a model no better than chance

def test_a_model_at_chance_says_so_in_the_report_and_the_last_line(tiny_backbone, tmp_path):
    root = tmp_path / "colours"
    write_colour_images(root / "train", 8, seed=1)
    write_colour_images(root / "test", 4, seed=2)
    for a, b in (("blue", "x"), ("green", "blue"), ("red", "green"), ("x", "red")):  # the test labels rotated
        (root / "test" / a).rename(root / "test" / b)
    out = tmp_path / "run"
    r = runner.invoke(app, ["fit", str(root), "--backbone", tiny_backbone, "--strategy", "linear", "--out", str(out)])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["test"]["accuracy"] <= 1 / 3
    expected = (f"the model scores at or below chance: test accuracy {m['test']['accuracy']:.3f} with 3 classes "
                "(guessing scores 0.333); check the labels, the data and the budget before using it.")
    assert m["at_chance"] == expected
    assert r.output.strip().splitlines()[-1] == f"warning: {expected}"
    assert f"**Warning: {expected}**" in (out / "report.md").read_text()
    r = runner.invoke(app, ["fit", str(root), "--backbone", tiny_backbone, "--strategy", "linear", "--out",
                            str(tmp_path / "run2"), "--json"])
    assert r.exit_code == 0 and json.loads(r.output.strip().splitlines()[-1])["warning"] == expected


def test_more_folds_than_examples_says_how_many_it_takes(capsys):
    from types import SimpleNamespace

    from transferkit.tasks import RunSettings, get_task

    splits = SimpleNamespace(train=[0] * 9, val=None)
    get_task("image").check_prepared(SimpleNamespace(splits=splits), RunSettings(cv=100), None)
    err = " ".join(capsys.readouterr().err.split())
    assert "cv 100: the training split holds 9 examples, so 9 folds (one each)" in err
    splits.val = [0]  # a validation split: no folds run, nothing to say
    get_task("image").check_prepared(SimpleNamespace(splits=splits), RunSettings(cv=100), None)
    assert "folds" not in capsys.readouterr().err



def test_labels_that_are_ids_one_example_each_are_refused(tmp_path):
    from transferkit.data.sources import load_splits

    write_colour_images(tmp_path / "img", 6)
    files = sorted((tmp_path / "img").rglob("*.png"))
    (tmp_path / "ids.csv").write_text("path,label\n" + "".join(f"{p},{p.stem}\n" for p in files))
    with pytest.raises(DataError) as err:
        load_splits(tmp_path / "ids.csv")
    assert str(err.value) == ("18 of the 18 classes have a single example (e.g. blue_000, blue_001, blue_002): these "
                              "labels look like names or ids, not classes; check the label column (or the class "
                              "folders), or give each class at least two examples.")
