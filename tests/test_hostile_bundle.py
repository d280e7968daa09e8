"""Hostile input, bundles and the patient key: a bundle is checked before anything in it is used (its config.json
against the schema, model.safetensors against the network the config describes), and each tampered copy gets one
line naming the file and the field or tensor; the patient-key file is owner-only from its first byte and a short
key is refused."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import transferkit
from transferkit.errors import TransferkitError

from conftest import topic_texts, write_colour_images, write_tones

Tamper = Callable[[Path], None]


# -- good bundles, one per kind, made without training (a random head is enough to compare predictions) ------------
def _classifier_bundle(folder: Path, backbone_name: str, classes: list[str], task: str, **meta) -> Path:
    from transferkit.backbones import create_backbone
    from transferkit.bundle.model import TransferModel
    from transferkit.heads import Classifier, LinearHead
    from transferkit.tasks import get_task

    torch.manual_seed(0)
    bb = create_backbone(backbone_name, pretrained=True, modality=get_task(task).modality)
    head = LinearHead(bb.num_features, len(classes))
    torch.nn.init.normal_(head.fc.weight, std=1.0)  # predictions that differ per input, so equality means something
    TransferModel(Classifier(bb, head), classes, meta, task=get_task(task)).save(folder)
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, list]:
    root = tmp_path_factory.mktemp("inputs")
    write_colour_images(root / "images", 2, size=40)
    write_tones(root / "tones", 1)
    return {"image": sorted(str(p) for p in (root / "images").rglob("*.png")),
            "medical": sorted(str(p) for p in (root / "images").rglob("*.png")),
            "detection": sorted(str(p) for p in (root / "images").rglob("*.png"))[:2],
            "text": [t for t, _ in topic_texts(2)],
            "audio": sorted(str(p) for p in (root / "tones").rglob("*.wav"))}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_backbone, tiny_text_backbone, tiny_wav2vec2) -> dict[str, Path]:
    from transferkit.bundle.detection import DetectionModel
    from transferkit.heads.detection import build_detector

    root = tmp_path_factory.mktemp("bundles")
    out = {"image": _classifier_bundle(root / "image", tiny_backbone, ["blue", "green", "red"], "image"),
           "medical": _classifier_bundle(root / "medical", tiny_backbone, ["lesion", "normal"], "medical",
                                         clinical={"positive": "lesion", "threshold": 0.4, "temperature": 1.5,
                                                   "class_weights": [1.5, 0.75], "calibrated": True}),
           "text": _classifier_bundle(root / "text", tiny_text_backbone, ["money", "sport", "weather"], "text"),
           "audio": _classifier_bundle(root / "audio", tiny_wav2vec2, ["high", "low", "mid"], "audio")}
    torch.manual_seed(0)
    DetectionModel(build_detector(tiny_backbone, ["Bag", "Trouser"], 64, pretrained=True),
                   ["Bag", "Trouser"]).save(root / "detection")
    out["detection"] = root / "detection"
    return out


def _copy(bundles: dict[str, Path], kind: str, tmp_path: Path, tamper: Tamper | None = None) -> Path:
    copy = tmp_path / f"{kind}-bundle"
    shutil.copytree(bundles[kind], copy, symlinks=True)
    if tamper is not None:
        tamper(copy)
    return copy


def _predict(model, kind: str, items: list) -> object:
    if kind == "detection":
        return model.predict(items, score_threshold=0.0)
    return model.predict_proba(items)


# -- ways to tamper with a bundle --------------------------------------------------------------------------------
def edit(change: Callable[[dict], object]) -> Tamper:
    """Change config.json through ``change(config)``."""

    def tamper(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        change(config)
        (folder / "config.json").write_text(json.dumps(config))

    return tamper


def drop(field: str) -> Tamper:
    *parents, last = field.split(".")

    def change(config: dict) -> None:
        for p in parents:
            config = config[p]
        del config[last]

    return edit(change)


def put(field: str, value: object) -> Tamper:
    *parents, last = field.split(".")

    def change(config: dict) -> None:
        for p in parents:
            config = config[p]
        config[last] = value

    return edit(change)


def write(name: str, data: bytes) -> Tamper:
    return lambda folder: (folder / name).write_bytes(data)


def weights(change: Callable[[dict], object]) -> Tamper:
    """Rewrite model.safetensors through ``change(state)``."""
    from safetensors.torch import load_file, save_file

    def tamper(folder: Path) -> None:
        state = load_file(str(folder / "model.safetensors"))
        change(state)
        save_file(state, str(folder / "model.safetensors"))

    return tamper


def truncate(n: int) -> Tamper:
    def tamper(folder: Path) -> None:
        f = folder / "model.safetensors"
        f.write_bytes(f.read_bytes()[:-n])

    return tamper


def into_folder(name: str) -> Tamper:
    def tamper(folder: Path) -> None:
        (folder / name).unlink()
        (folder / name).mkdir()

    return tamper


def rename_tensor(old: str, new: str) -> Callable[[dict], None]:
    return lambda state: state.__setitem__(new, state.pop(old))


def encoder_config(change: Callable[[dict], object]) -> Tamper:
    def tamper(folder: Path) -> None:
        f = folder / "encoder" / "config.json"
        config = json.loads(f.read_text())
        change(config)
        f.write_text(json.dumps(config))

    return tamper


FIX = "re-export the bundle or fix the file."
MUST_LABELS = "labels must be a list of distinct, non-empty class names on one line, up to 1000 characters"
IMAGE_SIZE = "a pair of whole numbers from 8 to 2048 (pixels)"
W = "model.safetensors"
MISMATCH = "model.safetensors does not match the network the bundle's config describes:"

# (kind, tampering, what the one line says after "<bundle>/"); ids are the test names
CASES = {
    # a required key missing, one per section
    "no-format": ("image", drop("format"), "config.json: format is missing; load it with the transferkit version "
                                           "that saved it."),
    "no-task": ("image", drop("task"), f"config.json: task is missing; {FIX}"),
    "no-labels": ("image", drop("labels"), f"config.json: labels is missing; {FIX}"),
    "no-backbone": ("image", drop("backbone"), f"config.json: backbone is missing; {FIX}"),
    "no-backbone-arch": ("image", drop("backbone.arch"), f"config.json: backbone.arch is missing; {FIX}"),
    "no-preprocess": ("image", drop("preprocess"), f"config.json: preprocess is missing; {FIX}"),
    "no-input-size": ("image", drop("preprocess.input_size"), f"config.json: preprocess.input_size is missing; {FIX}"),
    "no-head": ("image", drop("head"), f"config.json: head is missing; {FIX}"),
    "no-head-classes": ("image", drop("head.num_classes"), f"config.json: head.num_classes is missing; {FIX}"),
    "no-max-length": ("text", drop("preprocess.max_length"), f"config.json: preprocess.max_length is missing; {FIX}"),
    "no-sample-rate": ("audio", drop("preprocess.sample_rate"),
                       f"config.json: preprocess.sample_rate is missing; {FIX}"),
    "no-detector": ("detection", drop("detector"), f"config.json: detector is missing; {FIX}"),
    "no-clinical-threshold": ("medical", drop("clinical.threshold"),
                              f"config.json: clinical.threshold is missing; {FIX}"),
    # wrong types and values
    "labels-a-string": ("image", put("labels", "blue,green,red"), f"config.json: {MUST_LABELS}, got a string; {FIX}"),
    "labels-text-a-string": ("text", put("labels", "money,sport,weather"),
                             f"config.json: {MUST_LABELS}, got a string; {FIX}"),
    "labels-twice": ("image", put("labels", ["blue", "blue", "red"]), f"config.json: {MUST_LABELS}, got 'blue' "
                                                                      f"twice; {FIX}"),
    "labels-empty-name": ("image", put("labels", ["blue", " ", "red"]),
                          f"config.json: {MUST_LABELS}, got ' ' at position 1; {FIX}"),
    "labels-null": ("image", put("labels", ["blue", None, "red"]),
                    f"config.json: {MUST_LABELS}, got null at position 1; {FIX}"),
    "labels-numbers": ("image", put("labels", [1, 2, 3]), f"config.json: {MUST_LABELS}, got 1 at position 0; {FIX}"),
    "labels-none": ("image", put("labels", []), f"config.json: {MUST_LABELS}, got []; {FIX}"),
    "labels-line-break": ("image", put("labels", ["blue", "gr\neen", "red"]),
                          f"config.json: {MUST_LABELS}, got a name with a line break or another control character at "
                          f"position 1; {FIX}"),
    "labels-a-megabyte": ("image", put("labels", ["blue", "g" * 2**20, "red"]),
                          f"config.json: {MUST_LABELS}, got a name of 1,048,576 characters at position 1; {FIX}"),
    "label-added": ("image", edit(lambda c: c["labels"].append("pink")),
                    f"config.json: head.num_classes must be the number of labels, got 3 for 4 labels; {FIX}"),
    "label-removed": ("image", edit(lambda c: c["labels"].pop()),
                      f"config.json: head.num_classes must be the number of labels, got 3 for 2 labels; {FIX}"),
    "detector-label-added": ("detection", edit(lambda c: c["labels"].append("Hat")),
                             f"config.json: detector.num_classes must be the number of labels, got 2 for 3 labels; "
                             f"{FIX}"),
    "input-size-4096": ("image", put("preprocess.input_size", [4096, 4096]),
                        f"config.json: preprocess.input_size must be {IMAGE_SIZE}, got [4096, 4096]; {FIX}"),
    "input-size-a-string": ("image", put("preprocess.input_size", "224"),
                            f"config.json: preprocess.input_size must be {IMAGE_SIZE}, got a string; {FIX}"),
    "input-size-floats": ("image", put("preprocess.input_size", [32.5, 32]),
                          f"config.json: preprocess.input_size must be {IMAGE_SIZE}, got [32.5, 32]; {FIX}"),
    "std-zero": ("image", put("preprocess.std", [0, 0, 0]), "config.json: preprocess.std must be a list of 3 numbers "
                                                            f"above 0 and up to 1000, got [0, 0, 0]; {FIX}"),
    "mean-nan": ("image", put("preprocess.mean", [float("nan"), 0.5, 0.5]),
                 "config.json: preprocess.mean must be a list of 3 numbers from -1000 to 1000, got [NaN, 0.5, 0.5]; "
                 f"{FIX}"),
    "mean-two": ("image", put("preprocess.mean", [0.5, 0.5]),
                 "config.json: preprocess.mean must be a list of 3 numbers from -1000 to 1000, got [0.5, 0.5]; "
                 f"{FIX}"),
    "mean-huge-int": ("image", put("preprocess.mean", [10**400, 0.5, 0.5]), "config.json: preprocess.mean must be a "
                      "list of 3 numbers from -1000 to 1000, got [100000000000000000000000000000000000...;"),
    "crop-pct-tiny": ("image", put("preprocess.crop_pct", 0.01),
                      f"config.json: preprocess.crop_pct must be a number from 0.25 to 1, got 0.01; {FIX}"),
    "interpolation": ("image", put("preprocess.interpolation", "magic"), "config.json: preprocess.interpolation must "
                      f"be one of bicubic, bilinear, nearest, lanczos, got 'magic'; {FIX}"),
    "window": ("medical", put("preprocess.window", "x-ray vision"), "config.json: preprocess.window must be auto, "
               f"full, a CT preset or 'centre,width', got 'x-ray vision'; {FIX}"),
    "threshold-5": ("image", put("threshold", 5),
                    f"config.json: threshold must be a number from 0 to 1, or (multi-label) a list of one such "
                    f"number per label, got 5; {FIX}"),
    "threshold-list-short": ("image", put("threshold", [0.5]),
                             f"config.json: threshold must be a number from 0 to 1, or (multi-label) a list of one "
                             f"such number per label, got [0.5]; {FIX}"),
    "tta-text": ("image", put("tta", "yes"), f"config.json: tta must be true or false, got a string; {FIX}"),
    "label-sep-a-list": ("image", put("label_sep", 5), f"config.json: label_sep must be a non-empty string, got 5; "
                         f"{FIX}"),
    "tta-on-texts": ("text", put("tta", True), f"config.json: tta is true, but text classification models have no "
                     f"test-time views; {FIX}"),
    "threshold-list-single-label": ("text", put("threshold", [0.5, 0.5, 0.5]), "config.json: threshold must be a "
                                    "number from 0 to 1, or (multi-label) a list of one such number per label, got "
                                    f"[0.5, 0.5, 0.5]; {FIX}"),
    "multi-label-yes": ("image", put("multi_label", "yes"),
                        f"config.json: multi_label must be true or false, got a string; {FIX}"),
    "head-type": ("image", put("head.type", "mlp"), f"config.json: head.type must be one of linear, got 'mlp'; {FIX}"),
    "head-in-features": ("image", put("head.in_features", 100), "config.json: head.in_features is 100, but the "
                                                                f"backbone gives 256 features; {FIX}"),
    "backbone-extra-key": ("image", put("backbone.evil", 1), "config.json: backbone must be an object with keys "
                           f"among name, source, arch, weights, extra, got the key 'evil'; {FIX}"),
    "backbone-unknown-arch": ("image", put("backbone.arch", "no_such_net"),
                              "config.json: backbone: Unknown timm architecture 'no_such_net'"),
    "backbone-unknown-source": ("image", put("backbone.source", "martian"),
                                "config.json: backbone: Backbone source 'martian' is unknown"),
    "clinical-positive-unknown": ("medical", put("clinical.positive", "tumour"),
                                  "config.json: clinical.positive must be null or one of the labels, got 'tumour'; "
                                  f"{FIX}"),
    "clinical-temperature-0": ("medical", put("clinical.temperature", 0), "config.json: clinical.temperature must be "
                               f"a number above 0 and up to 1000, got 0; {FIX}"),
    "clinical-weights-short": ("medical", put("clinical.class_weights", [1.0]), "config.json: clinical.class_weights "
                               "must be null or one number above 0 (and up to a million) per label, got [1.0]; "
                               f"{FIX}"),
    "max-length-0": ("text", put("preprocess.max_length", 0),
                     f"config.json: preprocess.max_length must be a whole number from 1 to 32768, got 0; {FIX}"),
    "pooling": ("text", put("preprocess.pooling", "median"), "config.json: preprocess.pooling must be one of mean, "
                f"cls, max, mean_sqrt_len, lasttoken, got 'median'; {FIX}"),
    "label-sep-number": ("text", put("label_sep", 3),
                         f"config.json: label_sep must be a non-empty string, got 3; {FIX}"),
    "sample-rate-0": ("audio", put("preprocess.sample_rate", 0), "config.json: preprocess.sample_rate must be a whole "
                      f"number from 1000 to 384000, got 0; {FIX}"),
    "clip-seconds-inf": ("audio", put("preprocess.clip_seconds", float("inf")), "config.json: preprocess.clip_seconds "
                         f"must be a number above 0 and up to 600, got Infinity; {FIX}"),
    "audio-kind": ("audio", put("preprocess.kind", "radio"),
                   f"config.json: preprocess.kind must be one of spectrogram, speaker, hf, got 'radio'; {FIX}"),
    "detector-image-size": ("detection", put("detector.image_size", 4096), "config.json: detector.image_size must be a "
                            f"whole number from 8 to 2048, got 4096; {FIX}"),
    "detector-score-2": ("detection", put("detector.score_thresh", 2), "config.json: detector.score_thresh must be a "
                         f"number from 0 to 1, got 2; {FIX}"),
    "format-unknown": ("image", put("format", "transferkit-bundle/9"), "config.json: format must be one of "
                       "transferkit-bundle/1, got 'transferkit-bundle/9'; load it with the transferkit version that "
                       "saved it."),
    "task-unknown": ("image", put("task", "segmentation"), "config.json: task 'segmentation' is not a kind of bundle "
                     "this transferkit reads (known: audio-classification, image-classification, object-detection, "
                     "text-classification); load it with the transferkit version that saved it, or register the task "
                     "that saved it."),
    "task-a-number": ("image", put("task", 7), f"config.json: task must be a non-empty string, got 7; {FIX}"),
    # the files export checks itself on: a tampered list must not reach Path() or an index
    "test-files-a-number": ("image", put("test_files", 5),
                            f"config.json: test_files must be a list of up to 5,000 file paths, got 5; {FIX}"),
    "test-labels-too-few": ("image", put("test_labels", ["red"]),
                            f"config.json: test_labels must be one of the labels per test file, got [\"red\"]; {FIX}"),
    "calibration-files-numbers": ("detection", put("calibration_files", [1, 2]),
                            f"config.json: calibration_files must be a list of up to 5,000 file paths, got [1, 2]; "
                            f"{FIX}"),
    # config.json itself
    "config-not-json": ("image", write("config.json", b"{\"format\": "), "config.json is damaged (Expecting value at "
                        f"line 1): {FIX}"),
    "config-a-list": ("image", write("config.json", b"[1, 2]"),
                      f"config.json must hold a JSON object, got [1, 2]: {FIX}"),
    "config-not-utf8": ("image", write("config.json", b"\xff\xfe{}"),
                        f"config.json is not UTF-8 text (byte 0xff at position 0): {FIX}"),
    "config-a-folder": ("image", into_folder("config.json"), f"config.json is a folder, not a file: {FIX}"),
    # the weights
    "weights-missing": ("image", lambda f: (f / W).unlink(), "is not a transferkit bundle (needs config.json and "
                        "model.safetensors, model.safetensors is missing): pass the run's model/ folder."),
    "weights-a-folder": ("image", into_folder(W), f"model.safetensors is a folder, not a file: {FIX}"),
    "weights-zero-bytes": ("image", write(W, b""), f"model.safetensors is empty or cut short (0 bytes): {FIX}"),
    "weights-truncated": ("image", truncate(1000), "model.safetensors is cut short: tensor 'head.fc.weight' needs "
                          f"1000 bytes more than the file holds; {FIX}"),
    "weights-text-truncated": ("text", truncate(10), "model.safetensors is cut short: tensor"),
    "weights-garbage": ("image", write(W, b"\x10" * 64), "model.safetensors is damaged (its header claims "
                        "1157442765409226768 bytes, the file holds 64): it was cut short or is not safetensors; "
                        f"{FIX}"),
    "weights-header-not-json": ("image", write(W, (8).to_bytes(8, "little") + b"not json"),
                                f"model.safetensors is damaged (its header is not JSON): {FIX}"),
    "tensor-renamed": ("image", weights(rename_tensor("head.fc.weight", "head.fc.weight_")),
                       f"{MISMATCH} missing head.fc.weight; "
                       f"unexpected head.fc.weight_; {FIX}"),
    "tensor-reshaped": ("image", weights(lambda s: s.__setitem__("head.fc.weight", torch.zeros(4, 256))),
                        f"{MISMATCH} head.fc.weight is [4, "
                        f"256], the network needs [3, 256]; {FIX}"),
    "tensor-extra": ("image", weights(lambda s: s.__setitem__("head.secret", torch.zeros(1))),
                     f"{MISMATCH} unexpected head.secret; "
                     f"{FIX}"),
    "tensor-nan": ("image", weights(lambda s: s["head.fc.bias"].__setitem__(0, float("nan"))),
                   f"model.safetensors: tensor 'head.fc.bias' holds NaN or infinite values; {FIX}"),
    "labels-and-head-agree-weights-do-not": (
        "image", edit(lambda c: (c["labels"].append("pink"), c["head"].__setitem__("num_classes", 4))),
        f"{MISMATCH} head.fc.bias is [3], the network needs "
        f"[4]; head.fc.weight is [3, 256], the network needs [4, 256]; {FIX}"),
    "text-encoder-resized": ("text", encoder_config(lambda c: c.__setitem__("num_hidden_layers", 1)),
                             f"{MISMATCH} unexpected "
                             "backbone.body.encoder.layer.1.attention.output.LayerNorm.bias, "),
    # the encoder's and tokenizer's files
    "encoder-config-not-json": ("text", write("encoder/config.json", b"{oops"), "encoder/config.json is damaged "
                                f"(Expecting property name enclosed in double quotes at line 1): {FIX}"),
    "tokenizer-not-json": ("text", write("tokenizer/tokenizer.json", b"{oops"), "tokenizer/tokenizer.json is damaged "
                           f"(Expecting property name enclosed in double quotes at line 1): {FIX}"),
    "audio-extractor-a-list": ("audio", write("encoder/preprocessor_config.json", b"[]"),
                               f"encoder/preprocessor_config.json must hold a JSON object, got []: {FIX}"),
    "encoder-negative-width": ("text", encoder_config(lambda c: c.__setitem__("hidden_size", -3)),
                               ": the backbone its config files describe cannot be rebuilt (RuntimeError: Trying to "
                               "create tensor with negative dimension -3"),
    "detector-tensor-renamed": ("detection", weights(lambda s: s.__setitem__("model.extra", s.pop(sorted(s)[0]))),
                                f"{MISMATCH} missing "),
    "audio-tensor-reshaped": ("audio", weights(lambda s: s.__setitem__("head.fc.weight", torch.zeros(3, 7))),
                              f"{MISMATCH} head.fc.weight is "
                              f"[3, 7], the network needs [3, 32]; {FIX}"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_tampered_bundle_is_refused_in_one_line_naming_file_and_field(case, bundles, tmp_path):
    kind, tamper, expected = CASES[case]
    bundle = _copy(bundles, kind, tmp_path, tamper)
    with pytest.raises(TransferkitError) as caught:
        transferkit.load(bundle)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(str(bundle)) and "Traceback" not in message, message
    assert expected in message, message


def test_the_schema_covers_every_required_key_of_every_kind(bundles, tmp_path):
    """Drop each required field of each kind's config in turn: each is named as missing, none is a traceback."""
    from transferkit.bundle.format import SCHEMAS

    seen = 0
    for kind in ("image", "text", "audio", "detection"):
        config = json.loads((bundles[kind] / "config.json").read_text())
        for rule in SCHEMAS[config["task"]]:
            if rule.optional or rule.field.startswith("clinical"):
                continue
            copy = tmp_path / f"{kind}-{rule.field}"
            shutil.copytree(bundles[kind], copy)
            drop(rule.field)(copy)
            with pytest.raises(TransferkitError, match=f"^{copy}/config.json: {rule.field} is missing; "):
                transferkit.load(copy)
            seen += 1
    assert seen >= 40


