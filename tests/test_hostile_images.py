"""Hostile images (issue 18): images that decode small but cost gigabytes are refused from their header, before
any pixel is decoded; EXIF orientation is applied wherever an image is read; copies of an example across splits
(by content) and repeated table rows are named; medical runs refuse copies across splits."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import transferkit
from transferkit.data.images import MAX_IMAGE_PIXELS, decode, image_limits, load_pil, set_max_image_pixels
from transferkit.data.sources import ImageSet
from transferkit.datasets.hostile import bomb_png, long_png
from transferkit.errors import DataError, TransferkitError

from conftest import write_colour_images

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFERKIT_QUIET": "1"}
# runs a command and reports its exit code, output and peak resident memory (ru_maxrss of the child, in kB on Linux)
MEASURED = """import json, resource, subprocess, sys
r = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"rc": r.returncode, "out": r.stdout, "err": r.stderr,
                  "peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))"""


def _cli(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", MEASURED, sys.executable, "-m", "transferkit", *args],
                          capture_output=True, text=True, env=ENV, timeout=600, check=True)
    return json.loads(done.stdout)


def _one_line_error(r: dict) -> str:
    assert r["rc"] == 2, r["err"]
    assert "Traceback" not in r["err"]
    lines = [line for line in r["err"].splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r["err"]
    return lines[0]


@pytest.fixture(scope="module")
def image_bundle(tmp_path_factory, tiny_backbone) -> Path:
    """A linear probe on colour patches at 128 px, where a 12000x1 image scaled and cropped the old way cost 0.8 GB
    (3.1 GB at 224 px)."""
    root = tmp_path_factory.mktemp("hostile-images")
    write_colour_images(root / "colours", 6)
    transferkit.fit(root / "colours", backbone=tiny_backbone, strategy="linear", image_size=128, out=root / "run")
    return root / "run" / "model"


# ---- 1. decompression bombs and extreme shapes ---------------------------------------------------------------------

def test_bomb_and_elongated_images_are_refused_from_their_header_with_the_limit_and_the_flag(tmp_path):
    bomb, long = bomb_png(tmp_path / "bomb.png"), long_png(tmp_path / "long.png")
    assert bomb.stat().st_size < 200_000
    pil_limit = Image.MAX_IMAGE_PIXELS
    with pytest.raises(DataError) as e:
        load_pil(bomb)
    assert str(e.value) == (f"{bomb} is 30000x30000 pixels (900.0 MP), over the limit of 80 MP: shrink it, pass "
                            "--max-image-pixels 900000000 if you trust it, or --skip-bad to skip such files.")
    with pytest.raises(DataError) as e:
        load_pil(long)
    assert str(e.value) == (f"{long} is 12000x1 pixels, 12000:1, more elongated than the limit of 50:1: cut it into "
                            "pieces or remove it, or pass --skip-bad to skip such files.")
    with pytest.raises(DataError, match=r"An array of shape \(1, 5000\) is 5000x1 pixels, 5000:1"):
        load_pil(np.zeros((1, 5000), np.uint8))
    assert Image.MAX_IMAGE_PIXELS == pil_limit  # PIL's own guard is lifted for the header read only
    assert MAX_IMAGE_PIXELS == 80_000_000


def test_the_pixel_limit_can_be_raised_and_lowered_and_is_checked(tmp_path):
    small = tmp_path / "small.png"
    Image.new("RGB", (24, 24)).save(small)
    with image_limits(24 * 24):
        assert load_pil(small)[0].size == (24, 24)
    with image_limits(24 * 24 - 1), pytest.raises(DataError, match="pass --max-image-pixels 576 if you trust it"):
        load_pil(small)
    assert load_pil(small)[0].size == (24, 24)  # the default again after the block
    for bad, problem in ((0, "is out of range"), (-5, "is out of range"), (1.5, "is not a whole number"),
                         (True, "is not a number"), ("many", "is not a number")):
        with pytest.raises(TransferkitError) as err:
            set_max_image_pixels(bad)
        assert str(err.value) == (f"max_image_pixels {bad!r} {problem}: use a whole number, 1 or more, e.g. 80000000 "
                                  "(the default).")


def test_predict_answers_bombs_in_one_line_and_memory_stays_small(image_bundle, tmp_path):
    good = next((image_bundle.parent.parent / "colours" / "red").glob("*.png"))
    bomb, long = bomb_png(tmp_path / "bomb.png"), long_png(tmp_path / "long.png")
    baseline = _cli("predict", str(image_bundle), str(good), "--json")
    assert baseline["rc"] == 0, baseline["err"]
    # --skip-bad: both hostile files skipped with a count, the good one predicted; nothing is decoded to GBs
    skipped = _cli("predict", str(image_bundle), str(bomb), str(long), str(good), "--json", "--skip-bad")
    assert skipped["rc"] == 0, skipped["err"]
    assert [json.loads(line)["input"] for line in skipped["out"].splitlines()] == [str(good)]
    assert "skipped 2 unreadable image(s)" in skipped["err"] and "Traceback" not in skipped["err"]
    assert skipped["peak_mb"] < baseline["peak_mb"] + 400, (skipped["peak_mb"], baseline["peak_mb"])
    # the flag, at the limit of one 24x24 image: that image is refused, naming the pixels it would need
    line = _one_line_error(_cli("predict", str(image_bundle), str(good), "--max-image-pixels", "575"))
    assert f"{good} is 24x24 pixels" in line and "--max-image-pixels 576" in line


def test_fit_refuses_a_bomb_in_one_line_and_skip_bad_skips_it(tmp_path, tiny_backbone):
    write_colour_images(tmp_path / "data", 6)
    bomb = bomb_png(tmp_path / "data" / "red" / "bomb.png")
    long = long_png(tmp_path / "data" / "blue" / "long.png")
    r = _cli("fit", str(tmp_path / "data"), "--backbone", tiny_backbone, "--strategy", "linear", "--out",
             str(tmp_path / "run"))
    # decoding goes in file order: blue/long.png comes first
    assert _one_line_error(r).startswith(f"error: {long} is 12000x1 pixels, 12000:1, more elongated than the limit")
    assert not (tmp_path / "run" / "model").exists()
    model = transferkit.fit(tmp_path / "data", backbone=tiny_backbone, strategy="linear", skip_bad=True)
    assert model.metrics["data"]["skipped"] == 2 and model.metrics["data"]["train"] == 20
    long.unlink()
    with pytest.raises(DataError, match=f"{bomb} is 30000x30000 pixels .* over the limit of 100 MP"):
        transferkit.fit(tmp_path / "data", backbone=tiny_backbone, strategy="linear", max_image_pixels=10**8)


def test_the_detection_reader_refuses_a_bomb_from_its_header(tmp_path):
    from transferkit.data.boxes import load_box_splits

    root = tmp_path / "yolo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("a\nb\n")
    for i in range(8):
        Image.new("RGB", (64, 48), (i * 30, 0, 0)).save(root / "images" / f"im{i}.png")
        (root / "labels" / f"im{i}.txt").write_text(f"{i % 2} 0.5 0.5 0.2 0.2\n")
    bomb = bomb_png(root / "images" / "huge.png")
    (root / "labels" / "huge.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DataError) as e:
        load_box_splits(root, val_fraction=0.0, test_fraction=0.0)
    assert str(e.value).startswith(f"{bomb} is 30000x30000 pixels (900.0 MP), over the limit of 80 MP")
    splits = load_box_splits(root, val_fraction=0.0, test_fraction=0.0, skip_bad=True)
    kept = [item for part in (splits.train, splits.val, splits.test) if part is not None for item in part.items]
    assert len(kept) == 8 and bomb not in kept and len(splits.skipped) == 1 and str(bomb) in splits.skipped[0]


def test_medical_padding_resizes_before_it_pads(tmp_path):
    """A 50:1 strip in a medical (padded) model: the old square canvas of its long side cost side**2 pixels."""
    import dataclasses

    from transferkit.backbones.protocol import PreprocessConfig
    from transferkit.data.images import resize_center_crop

    strip = np.full((200, 10000, 3), 255, np.uint8)
    pre = PreprocessConfig(input_size=(32, 32), crop_pct=1.0, resize="pad")
    out = resize_center_crop(Image.fromarray(strip), pre)
    assert out.shape == (32, 32, 3)
    assert out[:15].max() == 0 and out[16:].max() == 0 and out[15].min() > 200  # a white line, centred, padded
    out = resize_center_crop(Image.fromarray(strip), dataclasses.replace(pre, resize="crop"))
    assert out.shape == (32, 32, 3) and out.min() == 255


# ---- 2. EXIF orientation ----------------------------------------------------------------------------------------

def _sideways(path: Path, orientation: int) -> tuple[Path, Path]:
    """A 40x20 picture stored sideways with EXIF ``orientation`` (as a phone saves a photo taken upright), and the
    same picture stored upright without the tag: red on top, blue below, once turned."""
    upright = np.zeros((40, 20, 3), np.uint8)
    upright[:20, :, 0] = 255
    upright[20:, :, 2] = 255
    turn = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}[orientation]  # the inverse of the tag
    stored = Image.fromarray(upright).transpose(turn)
    assert stored.size == (40, 20)
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, exif=exif)
    plain = path.with_name(f"upright-{path.name}")
    Image.fromarray(upright).save(plain)
    return path, plain


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_orientation_is_applied_where_images_are_read(tmp_path, orientation):
    from transferkit.backbones.protocol import PreprocessConfig

    turned, plain = _sideways(tmp_path / "photo.png", orientation)
    assert Image.open(turned).size == (40, 20)
    img, _ = load_pil(turned)
    assert img.size == (20, 40)
    assert np.array_equal(np.asarray(img), np.asarray(load_pil(plain)[0]))
    pre = PreprocessConfig(input_size=(32, 32), crop_pct=1.0, resize="pad")
    d = decode(ImageSet([turned, plain], ["a", "a"]), pre, ["a"])
    # padded to 16x32 in the middle of 32x32: red on rows 0-15, blue on rows 16-31
    top, bottom = d.pixels[0, :, :12, 10:22].float().mean((1, 2)), d.pixels[0, :, 20:, 10:22].float().mean((1, 2))
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]  # red on top, blue below
    assert np.array_equal(d.pixels[0].numpy(), d.pixels[1].numpy())


