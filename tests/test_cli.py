"""The command line: help is fast, errors are one line, and fit -> predict -> evaluate works end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from typer.testing import CliRunner

from transferkit.cli import app

runner = CliRunner()


def test_import_and_help_stay_light():
    heavy = ("('torch','timm','accelerate','sklearn','transformers','peft','pandas','datasets','optuna','mlflow',"
             "'tensorboard','psycopg')")
    code = f"import sys, transferkit, transferkit.cli; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "transferkit", "--help"], capture_output=True, text=True, check=True)
    assert "fit" in r.stdout and "predict" in r.stdout and "backbones" in r.stdout
    assert time.monotonic() - t < 20


def test_backbones_lists_offline_weights():
    r = runner.invoke(app, ["backbones", "--json"])
    assert r.exit_code == 0
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["efficientnet_lite0"]["offline"] is True
    assert rows["torchvision:resnet18"]["offline"] is False
    assert rows["all-MiniLM-L6-v2"]["offline"] is True and rows["all-MiniLM-L6-v2"]["modality"] == "text"


def test_text_fit_predict_evaluate(text_csv, tiny_text_backbone, tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(app, ["fit", str(text_csv), "--text-column", "text", "--label-column", "label", "--backbone",
                            tiny_text_backbone, "--strategy", "linear", "--max-length", "32", "--test-fraction",
                            "0.2", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["scored_on"] == "test" and summary["n"] == 6
    doc = tmp_path / "doc.txt"
    doc.write_text("goal team win\nand the striker scored")
    many = tmp_path / "many.txt"
    many.write_text("rain storm\n\nbank shares\n")
    r = runner.invoke(app, ["predict", str(out / "model"), "some text about the match", "--file", str(doc),
                            "--lines", str(many), "--json"])
    assert r.exit_code == 0, r.output
    preds = [json.loads(line) for line in r.stdout.strip().splitlines()]
    # real line numbers
    assert [p["input"] for p in preds] == ["some text about the match", str(doc), f"{many}:1", f"{many}:3"]
    r = runner.invoke(app, ["evaluate", str(out / "model"), str(text_csv), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["n"] == 36


def test_text_errors_are_one_line(tmp_path):
    bad = tmp_path / "t.csv"
    bad.write_text("text,review,label\na,b,x\nc,d,y\n")
    r = runner.invoke(app, ["fit", str(bad), "--out", str(tmp_path / "run")])
    assert r.exit_code == 2
    assert "several possible text columns (text, review): pass --text-column" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_fit_predict_evaluate(colour_splits, tiny_backbone, tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(app, ["fit", str(colour_splits), "--backbone", tiny_backbone, "--strategy", "linear",
                            "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["scored_on"] == "test" and summary["n"] == 12

    imgs = [str(p) for p in sorted((colour_splits / "test" / "green").glob("*.png"))]
    r = runner.invoke(app, ["predict", str(out / "model"), *imgs, "--json"])
    assert r.exit_code == 0, r.output
    preds = [json.loads(line) for line in r.stdout.strip().splitlines()]
    assert [p["input"] for p in preds] == imgs and all(p["label"] == "green" for p in preds)

    r = runner.invoke(app, ["predict", str(out / "model"), *imgs[:2], "--csv"])
    assert r.stdout.splitlines()[0] == "path,label,probability" and len(r.stdout.splitlines()) == 3

    r = runner.invoke(app, ["evaluate", str(out / "model"), str(colour_splits), "--json",
                            "--out", str(tmp_path / "ev")])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["n"] == 12 and (tmp_path / "ev" / "confusion_matrix.png").is_file()


def test_errors_are_one_line_without_traceback(tmp_path):
    r = runner.invoke(app, ["fit", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "does not exist" in r.output
    r = runner.invoke(app, ["fit", str(tmp_path), "--backbone", "no_such_net"])
    assert r.exit_code == 2


def test_predict_skip_bad(colour_splits, tiny_backbone, tmp_path):
    out = tmp_path / "run"
    runner.invoke(app, ["fit", str(colour_splits), "--backbone", tiny_backbone, "--strategy", "linear",
                        "--out", str(out)])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    good = str(sorted((colour_splits / "test").rglob("*.png"))[0])
    r = runner.invoke(app, ["predict", str(out / "model"), good, str(bad)])
    assert r.exit_code == 2 and "bad.png is not a readable image" in r.output
    r = runner.invoke(app, ["predict", str(out / "model"), good, str(bad), "--skip-bad", "--json"])
    assert r.exit_code == 0 and len(r.stdout.strip().splitlines()) == 1
