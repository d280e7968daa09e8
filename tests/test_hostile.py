"""Hostile input: what an attacker (or an unlucky user) can put in front of transferkit, and the one clear line
each gets. Grows with the hostile-input issue; each case asserts the exact behaviour."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import transferkit
from transferkit.errors import TransferkitError

from conftest import topic_texts

EVIL = '''import pathlib
pathlib.Path({marker!r}).write_text("code from the bundle ran")
'''


@pytest.fixture(scope="module")
def text_bundle(tmp_path_factory, tiny_text_backbone) -> Path:
    texts = topic_texts(6)
    out = tmp_path_factory.mktemp("hostile") / "run"
    transferkit.fit([t for t, _ in texts], labels=[y for _, y in texts], backbone=tiny_text_backbone,
                    strategy="linear", out=out, val_fraction=0.0, test_fraction=0.0)
    return out / "model"


def _tampered(bundle: Path, where: str, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of ``bundle`` whose ``where`` config asks for custom code (auto_map + a .py that writes a marker)."""
    import shutil

    copy, marker = tmp_path / "tampered", tmp_path / "PWNED"
    shutil.copytree(bundle, copy)
    cfg_file = copy / where / ("config.json" if where == "encoder" else "tokenizer_config.json")
    cfg = json.loads(cfg_file.read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel",
                       "AutoTokenizer": ["evil.EvilTokenizer", None]}
    cfg_file.write_text(json.dumps(cfg))
    (copy / where / "evil.py").write_text(EVIL.format(marker=str(marker)))
    return copy, marker


@pytest.mark.parametrize("where", ["encoder", "tokenizer"])
def test_a_bundle_asking_to_run_its_own_code_is_refused_and_nothing_runs(text_bundle, where, tmp_path):
    bundle, marker = _tampered(text_bundle, where, tmp_path)
    asks = r"(asks to run code of its own|is Python code inside a bundle)"  # whichever is found first
    with pytest.raises(TransferkitError, match=asks):
        transferkit.load(bundle)
    # the CLI, answering "y" to any prompt transformers might show: one line, exit 2, no code run
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFERKIT_QUIET": "1"}
    r = subprocess.run([sys.executable, "-m", "transferkit", "predict", str(bundle), "--lines", "-"],
                       input="y\ny\nmatch goal team\n", capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2, r.stderr
    assert re.search(asks, r.stderr) and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not marker.exists()


def test_python_files_in_a_bundle_are_refused_even_without_auto_map(text_bundle, tmp_path):
    import shutil

    copy = tmp_path / "with-script"
    shutil.copytree(text_bundle, copy)
    (copy / "encoder" / "modeling_bert.py").write_text("raise SystemExit('never imported')\n")
    with pytest.raises(TransferkitError, match=r"modeling_bert.py is Python code inside a bundle"):
        transferkit.load(copy)
    assert transferkit.load(text_bundle).predict(["match goal team"])[0]["label"] in {"sport", "money", "weather"}


@pytest.fixture(scope="module")
def image_bundle(tmp_path_factory, tiny_backbone) -> Path:
    from conftest import write_colour_images

    root = tmp_path_factory.mktemp("hostile-image")
    write_colour_images(root / "data", 4)
    transferkit.fit(root / "data", backbone=tiny_backbone, strategy="linear", out=root / "run")
    return root / "run" / "model"


@pytest.mark.parametrize("where", [".", "nested/deeper"])
def test_code_anywhere_in_any_bundle_is_refused(image_bundle, tmp_path, where):
    import shutil

    copy = tmp_path / "with-code"
    shutil.copytree(image_bundle, copy)
    (copy / where).mkdir(parents=True, exist_ok=True)
    (copy / where / "helper.py").write_text("raise SystemExit('never imported')\n")
    with pytest.raises(TransferkitError, match=r"^\S*helper.py is Python code inside a bundle: transferkit never "
                                               r"runs it; remove it"):
        transferkit.load(copy)
    assert transferkit.load(image_bundle).classes == ["blue", "green", "red"]


def test_a_text_model_given_a_file_name_says_it_classifies_the_name(text_bundle, tmp_path):
    from typer.testing import CliRunner

    from transferkit.cli import app

    runner = CliRunner()
    article = tmp_path / "a.txt"
    article.write_text("match goal team match goal team")
    r = runner.invoke(app, ["predict", str(text_bundle), str(article), "--json"])
    assert r.exit_code == 0, r.output
    assert (f"warning: {article} names a file: a text model classifies its name, not its content; pass --file "
            f"{article} to classify what it holds") in " ".join(r.output.split())
    r = runner.invoke(app, ["predict", str(text_bundle), "--file", str(article), "--json"])
    assert r.exit_code == 0 and "names a file" not in r.output
    assert json.loads(r.output.splitlines()[-1])["input"] == str(article)
    review = "match goal team " * 40  # one line longer than any file name may be: classified, no traceback
    r = runner.invoke(app, ["predict", str(text_bundle), review, "--json"])
    assert r.exit_code == 0 and r.exception is None and "names a file" not in r.output, r.output