@pytest.mark.parametrize("kind", ["image", "medical", "text", "audio", "detection"])
def test_a_good_bundle_loads_and_predicts_as_before(kind, bundles, inputs, tmp_path):
    """The checks change nothing for a bundle as saved, and a resave is byte-identical in its weights and config."""
    model = transferkit.load(bundles[kind])
    first = _predict(model, kind, inputs[kind])
    model.save(tmp_path / "again")
    again = transferkit.load(tmp_path / "again")
    assert _predict(again, kind, inputs[kind]) == first if kind == "detection" else np.array_equal(
        _predict(again, kind, inputs[kind]), first)
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (bundles[kind] / "model.safetensors").read_bytes()
    if kind == "medical":
        assert model.clinical["positive"] == "lesion" and model.clinical["threshold"] == 0.4


def test_optional_fields_may_be_absent(bundles, tmp_path):
    """A bundle from before a setting existed (no threshold, multi_label, interpolation, crop_pct, window...) still
    loads, with the defaults."""
    def change(c: dict) -> None:
        for key in ("transferkit_version", "multi_label", "threshold"):
            c.pop(key)
        for key in ("interpolation", "crop_pct", "window", "slices", "resize"):
            c["preprocess"].pop(key)
        c["head"].pop("dropout")

    bundle = _copy(bundles, "image", tmp_path, edit(change))
    model = transferkit.load(bundle)
    assert model.threshold == 0.5 and not model.multi_label and model.preprocess.crop_pct == 1.0