def test_a_garbage_exif_block_leaves_the_photo_readable_as_stored(tmp_path):
    from transferkit.data.images import open_image, oriented_size

    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20, 0] = 255
    path = tmp_path / "garbage-exif.png"
    Image.fromarray(stored).save(path, exif=b"garbage!")  # PIL's getexif() raises SyntaxError on this block
    with pytest.raises(SyntaxError):
        Image.open(path).getexif()
    img, _ = load_pil(path)
    assert np.array_equal(np.asarray(img), stored)  # read as stored: orientation 1
    with open_image(path, path) as header:  # how detection reads an image's size for its boxes
        assert oriented_size(header) == (40, 20)


def test_predict_reads_a_sideways_photo_upright(image_bundle, tmp_path):
    turned, plain = _sideways(tmp_path / "photo.png", 6)
    model = transferkit.load(image_bundle)
    assert np.array_equal(model.predict_proba([turned]), model.predict_proba([plain]))


# ---- 3. copies that make the scores lie ---------------------------------------------------------------------------

def test_a_copy_across_splits_is_named_recorded_and_refused_in_medical_mode(colour_splits, tiny_backbone, tmp_path,
                                                                          capsys):
    source = colour_splits / "train" / "red" / "red_003.png"
    copy = colour_splits / "test" / "red" / "renamed.png"
    shutil.copy(source, copy)
    model = transferkit.fit(colour_splits, backbone=tiny_backbone, strategy="linear", out=tmp_path / "run")
    err = capsys.readouterr().err
    note = (f"1 of the images repeat an earlier one's content (1 in test), e.g. {copy} (test) = {source} (train): a "
            "copy is scored as if unseen, so the scores are inflated; remove the copies")
    assert note in " ".join(err.split())
    assert model.metrics["data"]["copies"] == {"count": 1, "by_split": {"test": 1}, "note": note,
                                               "example": [f"{copy} (test)", f"{source} (train)"]}
    assert f"**Caution**: {note}." in (tmp_path / "run" / "report.md").read_text()
    with pytest.raises(DataError) as e:
        transferkit.fit(colour_splits, backbone=tiny_backbone, strategy="linear", modality="medical")
    assert str(e.value) == (f"{note} (medical data refuse copies across splits, as they refuse a patient in two "
                            "splits).")


