"""The classical baseline: hand-made features + cross-validated logistic regression, the non-deep model a
practitioner would try first. Transfer has paid off only where it beats this too, not just training from scratch.

One feature maker per modality, each a small estimator (``fit`` on the training data, ``transform`` any data),
registered in :data:`FEATURES`; the classifier is always :class:`~transferkit.heads.probe.LogisticProbe`
(standardise, logistic regression, C by stratified k-fold cross-validation), so the baseline needs no validation
split of its own.

- images (:class:`ImageFeatures`): HOG (gradient-orientation histograms) on a 64 px greyscale copy, plus a
  4x4 colour thumbnail;
- texts (:class:`TfidfFeatures`): TF-IDF of word 1-2 grams, fitted on the training texts only;
- audio (:class:`LogMelFeatures`): per-band mean and standard deviation of a log-mel spectrogram over every frame
  of a recording, and of its frame-to-frame differences.

Examples:

    >>> from transferkit.strategies.classical import ClassicalBaseline
    >>> base = ClassicalBaseline("text", seed=0).fit(decoded["train"])   # an EncodedTexts (.texts, .targets)
    >>> base.name_, base.predict_proba(decoded["test"]).shape
    ('TF-IDF + logistic regression', (120, 5))
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from ..errors import TransferkitError

# ---------------------------------------------------------------------------------------------------- images

# Measured on Fashion-MNIST (10 classes, 1,000 test images, 3 seeds; decoded at 224 px as a run does, then
# downsampled here), test accuracy at 5 / 10 / 25 / 50 labels per class:
#   raw pixels, 32 px grey                   0.602 / 0.667 / 0.725 / 0.740
#   raw pixels, 16 px grey                   0.606 / 0.672 / 0.720 / 0.735
#   HOG, 32 px grey, 4 px cells              0.643 / 0.718 / 0.794 / 0.820
#   HOG, 64 px grey, 8 px cells              0.685 / 0.749 / 0.803 / 0.832
#   HOG 64 px + 4x4 colour thumbnail         0.688 / 0.752 / 0.803 / 0.833   (kept; CV chose it 12 times of 12)
# HOG wins at every budget, by 8-9 points: gradient orientations pooled over cells tolerate the small shifts and
# contrast changes that raw pixels do not. The thumbnail costs nothing there and keeps colour, which HOG
# (contrast-normalised, greyscale) throws away. Fits took 2-8 s at 5-10 labels per class and 18-30 s at 50, on 2
# cores shared with other work: nearly all of it the probe's 13 Cs x 5 folds of L-BFGS, for each of two candidates.
IMAGE_SIZE = 64
HOG_CELL = 8  # pixels per cell: an 8 x 8 grid of cells at 64 px
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

    from ..data.pixelstore import chunks

    out = []
    for chunk in chunks(pixels):  # bounded memory: a float copy of a whole 224 px set would be 600 KB an image
        out.append(F.interpolate(chunk.float() / 255.0, size=(size, size), mode="area"))
    return torch.cat(out).permute(0, 2, 3, 1).numpy() if out else np.zeros((0, size, size, 3), np.float32)


class ImageFeatures:
    """HOG of a 64 px greyscale copy plus a 4x4 colour thumbnail (1,812 numbers an image). Stateless: ``fit``
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


class ColourThumbnail:
    """The 4x4 colour thumbnail alone (48 numbers): the candidate for images told apart by colour, where HOG's
    1,764 gradient numbers would only add noise for the probe to weigh. Stateless."""

    name = "colour thumbnail"

    def fit(self, data: Any) -> ColourThumbnail:
        return self

    def transform(self, data: Any) -> np.ndarray:
        small = _resize(getattr(data, "pixels", data), THUMBNAIL)
        return small.reshape(len(small), -1)


# ---------------------------------------------------------------------------------------------------- texts


# Measured on BBC News (5 topics, 500 test articles; 3 seeds up to 25 labels per class): test accuracy with the
# 5,000 / 20,000 most frequent terms: 0.787 / 0.789 at 5 per class, 0.930 / 0.929 at 25, 0.948 / 0.960 at 100,
# 0.966 / 0.976 with all 1,725 (fits of 0.6-1.2 s up to 25 per class, 53 s with all). Standardising the columns
# (the probe does) did not hurt: plain logistic regression on the raw TF-IDF scored 0.960 and 0.964 there.
MAX_TERMS = 20_000
MAX_CELLS = 50_000_000  # texts x terms: the probe holds a few dense float64 copies (400 MB each at this size)


