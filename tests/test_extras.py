"""The niche dependencies live in extras (medical: pydicom and nibabel; detection: torchmetrics and pycocotools; lora:
peft). Without one, the run that needs it stops in one line naming the extra and the pip command, before any work;
everything else runs. Here the package is hidden from the import system; tests/test_wheel.py does it for real, in a
fresh environment that never had them."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from typer.testing import CliRunner

import transferkit
from conftest import lesion_slice, write_ct_dicom
from transferkit.cli import app
from transferkit.errors import MissingExtraError, TransferkitError, need

runner = CliRunner()


def _hide(monkeypatch, *modules: str) -> None:
    """``import module`` now fails as it does where the package is not installed."""
    for name in list(sys.modules):
        if name.split(".")[0] in modules:
            monkeypatch.delitem(sys.modules, name)
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def test_need_names_the_extra_and_returns_the_module(monkeypatch):
    assert need("json", "none", "Reading") is sys.modules["json"]
    _hide(monkeypatch, "pydicom")
    with pytest.raises(MissingExtraError) as err:
        need("pydicom", "medical", "Reading DICOM files")
    assert str(err.value) == ("Reading DICOM files needs pydicom, which is not installed: "
                              "pip install 'transferkit[medical]' (or pip install pydicom).")
    assert isinstance(err.value, TransferkitError)


def test_a_package_that_is_there_but_broken_is_not_called_a_missing_extra(monkeypatch, tmp_path):
    (tmp_path / "brokenpkg").mkdir()
    (tmp_path / "brokenpkg" / "__init__.py").write_text("import a_module_nobody_has\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as err:
        need("brokenpkg", "x", "Something")
    assert err.value.name == "a_module_nobody_has"


def _one_line(result, extra: str) -> None:
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output[-2000:]
    assert f"pip install 'transferkit[{extra}]'" in lines[0]


def test_dicom_without_the_medical_extra(monkeypatch, dicom_manifest, tiny_backbone, tmp_path):
    _hide(monkeypatch, "pydicom")
    r = runner.invoke(app, ["fit", str(dicom_manifest), "--backbone", tiny_backbone, "--strategy", "linear",
                            "--out", str(tmp_path / "run")])
    _one_line(r, "medical")
    assert "DICOM" in r.output and not (tmp_path / "run").exists()


def test_dicom_folder_without_the_medical_extra(monkeypatch, tiny_backbone, tmp_path):
    """Class folders of DICOM files group by the PatientID header, which is read before any pixel."""
    rng = np.random.default_rng(0)
    for label in ("lesion", "normal"):
        for k in range(4):
            write_ct_dicom(tmp_path / "scans" / label / f"{k}.dcm", lesion_slice(rng, label == "lesion"), f"P{k}")
    _hide(monkeypatch, "pydicom")
    with pytest.raises(MissingExtraError, match=r"transferkit\[medical\]"):
        transferkit.fit(tmp_path / "scans", backbone=tiny_backbone, strategy="linear")


def test_nifti_without_the_medical_extra(monkeypatch, tmp_path):
    from transferkit.data.medical import read_nifti

    _hide(monkeypatch, "nibabel")
    with pytest.raises(MissingExtraError, match=r"Reading NIfTI files needs nibabel.*transferkit\[medical\]"):
        read_nifti(tmp_path / "scan.nii.gz")


def test_detection_without_its_extra_stops_before_reading(monkeypatch, box_folder, tmp_path):
    _hide(monkeypatch, "pycocotools")
    r = runner.invoke(app, ["fit", str(box_folder), "--task", "detect", "--out", str(tmp_path / "run")])
    _one_line(r, "detection")
    assert "COCO mAP" in r.output


def test_lora_without_peft_stops_before_reading(monkeypatch, text_folder, tiny_text_backbone, tmp_path):
    _hide(monkeypatch, "peft")
    r = runner.invoke(app, ["fit", str(text_folder), "--backbone", tiny_text_backbone, "--strategy", "lora",
                            "--out", str(tmp_path / "run")])
    _one_line(r, "lora")
    assert "Strategy 'lora' needs peft" in r.output
    # the other text strategies do not need it
    r = runner.invoke(app, ["fit", str(text_folder), "--backbone", tiny_text_backbone, "--strategy", "linear",
                            "--out", str(tmp_path / "linear")])
    assert r.exit_code == 0, r.output[-2000:]


def test_a_present_package_missing_a_part_of_its_own_is_not_a_missing_extra(monkeypatch, tmp_path):
    (tmp_path / "halfpkg").mkdir()
    (tmp_path / "halfpkg" / "__init__.py").write_text("import halfpkg._compiled_part\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as err:  # a broken build, raised as it is, not "pip install ..."
        need("halfpkg", "x", "Something")
    assert err.value.name == "halfpkg._compiled_part"


def test_evaluating_a_detector_checks_its_extra_before_reading_anything(monkeypatch):
    from transferkit.bundle.detection import DetectionModel

    class Unread:
        def read_annotated(self, *args, **kwargs):
            raise AssertionError("the test set was read before the extra was checked")

    _hide(monkeypatch, "pycocotools")
    with pytest.raises(MissingExtraError, match=r"transferkit\[detection\]"):
        DetectionModel.evaluate(Unread(), "boxes/")


def test_pretraining_on_dicom_without_the_extra_stops_before_any_step(monkeypatch, tiny_backbone, tmp_path):
    from conftest import write_colour_images

    write_colour_images(tmp_path / "archive", 6, seed=0)
    write_ct_dicom(tmp_path / "archive" / "scan.dcm", lesion_slice(np.random.default_rng(0), True), "P1")
    _hide(monkeypatch, "pydicom")
    r = runner.invoke(app, ["pretrain", str(tmp_path / "archive"), "--method", "simclr", "--init", tiny_backbone,
                            "--steps", "4", "--batch-size", "4", "--out", str(tmp_path / "bb")])
    _one_line(r, "medical")
    assert not (tmp_path / "bb").exists()


def test_compare_stops_once_when_an_extra_is_missing(monkeypatch, dicom_manifest, tiny_backbone, tmp_path):
    _hide(monkeypatch, "pydicom")
    r = runner.invoke(app, ["compare", str(dicom_manifest), "--backbone", tiny_backbone, "--strategies",
                            "linear,scratch", "--budgets", "2,all", "--seeds", "2", "--epochs", "1",
                            "--out", str(tmp_path / "cmp")])
    _one_line(r, "medical")  # not a warning per run, with the extra's name lost to rich markup


def test_an_error_raised_in_a_loader_worker_is_one_line():
    from transferkit.cli import _one_line as plain

    wrapped = ("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in f\n    raise DataError(msg)\n'
               "transferkit.errors.DataError: a.png is not a readable image: remove it or pass --skip-bad.\n")
    assert plain(wrapped) == "a.png is not a readable image: remove it or pass --skip-bad."
    assert plain("a plain message") == "a plain message"