def test_a_link_in_a_bundles_adapter_is_refused(bundles, tmp_path):
    """A link would copy whatever it points to (a private key...) into every bundle saved from this one."""
    secret = tmp_path / "id_rsa"
    secret.write_text("PRIVATE")

    def tamper(folder: Path) -> None:
        (folder / "adapter").mkdir()
        (folder / "adapter" / "adapter_model.safetensors").symlink_to(secret)

    bundle = _copy(bundles, "image", tmp_path, tamper)
    with pytest.raises(TransferkitError, match=r"adapter_model.safetensors is a link inside a bundle, which holds "
                                               "plain files only"):
        transferkit.load(bundle)


def test_a_config_too_big_to_be_a_bundles_is_not_read(bundles, tmp_path, monkeypatch):
    from transferkit.bundle import format as bundle_format

    monkeypatch.setattr(bundle_format, "MAX_CONFIG_BYTES", 2**20)
    bundle = _copy(bundles, "image", tmp_path, write("config.json", b" " * (2 * 2**20)))
    with pytest.raises(TransferkitError, match=r"config.json is 2 MB, far more than a bundle's config holds \(at most "
                                               r"1 MB\): re-export"):
        transferkit.load(bundle)


@pytest.mark.parametrize("case", ["labels-a-string", "weights-truncated"])
def test_the_cli_answers_a_tampered_bundle_with_one_line_and_exit_2(case, bundles, inputs, tmp_path):
    kind, tamper, expected = CASES[case]
    bundle = _copy(bundles, kind, tmp_path, tamper)
    before = {p.name: p.read_bytes() for p in bundle.iterdir() if p.is_file()}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFERKIT_QUIET": "1"}
    r = subprocess.run([sys.executable, "-m", "transferkit", "predict", str(bundle), inputs["image"][0]],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"{bundle}/{expected}" in " ".join(r.stderr.split()), r.stderr
    assert {p.name: p.read_bytes() for p in bundle.iterdir() if p.is_file()} == before  # nothing written or fixed


# -- the patient key ---------------------------------------------------------------------------------------------
@pytest.fixture
def own_key(monkeypatch, tmp_path) -> Path:
    """An empty cache folder of our own and no shared salt: the key file the installation would use."""
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TRANSFERKIT_PATIENT_SALT", raising=False)
    return tmp_path / "cache" / "patient-key"


def test_the_patient_key_is_owner_only_from_its_first_byte(own_key, monkeypatch):
    """With a umask that would make every file world-readable, the key file (and its temporary file, seen at the
    moment it is written) is still 0600, and nothing else is left in the folder."""
    import transferkit.data.medical as medical

    seen: list[tuple[str, int]] = []
    real_fdopen = os.fdopen

    def watching_fdopen(fd, *args, **kwargs):  # the temporary file, before a byte of the key is in it
        seen.append((os.readlink(f"/proc/self/fd/{fd}"), stat.S_IMODE(os.fstat(fd).st_mode)))
        return real_fdopen(fd, *args, **kwargs)

    monkeypatch.setattr(medical.os, "fdopen", watching_fdopen)
    old = os.umask(0)
    try:
        hashed = medical.patient_key("MRN9000")
    finally:
        os.umask(old)
    assert len(hashed) == 12
    assert len(seen) == 1 and seen[0][0].startswith(str(own_key.parent)) and seen[0][1] == 0o600
    assert stat.S_IMODE(own_key.stat().st_mode) == 0o600
    assert [p.name for p in own_key.parent.iterdir()] == ["patient-key"]
    assert len(own_key.read_bytes()) == 64 and medical.patient_key("MRN9000") == hashed


@pytest.mark.parametrize("content", [b"", b"\n", b"short-key", b"0123456789abcde\n"])
def test_an_empty_or_short_patient_key_is_refused(own_key, content, dicom_manifest, tiny_backbone, tmp_path):
    from transferkit.data.medical import patient_key

    own_key.parent.mkdir(parents=True)
    own_key.write_bytes(content)
    n = len(content.strip())
    expected = (f"The patient key {own_key} holds {n} bytes, too short to keep hashed patient ids secret (at least "
                "16): delete it so a new one is made (hashes then change), or set TRANSFERKIT_PATIENT_SALT to the key "
                "shared with other machines.")
    with pytest.raises(TransferkitError) as caught:
        patient_key("MRN9000")
    assert str(caught.value) == expected
    assert own_key.read_bytes() == content  # never silently replaced: hashes made under it would stop matching
    if content == b"":  # and a run stops before any work, with the same line
        out = tmp_path / "run"
        with pytest.raises(TransferkitError, match="too short to keep hashed patient ids secret"):
            transferkit.fit(dicom_manifest, backbone=tiny_backbone, strategy="linear", out=out)
        assert not (out / "model").exists() and not (out / "metrics.json").exists()


def test_a_short_shared_salt_is_refused_and_a_long_one_used(monkeypatch, own_key):
    from transferkit.data.medical import patient_key

    monkeypatch.setenv("TRANSFERKIT_PATIENT_SALT", "secret")
    with pytest.raises(TransferkitError, match=r"^TRANSFERKIT_PATIENT_SALT holds 6 bytes, too short a key for patient "
                                               r"ids: set it to at least 16 random characters"):
        patient_key("MRN9000")
    monkeypatch.setenv("TRANSFERKIT_PATIENT_SALT", "a-long-enough-shared-secret")
    assert len(patient_key("MRN9000")) == 12 and not own_key.exists()  # the shared key, not a file of our own


def test_a_key_folder_that_cannot_be_made_is_one_line(monkeypatch, tmp_path):
    from transferkit.data.medical import patient_key

    (tmp_path / "cache").write_text("a file where the cache folder should be")
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TRANSFERKIT_PATIENT_SALT", raising=False)
    with pytest.raises(TransferkitError, match=r"^The patient key (cannot be made in|.* cannot be read)"):
        patient_key("MRN9000")