class TfidfFeatures:
    """TF-IDF of word unigrams and bigrams (sublinear term frequency, every term seen in training, the
    ``max_features`` most frequent kept, fewer beyond 2,500 texts so that the dense matrix stays under 50 million
    numbers), fitted on the training texts only: a word that appears only in the test texts has no column.
    ``data``: an :class:`~transferkit.data.text.EncodedTexts` (its ``.texts``) or a list of strings. Learned:
    ``vectorizer_``."""

    name = "TF-IDF"

    def __init__(self, max_features: int = MAX_TERMS):
        self.max_features = max_features

    def fit(self, data: Any) -> TfidfFeatures:
        from sklearn.feature_extraction.text import TfidfVectorizer

        texts = _texts(data)
        terms = min(self.max_features, max(1000, MAX_CELLS // max(1, len(texts))))
        self.vectorizer_ = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1, max_features=terms,
                                           dtype=np.float32)
        try:
            self.vectorizer_.fit(texts)
        except ValueError:  # scikit-learn's "empty vocabulary"
            raise TransferkitError("The training texts hold no words of two letters or more: TF-IDF has nothing to "
                                   "count; check the text column.") from None
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

# Candidate features per modality, tried in order; the baseline keeps the one whose cross-validated log-likelihood
# is best (a tie keeps the first). Images need two: the probe standardises every column, so with a few labels the
# 48 colour numbers next to 1,764 HOG numbers weigh little, and colour patches that a thumbnail separates perfectly
# scored 0.58 with HOG + thumbnail (24 training images, conftest's colour patches; 1.00 with the thumbnail alone).
FEATURES: dict[str, tuple[type, ...]] = {"image": (ImageFeatures, ColourThumbnail), "text": (TfidfFeatures,),
                                         "audio": (LogMelFeatures,)}
FEATURES["medical"] = FEATURES["image"]  # medical images: the same image features


class ClassicalBaseline:
    """Hand-made features + cross-validated logistic regression: the non-deep baseline a practitioner would try
    first.

    Args:
        modality: ``"image"`` (also for medical images), ``"text"`` or ``"audio"``; picks the candidate features
            from :data:`FEATURES` (for images: HOG + colour thumbnail, or the thumbnail alone, whichever
            cross-validates better).
        seed: the cross-validation folds' shuffling.
        cv: folds for choosing the regularisation strength C. The baseline needs no validation split: give it
            every labelled example (training and validation).
        sample_rate: audio only, the rate of the decoded windows (transferkit's audio backbones read 16 kHz).

    Learned attributes: ``name_`` (e.g. ``"TF-IDF + logistic regression"``), ``features_`` (the fitted feature
    maker kept), ``probe_`` (the fitted :class:`~transferkit.heads.probe.LogisticProbe`), ``num_classes_``,
    ``cv_scores_`` (each candidate's best mean cross-validated log-likelihood, by name; empty without enough
    examples to cross-validate).

    Examples:

        >>> base = ClassicalBaseline("image", seed=0).fit(decoded["train"])    # DecodedImages
        >>> base.predict_proba(decoded["test"]).argmax(1)[:5]

    Raises :class:`~transferkit.errors.TransferkitError` for an unknown modality or data it cannot read.
    """

    def __init__(self, modality: str, seed: int = 0, cv: int = 5, sample_rate: int = 16_000):
        self.modality, self.seed, self.cv, self.sample_rate = modality, seed, cv, sample_rate

    def fit(self, data: Any, targets: Any = None, *, num_classes: int | None = None) -> ClassicalBaseline:
        """Fit the features on ``data``, then the probe on them. ``targets``: (N,) class indices or (N, K)
        multi-hot, by default ``data.targets``; ``num_classes`` keeps classes absent from them."""
        # loaded before the probe limits BLAS to one thread: scipy's own OpenBLAS, loaded lazily by the first
        # logistic regression inside that limit, escaped it and made the first fit 6x slower on 2 busy cores
        import sklearn.linear_model  # noqa: F401

        from ..heads.probe import LogisticProbe

        if self.modality not in FEATURES:
            raise TransferkitError(f"The classical baseline has no features for {self.modality!r}: choose "
                                   f"{', '.join(FEATURES)}.")
        y = _targets(getattr(data, "targets", None) if targets is None else targets)
        self.cv_scores_: dict[str, float] = {}
        best = None
        for maker in FEATURES[self.modality]:
            # features computed from waveforms need their sample rate; the others take no setting
            takes_rate = "sample_rate" in inspect.signature(maker).parameters
            features = (maker(sample_rate=self.sample_rate) if takes_rate else maker()).fit(data)
            X = features.transform(data)
            if len(X) != len(y):
                raise TransferkitError(f"The baseline got {len(X)} examples but {len(y)} targets: give one target "
                                       "each.")
            # the same seed gives every candidate the same folds, so their scores compare like for like
            probe = LogisticProbe(cv=self.cv, seed=self.seed).fit(X, y, num_classes=num_classes)
            score = max(probe.cv_scores_.values(), default=float("-inf"))
            if probe.cv_scores_:
                self.cv_scores_[features.name] = score
            if best is None or score > best[0]:
                best = (score, features, probe)
        _, self.features_, self.probe_ = best
        self.num_classes_ = self.probe_.num_classes_
        self.name_ = f"{self.features_.name} + logistic regression"
        return self

    def predict_proba(self, data: Any) -> np.ndarray:
        """``(N, num_classes_)`` class probabilities (per-label probabilities for multi-label targets)."""
        return self.probe_.predict_proba(self.features_.transform(data))

    def predict(self, data: Any) -> np.ndarray:
        """Class indices ``(N,)`` (0/1 per label for multi-label targets)."""
        return self.probe_.predict(self.features_.transform(data))


def _targets(t: Any) -> np.ndarray:
    if t is None:
        raise TransferkitError("The baseline needs targets: give fit(data, targets) or data with .targets.")
    if hasattr(t, "detach"):
        t = t.detach().cpu().numpy()
    return np.asarray(t)


# ---------------------------------------------------------------------------------------------------- reading data


def decode_for_baseline(modality: str, sets: dict[str, Any], classes: list[str], *, image_preprocess: Any = None,
                        skip_bad: bool = False) -> dict[str, tuple[Any, np.ndarray]]:
    """Example sets (:class:`~transferkit.data.sources.ImageSet`, :class:`~transferkit.data.text.TextSet`,
    :class:`~transferkit.data.sources.AudioSet`) -> ``{name: (data, targets)}`` as :class:`ClassicalBaseline`
    takes them, without a backbone.

    Images are decoded with ``image_preprocess`` (give the backbone's: the baseline then sees the same crop,
    window and padding) at the 64 px the features are taken at; texts pass as they are; audio is read
    at 16 kHz mono and cut into windows whose length comes from the first set's durations, as a run's is.

    Examples:

        >>> sets = decode_for_baseline("text", {"train": part.train, "test": part.test}, part.classes)
        >>> base = ClassicalBaseline("text").fit(*sets["train"], num_classes=len(part.classes))

    Raises :class:`~transferkit.errors.DataError` for unreadable files (skipped instead with ``skip_bad``).
    """
    reader = READERS.get(modality)
    if reader is None:
        raise TransferkitError(f"The classical baseline has no reader for {modality!r}: choose {', '.join(READERS)}.")
    index = {c: i for i, c in enumerate(classes)}
    return reader(sets, index, classes, image_preprocess, skip_bad)


def _read_texts(sets: dict[str, Any], index: dict[str, int], classes: list[str], image_preprocess: Any,
                skip_bad: bool) -> dict[str, tuple[Any, np.ndarray]]:
    from ..data.labels import label_targets

    return {name: (ds, label_targets(ds.labels, classes, ds.multi_label).numpy()) for name, ds in sets.items()}


def _read_audio(sets: dict[str, Any], index: dict[str, int], classes: list[str], image_preprocess: Any,
                skip_bad: bool) -> dict[str, tuple[Any, np.ndarray]]:
    import dataclasses

    from ..backbones.audio import AudioPreprocessConfig
    from ..data.audio import choose_clip_seconds, read_clips, window_clips
    from ..data.labels import label_targets

    out: dict[str, tuple[Any, np.ndarray]] = {}
    pre = AudioPreprocessConfig()  # 16 kHz mono, no loudness or silence processing: the plain recording
    clip = None
    for name, ds in sets.items():
        clips = read_clips(ds.items, pre, skip_bad=skip_bad, array_rate=getattr(ds, "sample_rate", None),
                           description=f"reading {name} (classical)")
        if clip is None:
            clip = dataclasses.replace(pre, clip_seconds=choose_clip_seconds(clips.durations(pre.sample_rate)))
        labels = [ds.labels[i] for i in clips.kept]
        dec = window_clips(clips, label_targets(labels, classes, ds.multi_label), clip.clip_samples)
        out[name] = (dec, dec.targets.numpy())
    return out


def _decode_images(sets: dict[str, Any], index: dict[str, int], classes: list[str], image_preprocess: Any,
                   skip_bad: bool) -> dict[str, tuple[Any, np.ndarray]]:
    import dataclasses

    from ..backbones.protocol import PreprocessConfig
    from ..data.images import decode

    out: dict[str, tuple[Any, np.ndarray]] = {}
    pre = dataclasses.replace(image_preprocess or PreprocessConfig(), input_size=(IMAGE_SIZE, IMAGE_SIZE))
    for name, ds in sets.items():
        dec = decode(ds, pre, classes, skip_bad=skip_bad, description=f"decoding {name} (classical)")
        out[name] = (dec, dec.targets.numpy())
    return out


# how each kind of example set is read for the baseline (medical images as images)
READERS = {"image": _decode_images, "medical": _decode_images, "text": _read_texts, "audio": _read_audio}
