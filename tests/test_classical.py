"""The classical baseline: HOG against scikit-image, TF-IDF fitted on training texts only, log-mel statistics that
ignore padding, and near-perfect scores on data that hand-made features separate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import topic_texts
from transferkit.data.audio import Clips, window_clips
from transferkit.data.images import DecodedImages
from transferkit.errors import TransferkitError
from transferkit.strategies.classical import ClassicalBaseline, LogMelFeatures, decode_for_baseline, hog


def test_hog_matches_scikit_image():
    from skimage.feature import hog as reference

    rng = np.random.default_rng(0)
    grey = rng.random((3, 34, 30)) * 255  # sides not a multiple of the cell: the remainder is dropped, as there
    ours = hog(grey, cell=4, block=2)
    ref = np.stack([reference(g, 9, (4, 4), (2, 2), block_norm="L2-Hys") for g in grey])
    assert ours.shape == ref.shape == (3, 7 * 6 * 2 * 2 * 9)  # 8 x 7 cells of 4 px, blocks of 2 x 2 cells
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    colour = rng.random((2, 32, 32, 3))  # per pixel, the channel with the strongest gradient
    ref = np.stack([reference(c, 9, (8, 8), (3, 3), block_norm="L2-Hys", channel_axis=-1) for c in colour])
    np.testing.assert_allclose(hog(colour, cell=8, block=3), ref, atol=1e-6)
    with pytest.raises(TransferkitError, match="too small"):
        hog(grey[:, :8, :8], cell=8, block=2)


def _texts(per_class: int, seed: int):
    classes = sorted({y for _, y in topic_texts(1)})
    rows = topic_texts(per_class, seed)
    return [t for t, _ in rows], np.array([classes.index(y) for _, y in rows])


def test_text_baseline_separates_topics_and_fits_tfidf_on_training_texts_only():
    texts, y = _texts(8, seed=1)
    test_texts, y_test = _texts(6, seed=2)
    test_texts[0] += " zebraword"  # only in a test text: it must not become a column
    base = ClassicalBaseline("text", seed=0, cv=3).fit(texts, y)
    assert base.name_ == "TF-IDF + logistic regression" and base.num_classes_ == 3
    vocab = base.features_.vectorizer_.vocabulary_
    assert "zebraword" not in vocab and "goal" in vocab and any(" " in term for term in vocab)  # 1-2 grams
    assert not base.features_.transform(["zebraword zebraword"]).any()
    probs = base.predict_proba(test_texts)
    assert probs.shape == (18, 3) and np.allclose(probs.sum(1), 1.0)
    assert (probs.argmax(1) == y_test).mean() >= 0.9  # chance is 1/3


def test_text_baseline_multi_label():
    texts, y = _texts(8, seed=1)
    multi = np.eye(3)[y]
    multi[::4, (y[::4] + 1) % 3] = 1.0  # some texts carry a second label
    base = ClassicalBaseline("text", cv=3).fit(texts, multi)
    probs = base.predict_proba(texts)
    assert probs.shape == (24, 3) and base.probe_.multi_label_
    assert ((probs >= 0.5) == (multi > 0.5)).mean() >= 0.8


def _images(n_per_class: int, seed: int, size: int = 96) -> DecodedImages:
    """Class 0: horizontal stripes, 1: vertical stripes, 2: a flat blue patch; random phase, level and noise."""
    rng = np.random.default_rng(seed)
    pixels, targets = [], []
    for k in range(3):
        for _ in range(n_per_class):
            r = np.arange(size)
            wave = 0.5 + 0.4 * np.sin(2 * np.pi * (r / rng.uniform(10, 14) + rng.random()))
            img = np.repeat((np.tile(wave[:, None], (1, size)) if k == 0 else np.tile(wave[None], (size, 1)))[None],
                            3, 0)
            if k == 2:
                img = np.stack([np.full((size, size), v) for v in (0.15, 0.2, rng.uniform(0.7, 0.9))])
            img = np.clip(img * rng.uniform(0.7, 1.0) + rng.normal(0, 0.05, img.shape), 0, 1)
            pixels.append(torch.from_numpy((img * 255).astype(np.uint8)))
            targets.append(k)
    n = len(targets)
    return DecodedImages(torch.stack(pixels), torch.tensor(targets), [""] * n, [], list(range(n)))


def test_image_baseline_separates_stripes_and_colour():
    train, test = _images(8, seed=0), _images(5, seed=1)
    base = ClassicalBaseline("image", seed=0, cv=3).fit(train)
    assert base.name_ == "HOG + colour thumbnail + logistic regression"
    assert base.features_.transform(train).shape == (24, 7 * 7 * 2 * 2 * 9 + 4 * 4 * 3)
    probs = base.predict_proba(test)
    assert probs.shape == (15, 3) and np.allclose(probs.sum(1), 1.0)
    assert (probs.argmax(1) == test.targets.numpy()).mean() >= 0.95
    assert ClassicalBaseline("medical", cv=3).fit(train).name_ == base.name_  # medical images: image features


def _tones(n_per_class: int, seed: int, clip_samples: int = 8000) -> tuple:
    """Class 0: 300 Hz, class 1: 2,000 Hz; random length (some recordings span several windows), level, noise."""
    rng = np.random.default_rng(seed)
    samples, targets = [], []
    for k, freq in enumerate((300.0, 2000.0)):
        for _ in range(n_per_class):
            n = int(16_000 * rng.uniform(0.2, 1.2))
            t = np.arange(n) / 16_000
            x = rng.uniform(0.05, 0.5) * np.sin(2 * np.pi * freq * rng.uniform(0.95, 1.05) * t)
            samples.append((x + 0.005 * rng.standard_normal(n)).astype(np.float32))
            targets.append(k)
    clips = Clips.from_arrays(samples)
    return clips, targets


def test_audio_baseline_separates_tones():
    clips, y = _tones(8, seed=0)
    test_clips, y_test = _tones(5, seed=1)
    train, test = window_clips(clips, y, 8000), window_clips(test_clips, y_test, 8000)
    assert len(train.waves) > len(train)  # some recordings are several windows
    base = ClassicalBaseline("audio", seed=0, cv=3).fit(train)
    assert base.name_ == "log-mel statistics + logistic regression"
    probs = base.predict_proba(test)
    assert probs.shape == (10, 2) and np.allclose(probs.sum(1), 1.0)
    assert (probs.argmax(1) == np.array(y_test)).mean() >= 0.95


def test_log_mel_statistics_ignore_the_padding_of_windows():
    clips, y = _tones(1, seed=3)
    clips = Clips.from_arrays([clips.clip(r)[:4000] for r in range(len(clips))])  # 0.25 s: mostly zero padding below
    short, long = window_clips(clips, y, 4800), window_clips(clips, y, 16_000)
    f_short, f_long = LogMelFeatures().transform(short), LogMelFeatures().transform(long)
    assert f_short.shape == (2, 3 * 64)
    # the same recording padded to 0.3 s or 1 s: the same statistics (only the frames at the edge differ)
    np.testing.assert_allclose(f_short, f_long, atol=1.0)
    assert f_long[0, :64].mean() > -60  # padding would drag the mean level down towards the floor


def test_baseline_refuses_what_it_cannot_read():
    with pytest.raises(TransferkitError, match="no features for 'video'"):
        ClassicalBaseline("video").fit(["a"], [0])
    with pytest.raises(TransferkitError, match="needs targets"):
        ClassicalBaseline("text").fit(["rain snow", "goal match"])
    with pytest.raises(TransferkitError, match="2 examples but 3 targets"):
        ClassicalBaseline("text").fit(["rain snow", "goal match"], [0, 1, 1])
    with pytest.raises(TransferkitError, match="no words"):
        ClassicalBaseline("text").fit(["a b", "c d"], [0, 1])


def test_decode_for_baseline_reads_sets_without_a_backbone(tmp_path):
    from conftest import write_colour_images, write_tones
    from transferkit.data.sources import load_splits

    write_tones(tmp_path / "tones", 4, seed=0)
    splits = load_splits(tmp_path / "tones", kind="audio", val_fraction=0.0, test_fraction=0.25, seed=0)
    sets = decode_for_baseline("audio", {"train": splits.train, "test": splits.test}, splits.classes)
    (audio, y), (_, y_test) = sets["train"], sets["test"]
    assert len(y) == len(splits.train) and len(y_test) == len(splits.test)
    assert audio.waves.shape[1] % 4000 == 0  # the clip length is chosen in 0.25 s steps at 16 kHz
    write_colour_images(tmp_path / "colours", 3)
    images = load_splits(tmp_path / "colours", val_fraction=0.0, test_fraction=0.0, seed=0)
    (pixels, y), = decode_for_baseline("image", {"train": images.train}, images.classes).values()
    assert tuple(pixels.pixels.shape) == (9, 3, 64, 64) and sorted(y.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