def test_copies_inside_a_cross_validated_training_split_are_named(colour_folder, tiny_backbone, capsys):
    shutil.copy(colour_folder / "blue" / "blue_000.png", colour_folder / "blue" / "again.png")
    model = transferkit.fit(colour_folder, backbone=tiny_backbone, strategy="linear")
    assert model.metrics["estimate"] and model.metrics["data"]["copies"]["by_split"] == {"train": 1}
    assert "(1 within train)" in " ".join(capsys.readouterr().err.split())


def test_repeated_table_rows_are_named_with_their_lines(colour_folder, tmp_path, capsys):
    from transferkit.data.sources import load_splits

    rows = [f"{p},{p.parent.name}" for p in sorted(colour_folder.rglob("*.png"))]
    table = tmp_path / "images.csv"
    table.write_text("path,label\n" + "\n".join(rows + rows[:3]) + "\n")
    load_splits(table)
    err = " ".join(capsys.readouterr().err.split())
    assert (f"3 row(s) of {table} repeat an earlier row, e.g. line 38 = line 2: a repeated example weighs twice in "
            "training and can be scored on a copy of itself; remove the repeats") in err


def test_texts_repeated_or_in_two_splits_are_named(tmp_path, capsys):
    from transferkit.data.text import load_text_splits

    table = tmp_path / "texts.csv"
    lines = ["text,label,split", "goal match team,sport,train", "bank loan rate,money,train",
             "goal match team,sport,train", "rain storm wind,weather,train", "cup final win,sport,train",
             "stock price fund,money,train", "snow frost cold,weather,train", "bank loan rate,money,test",
             "heat fog sunny,weather,test"]
    table.write_text("\n".join(lines) + "\n")
    splits = load_text_splits(table)
    err = " ".join(capsys.readouterr().err.split())
    assert f"1 row(s) of {table} repeat an earlier row, e.g. line 4 = line 2" in err
    from transferkit.tasks.text import text_copies

    copies = text_copies(splits)  # small data: cross-validated, so the repeat inside train counts too
    assert copies.by_split == {"train": 1, "test": 1}
    assert copies.example == (f"{table} line 4", "train", f"{table} line 2", "train")
    assert "2 of the texts repeat an earlier one's content (1 within train, 1 in test)" in copies.sentence("texts")


