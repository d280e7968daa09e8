"""Audio classification: recordings read once, resampled and cut into windows of ``clip_seconds``; windows are
augmented (time shift, gain, noise; the backbone adds SpecAugment masks), and a recording's score is the mean of
its windows' (in validation, in the metrics and in ``predict``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import TransferkitError, check_number
from .base import Prepared, RunSettings, data_kind, replace_preprocess
from .classification import ClassificationTask, LabelOptions, announce, existing_parts


@dataclass
class AudioOptions(LabelOptions):
    """How long a window is."""

    clip_seconds: float | None = field(default=None, metadata={
        "help": "Window length in seconds, 0.1 to 60 (default: from the training recordings' durations)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.clip_seconds is not None:
            check_number("clip_seconds", self.clip_seconds, low=0.1, high=60, example="1.0 (seconds)")


def check_scoring_cost(prepared: Prepared, clips: dict[str, Any], rate: int, settings: RunSettings) -> None:
    """Validation and test recordings are scored whole, window by window, however long they are: a one-hour
    recording is 14,000 windows of half a second, scored after every epoch (validation) or once (test). Warn about
    each long one (its file and duration); with a budget, time the backbone on a few windows and refuse a run whose
    scoring alone would not fit it (the run's budget plan keeps the scoring time out of training in any case)."""
    from ..console import warn

    clip = prepared.backbone.preprocess.clip_seconds
    long_after = max(60.0, 20 * clip)  # a minute, or 20 windows: far beyond what the model was trained to hear
    longest: tuple[float, str] | None = None
    for name in ("val", "test"):
        if name not in clips:
            continue
        durations = clips[name].durations(rate)
        long = [(float(d), clips[name].names[i]) for i, d in enumerate(durations) if d > long_after]
        if long:
            d, file = max(long)
            warn(f"{len(long)} {name} recording(s) last over {long_after:.0f} s, e.g. {file} ({_duration(d)}, "
                 f"{int(d / clip * 2)} windows): each is scored whole{' after every epoch' if name == 'val' else ''}; "
                 "cut long recordings into clips like the training ones")
            longest = max(longest or (0.0, ""), (d, file))
    if settings.seconds is None:
        return
    windows = {name: len(prepared.encoded[name].waves) for name in ("val", "test") if name in prepared.encoded}
    if not windows:
        return
    per_window = _seconds_per_window(prepared.backbone, prepared.encoded["train"].waves, settings)
    scoring = per_window * sum(windows.values())
    if scoring > settings.seconds:
        culprit = f"; the longest, {longest[1]}, lasts {_duration(longest[0])}" if longest else ""
        raise TransferkitError(f"Scoring the validation and test recordings ({sum(windows.values()):,} windows of "
                               f"{clip:g} s{culprit}) would take about {scoring:.0f} s, more than the whole budget "
                               f"({settings.seconds:g} s): cut long recordings into clips, or raise --budget.")


def _seconds_per_window(backbone: Any, waves: torch.Tensor, settings: RunSettings) -> float:
    """Measured seconds of one window's forward pass (a batch of up to 32), on the device the run will use."""
    from .budget import seconds_per_row

    device = "cuda" if torch.cuda.is_available() and not settings.cpu else "cpu"
    x = waves[:32].float()
    return seconds_per_row(backbone, x, len(x), device)


def _duration(seconds: float) -> str:
    h, rest = divmod(int(round(seconds)), 3600)
    return f"{h}h{rest // 60:02d}m{rest % 60:02d}s" if h else f"{rest // 60}m{rest % 60:02d}s"


class AudioWindowDataset(Dataset):
    """Audio windows (``DecodedAudio``), each read from the recordings (in memory or in the audio cache on disk);
    with ``augment`` each draw is shifted in time (up to 10% of the window, zero fill), scaled by a random gain
    (+-6 dB) and, half the time, mixed with white noise 15-40 dB below the signal."""

    def __init__(self, data: Any, augment: bool = False):
        self.waves, self.targets, self.augment = data.waves, data.window_targets(), augment

    def __len__(self) -> int:
        return len(self.waves)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.waves[i].float()
        return (augment_wave(x) if self.augment else x), self.targets[i]


def augment_wave(x: torch.Tensor, max_shift: float = 0.1, gain_db: float = 6.0, noise_p: float = 0.5,
                 snr_db: tuple[float, float] = (15.0, 40.0)) -> torch.Tensor:
    """One random time shift, gain and (sometimes) noise for a 1-D waveform, drawn from torch's generator."""
    n = len(x)
    shift = int((torch.rand(()) * 2 - 1) * max_shift * n)
    if shift:
        out = torch.zeros_like(x)
        if shift > 0:
            out[shift:] = x[:-shift]
        else:
            out[:shift] = x[-shift:]
        x = out
    x = x * 10 ** (float(torch.rand(()) * 2 - 1) * gain_db / 20)
    if torch.rand(()) < noise_p:
        rms = x.pow(2).mean().sqrt()
        if rms > 0:
            snr = snr_db[0] + float(torch.rand(())) * (snr_db[1] - snr_db[0])
            x = x + torch.randn_like(x) * rms * 10 ** (-snr / 20)
    return x


class AudioTask(ClassificationTask):
    name = "audio"
    title = "audio classification"
    bundle_task = "audio-classification"
    modality = "audio"
    Options = AudioOptions
    sniff_order = 30
    plural = "audio"
    unit = "recordings"
    reading_options = ("label_sep",)

    def sniff(self, data: Any, hints: dict[str, Any]) -> bool:
        return data_kind(data, hints) == "audio"

    def load_splits(self, data: Any, settings: RunSettings, options: AudioOptions, known: Sequence[str] = ()) -> Any:
        from ..data.sources import load_splits

        return load_splits(data, val_fraction=settings.val_fraction, test_fraction=settings.test_fraction,
                           seed=settings.seed, skip_bad=settings.skip_bad, kind="audio", known=known,
                           label_sep=options.label_sep)

    def prepare(self, data: Any, backbone: str | None, settings: RunSettings, options: AudioOptions,
                parts: tuple[str, ...] = ("train", "val", "test")) -> Prepared:
        """Audio -> splits, the audio backbone (window length and spectrogram statistics from the training set)
        and every split read once and cut into windows."""
        from ..backbones.audio import describe, spectrogram_stats
        from ..backbones.registry import create_backbone
        from ..data.audio import choose_clip_seconds, read_clips, window_clips
        from ..data.labels import label_targets

        t = time.monotonic()
        start, splits = self.start_and_splits(data, settings, options)
        # --init-from: the bundle's backbone with its window length and spectrogram statistics, as they were saved
        bb = start.backbone() if start is not None else create_backbone(backbone, arch=settings.arch, modality="audio")
        if settings.image_size is not None:
            if bb.preprocess.kind != "spectrogram":  # its range is checked with the run's settings
                raise TransferkitError("image_size sets the spectrogram height of a CNN backbone (32 pixels or more).")
            replace_preprocess(bb, image_height=settings.image_size)
        load_s = time.monotonic() - t
        rate = bb.preprocess.sample_rate
        for name, ds in existing_parts(splits, parts):
            if len(ds) == 0:
                raise TransferkitError(f"The {name} split has no recordings: give each class at least 3 recordings, "
                                       f"or put some in a {name}/ folder.")
        clips = {name: read_clips(ds.items, bb.preprocess, skip_bad=settings.skip_bad,
                                  array_rate=getattr(ds, "sample_rate", None), description=f"reading {name}")
                 for name, ds in existing_parts(splits, parts)}
        if start is None:
            durations = clips["train"].durations(rate)
            clip = float(options.clip_seconds) if options.clip_seconds is not None else choose_clip_seconds(durations)
            if options.clip_seconds is None and bb.preprocess.kind == "speaker":
                clip = max(clip, 1.6)  # at least one whole 1.6 s partial utterance per window
            replace_preprocess(bb, clip_seconds=clip)
        dec = {}
        for name, ds in existing_parts(splits, parts):
            c = clips[name]
            d = c.durations(rate)
            info = {"sources": c.source_rates, "silent": len(c.silent), "skipped": len(c.skipped),
                    "seconds": {"min": round(float(d.min()), 3), "median": round(float(np.median(d)), 3),
                                "max": round(float(d.max()), 3)}}
            targets = label_targets([ds.labels[i] for i in c.kept], splits.classes, ds.multi_label)
            dec[name] = window_clips(c, targets, bb.preprocess.clip_samples, info)
            dec[name].info["windows"] = len(dec[name].waves)
        if bb.preprocess.kind == "spectrogram" and start is None:  # log-mel standardised with the training set's
            mean, std = spectrogram_stats(bb, dec["train"].waves)  # statistics (as AST); a bundle keeps its own
            replace_preprocess(bb, mean=mean, std=std)
        prepared = Prepared(splits, bb, dec, {"load_s": load_s}, start=start)
        announce(prepared, describe(bb.preprocess))
        check_scoring_cost(prepared, clips, rate, settings)
        prepared.timings["decode_s"] = time.monotonic() - t - load_s
        return prepared

    def data_summary(self, prepared: Prepared, multi_label: bool) -> dict[str, Any]:
        summary = super().data_summary(prepared, multi_label)
        summary["audio"] = {name: d.info for name, d in prepared.encoded.items()}
        return summary

    def input_summary(self, metrics: dict[str, Any]) -> str:
        a = metrics["data"]["audio"]
        formats: dict[str, int] = {}
        for split in a.values():
            for k, v in split["sources"].items():
                formats[k] = formats.get(k, 0) + v
        silent = sum(v["silent"] for v in a.values())
        windows = ", ".join(f"{k} {v['windows']}" for k, v in a.items())
        return (f"{metrics['backbone']['input']}; windows {windows}; "
                f"files read: {', '.join(f'{n} at {k}' for k, n in formats.items())}"
                + (f"; {silent} silent" if silent else ""))

    def backbone_summary(self, backbone: Any) -> dict[str, Any]:
        from ..backbones.audio import describe

        return {**super().backbone_summary(backbone), "input": describe(backbone.preprocess)}

    # -- batches ----------------------------------------------------------------------------------------------
    def dataset(self, data: Any, augment: bool = False, hflip: bool = True) -> Dataset:
        return AudioWindowDataset(data, augment)

    def batch_input(self, backbone: Any):
        return lambda x: x.float()

    def aggregate(self, task: Any):
        """Validation logits per window -> mean per recording, with the recordings' targets, so early stopping,
        the best epoch and ``auto``'s choice use the same unit as the final metrics."""
        if task.val is None:
            return None
        from ..engine.inference import average_windows

        owner, targets = task.val.owner, task.val.targets

        def aggregate(logits: torch.Tensor, _window_targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return average_windows(logits, owner, len(targets)), targets

        return aggregate

    def sample(self, data: Any, n: int) -> Any:
        return data.waves[:n]

    def rows(self, data: Any) -> int:
        return len(data.waves)

    has_tta = True

    def tta_views(self, data: Any) -> list[Any]:
        from ..data.audio import shifted_views

        return shifted_views(data)

    def row_targets(self, data: Any) -> Any:
        return data.window_targets()

    def explainer(self, model: Any) -> Any:
        """On a spectrogram CNN: HiResCAM maps over the log-mel window that most supports the class. The speaker
        encoder and Hugging Face encoders have no such map."""
        if not hasattr(model.classifier.backbone, "from_spectrogram"):
            raise TransferkitError(f"Explanation maps need a CNN on spectrograms (efficientnet_lite0 and the other "
                                   f"image backbones); {model.classifier.backbone.spec.name!r} reads audio otherwise.")
        from ..evaluation.explainers import SpectrogramExplainer

        return SpectrogramExplainer(model.classifier, model.multi_label, model.classes)

    # -- bundle side ------------------------------------------------------------------------------------------
    def encode(self, model: Any, inputs: Any, skip_bad: bool) -> tuple[Any, list[Any]]:
        if isinstance(inputs, (str, Path)) or (isinstance(inputs, np.ndarray) and inputs.ndim == 1):
            raise TransferkitError("Pass a list of audio files or waveforms, not a single one: model.predict([x]).")
        return self._read(model, list(inputs), skip_bad, cache=False)

    def read_labelled(self, model: Any, source: Any, skip_bad: bool, **options: Any) -> Any:
        from ..data.sources import load_test_set

        sep = options.get("label_sep") or model.meta.get("label_sep")  # multi-label cells, split as in training
        files = self.labelled_like(model, load_test_set(source, skip_bad=skip_bad, kind="audio", label_sep=sep),
                                   source)
        data, _ = self._read(model, list(files.items), skip_bad, list(files.labels),
                             getattr(files, "sample_rate", None))
        return data

    def _read(self, model: Any, items: list[Any], skip_bad: bool, labels: list[str] | None = None,
              array_rate: int | None = None, cache: bool = True):
        """Audio files (or 1-D arrays at ``array_rate``, default the model's sample rate) -> windows, read as in
        training, and the items kept. ``cache``: False for ``predict`` (recordings seen once need no cache entry)."""
        from ..data.audio import read_clips, window_clips
        from ..data.labels import label_targets

        pre = model.preprocess
        clips = read_clips(items, pre, skip_bad=skip_bad, array_rate=array_rate or pre.sample_rate,
                           description="reading audio", cache=cache)
        kept = [items[i] for i in clips.kept]
        targets = label_targets([labels[i] for i in clips.kept], model.classes, model.multi_label) \
            if labels is not None else None
        return window_clips(clips, targets, pre.clip_samples), kept

    def export_spec(self, model: Any) -> Any:
        """The graph takes ``waves``, (windows, samples) float32 windows of ``clip_seconds`` as training cut them,
        and ``averaging``, (recordings, windows): row r holds 1/k at the k windows of recording r. The (log-)mel
        spectrogram is in the graph (:class:`~transferkit.backbones.audio.FramedMelSpectrogram`; the speaker
        encoder's partial utterances, :class:`~transferkit.backbones.audio.SpeakerWindows`), and so is the
        average of the windows' logits per recording (the second output, ``logits``: a long recording's windows
        can run in parts, their averages weighted by their windows); reading, resampling, trimming, levelling and
        cutting into windows are outside (``preprocessing.json`` and the reference script, with soundfile and
        scipy)."""
        from ..export.onnx import ExportSpec, reference_script
        from ..export.scripts.audio import CHUNK, averaged

        pre = model.preprocess
        decision = {"multi_label": bool(model.multi_label)}
        backbone = model.classifier.backbone.exportable()  # refuses a Hugging Face encoder (its feature extractor)
        classifier = type(model.classifier)(backbone, model.classifier.head).eval()  # the same head on the twin
        n = pre.clip_samples
        outside = ("read the recording (soundfile), average its channels, resample to sample_rate (polyphase, "
                   "scipy.signal.resample_poly); unless it is silent (peak under -60 dBFS): cut leading and trailing "
                   "10 ms frames more than trim_db below the loudest (when set), raise its RMS level to target_dbfs "
                   "(when set; never lowered); round to float16; cut into windows of clip_seconds every half "
                   "window, the last one zero-padded (a recording no longer than a window is one padded window)")

        def feeds(data: Any, idx: Any) -> dict[str, Any]:
            """Calibration inputs: the first windows of the recordings at ``idx``, 32 at most (INT8 needs the
            activations' ranges, and memory stays bounded), averaged per recording over those kept."""
            idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
            where = torch.full((len(data),), -1, dtype=torch.long)
            where[idx] = torch.arange(len(idx))
            rows = (where[data.owner] >= 0).nonzero().flatten()[:CHUNK]
            owner = where[data.owner[rows]]
            counts = torch.bincount(owner, minlength=len(idx)).clamp(min=1).float()
            averaging = torch.zeros(len(idx), len(rows))
            averaging[owner, torch.arange(len(rows))] = 1.0 / counts[owner]
            return {"waves": data.waves[rows.numpy()].float().numpy(), "averaging": averaging.numpy()}

        def run(session: Any, data: Any) -> np.ndarray:
            """Every recording's probabilities as the reference script computes them, its windows in parts."""
            ends = np.cumsum(torch.bincount(data.owner, minlength=len(data)).numpy())
            return np.stack([averaged(session, data.waves[np.arange(end - k, end)].float().numpy(), decision, CHUNK)
                             for end, k in zip(ends, np.diff(ends, prepend=0), strict=True)])

        return ExportSpec(
            prepare=None,
            inputs={"waves": torch.randn(3, n) * 0.1, "averaging": torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])},
            dynamic={"waves": {0: "windows"}, "averaging": {0: "recordings", 1: "windows"}},
            preprocessing={"kind": "audio", "graph_input": f"waves: (windows, {n}) float32; averaging: (recordings, "
                           "windows) float32, 1/k at the k windows of each recording", "outside_graph": outside,
                           "in_graph": "the mel spectrogram (n_fft, hop_length, n_mels, fmin, fmax; log: top_db, "
                           "mean, std), resized to image_height (spectrogram) or cut into 1.6 s partial utterances "
                           "(speaker), the network, the mean of each recording's window logits",
                           "frontend": pre.kind, **{k: v for k, v in pre.to_dict().items() if k != "kind"}},
            feeds=feeds,
            script=reference_script("audio"),
            classifier=classifier,
            pool=lambda logits, waves, averaging: averaging @ logits,
            outputs=("probabilities", "logits"),
            run=run,
            # onnxruntime's static (QDQ) quantization leaves an LSTM in fp32; its dynamic one quantizes LSTM weights
            quantization="dynamic" if pre.kind == "speaker" else "static",
        )

    def describe_rows(self, rows: list[dict[str, Any]], data: Any) -> None:
        for r, n in enumerate(torch.bincount(data.owner, minlength=len(rows)).tolist()):
            rows[r]["windows"] = n

    def save_files(self, backbone: Any, folder: Path) -> None:
        from ..backbones.audio import save_audio_files

        save_audio_files(backbone, folder)

    def load_backbone(self, folder: Path, spec: Any, config: dict[str, Any]) -> Any:
        from ..backbones.audio import AudioPreprocessConfig, load_audio_backbone

        return load_audio_backbone(folder, spec, AudioPreprocessConfig.from_dict(config["preprocess"]))
