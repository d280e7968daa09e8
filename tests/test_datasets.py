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


def test_demo_reaches_fit_with_its_data_and_settings(monkeypatch, tmp_path):
    import transferkit.api
    from transferkit.data.images import MAX_IMAGE_PIXELS, max_image_pixels
    from transferkit.datasets import demos
    from transferkit.errors import TransferkitError

    built = tmp_path / "built"
    seen = {}

    def fake_fit(data, **kwargs):
        seen.update(kwargs, data=data, pixels=max_image_pixels())
        raise TransferkitError("fit reached")  # what fit then does is tested with fit; stop here, cheaply

    monkeypatch.setitem(demos.DEMOS, "image", demos.Demo("data/fashion-mnist-10", lambda folder, n, k: built))
    monkeypatch.setattr(transferkit.api, "fit", fake_fit)
    r = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and r.output.strip() == "error: fit reached", r.output
    assert (seen["data"], seen["out"], seen["budget"], seen["strategy"]) == (str(built), tmp_path / "run", "3m",
                                                                               "auto")
    assert seen["pixels"] == MAX_IMAGE_PIXELS  # the default limit, not typer's placeholder for --max-image-pixels
    # every other option reaches fit as its default value, not as typer's placeholder (an OptionInfo for --init-from
    # would be read as a bundle to continue from)
    assert seen["init_from"] is None and seen["replay"] is None and seen["l2sp"] is None
    assert not [k for k, v in seen.items() if type(v).__module__.startswith("typer")]


def test_max_image_pixels_holds_for_its_command_only():
    from transferkit.data.images import MAX_IMAGE_PIXELS, max_image_pixels

    r = CliRunner().invoke(app, ["predict", "no-such-bundle", "x.png", "--max-image-pixels", "575"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert max_image_pixels() == MAX_IMAGE_PIXELS  # a later command in this process gets the default again
