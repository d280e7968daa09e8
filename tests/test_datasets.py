"""The demo/benchmark dataset builders (transferkit.datasets): a missing optional package is one line naming
the extra to install, from the helper and from `transferkit demo`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from transferkit.cli import app
from transferkit.datasets import INSTALL_HINT, PACKAGES, require
from transferkit.errors import DataError


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)  # what an uninstalled scikit-image looks like to a lookup
    with pytest.raises(DataError) as info:
        require("composed")
    message = str(info.value)
    assert message == f"The composed dataset builder needs scikit-image: {INSTALL_HINT}."
    assert "\n" not in message


def test_builders_without_packages_need_nothing():
    require("fashion_mnist")
    with pytest.raises(DataError, match="Unknown dataset builder 'mnist'"):
        require("mnist")


def test_demo_says_which_extra_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "skimage", None)
    args = ["demo", "--detect", "--data-dir", str(tmp_path / "set"), "--out", str(tmp_path / "run")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2, r.output
    assert INSTALL_HINT in r.output and "Traceback" not in r.output
    assert not (tmp_path / "set").exists() and not (tmp_path / "run").exists()


def test_test_extra_brings_the_dataset_builders():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    assert set(extras["datasets"]) <= set(extras["test"])
    pips = {pip for needs in PACKAGES.values() for _, pip in needs}
    assert pips == {req.split("=")[0].split(">")[0] for req in extras["datasets"]}