def test_a_medical_file_is_sized_from_its_header_before_any_pixel_is_decoded(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    nib = pytest.importorskip("nibabel")
    from conftest import write_ct_dicom

    path = write_ct_dicom(tmp_path / "ct.dcm", np.zeros((48, 48)), "P1")
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 20000  # a header claiming 400 MP over 4.6 kB of pixel data: never decoded
    ds.save_as(path)
    with pytest.raises(DataError) as err:
        load_pil(path)
    assert str(err.value).startswith(f"{path} is 20000x20000 pixels (400.0 MP), over the limit of 80 MP")
    frames = write_ct_dicom(tmp_path / "frames.dcm", np.zeros((48, 48)), "P2")
    ds = pydicom.dcmread(frames)
    ds.NumberOfFrames = 100
    ds.save_as(frames)
    with image_limits(100_000), pytest.raises(DataError) as err:
        load_pil(frames)
    assert str(err.value) == (f"{frames} holds 100 frames of 48x48 pixels (0.2 MP in all), over the limit of 0.1 MP: "
                              "pass --max-image-pixels 230400 if you trust it, or --skip-bad to skip such files.")
    volume = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 50), np.float32), np.eye(4)), str(volume))
    with image_limits(100_000), pytest.raises(DataError, match=r"holds 50 frames of 64x64 pixels \(0\.2 MP in all\)"):
        load_pil(volume)
    assert load_pil(volume)[0].size == (64, 64)  # under the default limit it is read as before


def test_blank_images_are_not_copies_of_each_other():
    import torch

    from transferkit.data.copies import find_copies
    from transferkit.data.images import DecodedImages, pixel_keys

    pixels = torch.zeros((4, 3, 8, 8), dtype=torch.uint8)  # two blank slices, then one picture twice
    pixels[2:, 0, :4] = 200
    keys = pixel_keys(DecodedImages(pixels, torch.zeros(4, dtype=torch.long), [""] * 4, []))
    assert keys[0] is None and keys[1] is None and keys[2] == keys[3] is not None
    copies = find_copies({"train": (keys[::2], ["blank-a", "pic-a"]), "test": (keys[1::2], ["blank-b", "pic-b"])})
    assert copies.by_split == {"test": 1} and copies.example == ("pic-b", "test", "pic-a", "train")


def test_predict_on_a_folder_says_to_pass_its_files(image_bundle, tmp_path):
    folder = tmp_path / "photos.png"  # a folder, even one named like an image
    folder.mkdir()
    model = transferkit.load(image_bundle)
    with pytest.raises(DataError) as err:
        model.predict([folder])
    assert str(err.value) == (f"{folder} is a folder, not an image: pass image files (e.g. {folder}/*.png), or "
                              "--skip-bad to skip it.")


def test_a_dangling_or_looping_link_among_the_images_is_named_or_skipped(tmp_path, capsys):
    from transferkit.data.sources import load_splits

    root = tmp_path / "colours"
    write_colour_images(root, 3, seed=1)
    loop_a, loop_b = root / "red" / "a.png", root / "red" / "b.png"
    loop_a.symlink_to(loop_b)
    loop_b.symlink_to(loop_a)
    with pytest.raises(DataError) as err:
        load_splits(root)
    assert str(err.value) == (f"{loop_a} is a symbolic link to nothing (or a loop of links): fix or remove it, or "
                              "pass --skip-bad to skip such files.")
    splits = load_splits(root, skip_bad=True)
    assert len(splits.train) + len(splits.val or []) + len(splits.test or []) == 9
    assert f"skipped 2 non-image file(s) or dangling link(s) under {root}" in " ".join(capsys.readouterr().err.split())
