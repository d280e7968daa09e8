"""The classical baseline: hand-made features + cross-validated logistic regression, the non-deep model a
practitioner would try first. Transfer has paid off only where it beats this too, not just training from scratch.

One feature maker per modality, each a small estimator (``fit`` on the training data, ``transform`` any data),
registered in :data:`FEATURES`; the classifier is always :class:`~transferkit.heads.probe.LogisticProbe`
(standardise, logistic regression, C by stratified k-fold cross-validation), so the baseline needs no validation
split of its own.

- images (:class:`ImageFeatures`): HOG (gradient-orientation histograms) on a 32 px greyscale copy, plus a
  4x4 colour thumbnail;
- texts (:class:`TfidfFeatures`): TF-IDF of word 1-2 grams, fitted on the training texts only;
- audio (:class:`LogMelFeatures`): per-band mean and standard deviation of a log-mel spectrogram over every frame
  of a recording, and of its frame-to-frame differences.

Example::

    >>> from transferkit.evaluation.classical import ClassicalBaseline
    >>> base = ClassicalBaseline("text", seed=0).fit(decoded["train"])   # an EncodedTexts (.texts, .targets)
    >>> base.name_, base.predict_proba(decoded["test"]).shape
    ('TF-IDF + logistic regression', (120, 5))
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import TransferkitError

# ---------------------------------------------------------------------------------------------------- images

# Measured on Fashion-MNIST (10 classes, 1,000 test images, 3 seeds; decoded at 224 px as a run does, then
# downsampled here), test accuracy at 5 / 10 / 25 / 50 labels per class:
#   raw pixels, 32 px grey        0.564 / 0.623 / 0.693 / 0.718
#   raw pixels, 32 px colour      (same on greyscale images)
#   HOG, 32 px grey (4 px cells)  0.613 / 0.671 / 0.737 / 0.761
#   HOG + 4x4 colour thumbnail    0.616 / 0.673 / 0.738 / 0.763
# HOG wins at every budget: gradient orientations pooled over cells tolerate the small shifts and contrast
# changes that raw pixels do not. The thumbnail costs nothing there and keeps colour, which HOG (contrast-
# normalised, greyscale) throws away: images that differ by colour alone stay separable.
IMAGE_SIZE = 32
HOG_CELL = 4  # pixels per cell: an 8 x 8 grid of cells at 32 px
HOG_BLOCK = 2  # cells per block side (normalised together)
HOG_ORIENTATIONS = 9
THUMBNAIL = 4  # colour thumbnail side, in pixels


def hog(images: np.ndarray, orientations: int = HOG_ORIENTATIONS, cell: int = HOG_CELL,
        block: int = HOG_BLOCK) -> np.ndarray:
    """Histograms of oriented gradients (Dalal & Triggs 2005) of a batch: ``(N, H, W)`` greyscale or
    ``(N, H, W, C)`` colour (per pixel, the channel with the strongest gradient) -> ``(N, D)``.

    The same descriptor as ``skimage.feature.hog(image, orientations, (cell, cell), (block, block),
    block_norm="L2-Hys")``: central-difference gradients, unsigned orientations hard-binned per cell (magnitude
    votes, divided by the cell's area), blocks of ``block x block`` cells every cell, L2-Hys normalised. Written
    here in numpy, batched, because scikit-image is not a dependency of transferkit.
    """
    x = np.asarray(images, dtype=np.float64)
    if x.ndim == 3:
        x = x[..., None]
    g_row, g_col = np.zeros_like(x), np.zeros_like(x)
    g_row[:, 1:-1] = x[:, 2:] - x[:, :-2]
    g_col[:, :, 1:-1] = x[:, :, 2:] - x[:, :, :-2]
    if x.shape[-1] > 1:  # per pixel, the channel whose gradient is strongest
        pick = np.hypot(g_row, g_col).argmax(-1)[..., None]
        g_row, g_col = np.take_along_axis(g_row, pick, -1), np.take_along_axis(g_col, pick, -1)
    g_row, g_col = g_row[..., 0], g_col[..., 0]
    n, h, w = g_row.shape
    rows, cols = h // cell, w // cell
    if rows < block or cols < block:
        raise TransferkitError(f"Images of {h}x{w} px are too small for HOG: use at least {block * cell} px a side.")
    mag = np.hypot(g_row, g_col)[:, : rows * cell, : cols * cell]
    angle = (np.rad2deg(np.arctan2(g_row, g_col)) % 180)[:, : rows * cell, : cols * cell]
    bins = np.minimum((angle / (180.0 / orientations)).astype(int), orientations - 1)
    cell_of = (np.arange(rows * cell) // cell)[:, None] * cols + (np.arange(cols * cell) // cell)[None, :]
    index = (np.arange(n)[:, None, None] * (rows * cols) + cell_of[None]) * orientations + bins
    hist = np.bincount(index.ravel(), weights=mag.ravel(), minlength=n * rows * cols * orientations)
    hist = hist.reshape(n, rows, cols, orientations) / (cell * cell)
    from numpy.lib.stride_tricks import sliding_window_view

    blocks = sliding_window_view(hist, (block, block), axis=(1, 2))  # (n, br, bc, orientations, block, block)
    blocks = blocks.transpose(0, 1, 2, 4, 5, 3).reshape(n, rows - block + 1, cols - block + 1, -1)
    eps = 1e-5
    blocks = blocks / np.sqrt(np.sum(blocks**2, -1, keepdims=True) + eps**2)
    blocks = np.minimum(blocks, 0.2)  # L2-Hys: clip, then renormalise, so no single strong edge dominates a block
    blocks = blocks / np.sqrt(np.sum(blocks**2, -1, keepdims=True) + eps**2)
    return blocks.reshape(n, -1)


def _resize(pixels: Any, size: int) -> np.ndarray:
    """uint8 ``(N, 3, H, W)`` -> float32 ``(N, size, size, 3)`` in [0, 1], area-averaged (no aliasing)."""
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(pixels)
    out = []
    for chunk in x.split(256):  # bounded memory: a float copy of a whole 224 px set would be 600 KB an image
        out.append(F.interpolate(chunk.float() / 255.0, size=(size, size), mode="area"))
    return torch.cat(out).permute(0, 2, 3, 1).numpy()


class ImageFeatures:
    """HOG of a 32 px greyscale copy plus a 4x4 colour thumbnail (1,812 numbers an image). Stateless: ``fit``
    learns nothing. ``data``: a :class:`~transferkit.data.images.DecodedImages` (or its ``(N, 3, H, W)`` uint8
    pixels)."""

    name = "HOG + colour thumbnail"

    def fit(self, data: Any) -> ImageFeatures:
        return self

    def transform(self, data: Any) -> np.ndarray:
        small = _resize(getattr(data, "pixels", data), IMAGE_SIZE)
        grey = small @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601 luma
        thumb = small.reshape(len(small), THUMBNAIL, IMAGE_SIZE // THUMBNAIL, THUMBNAIL, IMAGE_SIZE // THUMBNAIL, 3)
        return np.concatenate([hog(grey), thumb.mean((2, 4)).reshape(len(small), -1)], axis=1).astype(np.float32)


# ---------------------------------------------------------------------------------------------------- texts


class TfidfFeatures:
    """TF-IDF of word unigrams and bigrams (sublinear term frequency, every term seen in training, the
    ``max_features`` most frequent kept), fitted on the training texts only: a word that appears only in the test
    texts has no column. ``data``: an :class:`~transferkit.data.text.EncodedTexts` (its ``.texts``) or a list of
    strings. Learned: ``vectorizer_``."""

    name = "TF-IDF"

    def __init__(self, max_features: int = 20_000):
        self.max_features = max_features

    def fit(self, data: Any) -> TfidfFeatures:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizer_ = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1,
                                           max_features=self.max_features, dtype=np.float32)
        self.vectorizer_.fit(_texts(data))
        return self

    def transform(self, data: Any) -> np.ndarray:
        # dense, because the probe standardises columns: at a few hundred texts x 20,000 terms that is tens of MB
        return self.vectorizer_.transform(_texts(data)).toarray()


def _texts(data: Any) -> list[str]:
    texts = getattr(data, "texts", data)
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TransferkitError("The text baseline takes a list of strings (or EncodedTexts with .texts).")
    return list(texts)


# ---------------------------------------------------------------------------------------------------- audio

N_MELS = 64
FRAME_SECONDS, HOP_SECONDS = 0.025, 0.010  # the speech-processing standard: 25 ms frames every 10 ms
TOP_DB = 80.0  # decibels kept below each window's loudest band and frame (as the spectrogram backbone)


class LogMelFeatures:
    """Per recording: the mean and standard deviation of each of 64 log-mel bands (25 ms frames every 10 ms)
    over every frame of its windows, and the standard deviation of each band's frame-to-frame difference (how
    fast it changes); 192 numbers a recording. Stateless. ``data``: a
    :class:`~transferkit.data.audio.DecodedAudio` at ``sample_rate`` Hz."""

    name = "log-mel statistics"

    def __init__(self, sample_rate: int = 16_000, n_mels: int = N_MELS):
        self.sample_rate, self.n_mels = sample_rate, n_mels

    def fit(self, data: Any) -> LogMelFeatures:
        return self

    def transform(self, data: Any) -> np.ndarray:
        import torch

        from ..backbones.audio import mel_filterbank

        frame = int(round(FRAME_SECONDS * self.sample_rate))
        hop = int(round(HOP_SECONDS * self.sample_rate))
        filters = torch.from_numpy(mel_filterbank(self.sample_rate, frame, self.n_mels, 20.0))
        window = torch.hann_window(frame)
        owner = np.asarray(data.owner)
        n = len(data.targets)
        total = np.zeros((n, self.n_mels))
        square = np.zeros((n, self.n_mels))
        count = np.zeros(n)
        d_sum, d_square, d_count = np.zeros((n, self.n_mels)), np.zeros((n, self.n_mels)), np.zeros(n)
        for start in range(0, len(data.waves), 64):  # bounded memory: 64 windows of frames at a time
            waves = data.waves[start : start + 64].float()
            if waves.shape[1] < frame:
                waves = torch.nn.functional.pad(waves, (0, frame - waves.shape[1]))
            frames = waves.unfold(1, frame, hop)  # (B, F, frame)
            power = torch.fft.rfft(frames * window, dim=-1).abs().pow(2)
            db = 10.0 * torch.log10((power @ filters.T).clamp(min=1e-10))  # (B, F, mels)
            db = torch.maximum(db, db.amax(dim=(1, 2), keepdim=True) - TOP_DB).double().numpy()
            # frames of pure zeros are the padding that made every window one length: they are not the recording
            sound = (frames.abs().amax(-1) > 0).numpy()
            sound[~sound.any(1), :] = True  # a silent window keeps its frames: its statistics must exist
            who = owner[start : start + len(db)]
            for b in range(len(db)):
                kept = db[b][sound[b]]
                r = who[b]
                total[r] += kept.sum(0)
                square[r] += (kept**2).sum(0)
                count[r] += len(kept)
                diff = np.diff(kept, axis=0)
                d_sum[r] += diff.sum(0)
                d_square[r] += (diff**2).sum(0)
                d_count[r] += len(diff)
        if (count == 0).any():
            raise TransferkitError("A recording has no windows: decode the audio with transferkit's window_clips.")
        mean = total / count[:, None]
        std = np.sqrt(np.maximum(square / count[:, None] - mean**2, 0.0))
        dc = np.maximum(d_count, 1)[:, None]
        d_std = np.sqrt(np.maximum(d_square / dc - (d_sum / dc) ** 2, 0.0))
        return np.concatenate([mean, std, d_std], axis=1).astype(np.float32)


# ---------------------------------------------------------------------------------------------------- the baseline

FEATURES: dict[str, type] = {"image": ImageFeatures, "text": TfidfFeatures, "audio": LogMelFeatures}


class ClassicalBaseline:
    """Hand-made features + cross-validated logistic regression: the non-deep baseline a practitioner would try
    first.

    Args:
        modality: ``"image"`` (also for medical images), ``"text"`` or ``"audio"``; picks the features from
            :data:`FEATURES`.
        seed: the cross-validation folds' shuffling.
        cv: folds for choosing the regularisation strength C. The baseline needs no validation split: give it
            every labelled example (training and validation).
        sample_rate: audio only, the rate of the decoded windows (transferkit's audio backbones read 16 kHz).

    Learned attributes: ``name_`` (e.g. ``"TF-IDF + logistic regression"``), ``features_`` (the fitted feature
    maker), ``probe_`` (the fitted :class:`~transferkit.heads.probe.LogisticProbe`), ``num_classes_``.

    Example::

        >>> base = ClassicalBaseline("image", seed=0).fit(decoded["train"])    # DecodedImages
        >>> base.predict_proba(decoded["test"]).argmax(1)[:5]

    Raises :class:`~transferkit.errors.TransferkitError` for an unknown modality or data it cannot read.
    """

    def __init__(self, modality: str, seed: int = 0, cv: int = 5, sample_rate: int = 16_000):
        self.modality, self.seed, self.cv, self.sample_rate = modality, seed, cv, sample_rate

    def fit(self, data: Any, targets: Any = None, *, num_classes: int | None = None) -> ClassicalBaseline:
        """Fit the features on ``data``, then the probe on them. ``targets``: (N,) class indices or (N, K)
        multi-hot, by default ``data.targets``; ``num_classes`` keeps classes absent from them."""
        from ..heads.probe import LogisticProbe

        modality = "image" if self.modality == "medical" else self.modality
        if modality not in FEATURES:
            raise TransferkitError(f"The classical baseline has no features for {self.modality!r}: choose "
                                   f"{', '.join(FEATURES)}.")
        y = _targets(data if targets is None else targets)
        maker = FEATURES[modality]
        self.features_ = (maker(sample_rate=self.sample_rate) if modality == "audio" else maker()).fit(data)
        X = self.features_.transform(data)
        if len(X) != len(y):
            raise TransferkitError(f"The baseline got {len(X)} examples but {len(y)} targets: give one target each.")
        self.probe_ = LogisticProbe(cv=self.cv, seed=self.seed).fit(X, y, num_classes=num_classes)
        self.num_classes_ = self.probe_.num_classes_
        self.name_ = f"{self.features_.name} + logistic regression"
        return self

    def predict_proba(self, data: Any) -> np.ndarray:
        """``(N, num_classes_)`` class probabilities (per-label probabilities for multi-label targets)."""
        return self.probe_.predict_proba(self.features_.transform(data))

    def predict(self, data: Any) -> np.ndarray:
        """Class indices ``(N,)`` (0/1 per label for multi-label targets)."""
        return self.probe_.predict(self.features_.transform(data))


def _targets(data: Any) -> np.ndarray:
    t = getattr(data, "targets", data)
    if t is None:
        raise TransferkitError("The baseline needs targets: give fit(data, targets) or data with .targets.")
    if hasattr(t, "detach"):
        t = t.detach().cpu().numpy()
    return np.asarray(t)
