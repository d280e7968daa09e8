"""Audio backbones, in the same :class:`Backbone` contract: a batch of waveforms ``(B, samples)`` at the
backbone's sample rate -> pooled features ``(B, num_features)``.

Three kinds, each with its own :class:`AudioPreprocessConfig` (sample rate, window length, spectrogram
settings, loudness normalisation), saved in every bundle:

- :class:`SpectrogramBackbone`: any image backbone of the registry (the offline EfficientNet-Lite0 by default)
  on log-mel spectrograms, the standard cross-domain route (ImageNet -> audio). The spectrogram is computed
  inside the module (``torch.stft``, no torchaudio), standardised with the training set's statistics, resized
  to the CNN's input height and repeated over its three input channels; SpecAugment masks apply while training.
- :class:`SpeakerEncoder`: Resemblyzer's GE2E speaker encoder (3-layer LSTM, 256-d, weights from PyPI
  ``resemblyzer``), for voice and speaker tasks. Its mel frontend and partial-utterance averaging follow
  Resemblyzer's ``embed_utterance``: a zero-padded window embeds as its recording does there (tested to 1e-4).
- :class:`HFAudioBackbone`: Hugging Face audio encoders by name (AST, wav2vec2, HuBERT, ...) through their own
  feature extractors; needs internet the first time, offline it fails with one sentence.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import BackboneError
# imported for its registrations: the image weight sources (checkpoint.py and the sources.py it imports), any of
# which a spectrogram backbone wraps
from . import checkpoint  # noqa: F401
from .hub import hub_offline_unless_reachable, quiet_transformers, refuse_remote_code
from .protocol import BackboneSpec, NamedLayerGroups, build_from_spec, register_source

AUDIO_SOURCES = ("spectrogram", "speaker", "hf-audio", "hf-audio-dir")
SPEAKER_NAMES = ("speaker-encoder", "resemblyzer")
AUDIO_BACKBONES: dict[str, dict[str, Any]] = {
    "speaker-encoder": {
        "package": "resemblyzer",
        "pip": "resemblyzer",
        "params_m": 1.4,
        "description": "Resemblyzer GE2E speaker encoder: 3-layer LSTM, 256-d, 16 kHz (voices, speakers)",
    },
}
OFFLINE_AUDIO_HINT = ("use the offline audio backbones (efficientnet_lite0 on spectrograms, speaker-encoder) or a "
                      "local model folder")


@dataclass(frozen=True)
class AudioPreprocessConfig:
    """How recordings become network input.

    Every recording is mixed down to mono and resampled to ``sample_rate``; quiet recordings are raised to
    ``target_dbfs`` (never lowered) when set; leading/trailing audio more than ``trim_db`` below the peak is cut
    when set. The network sees windows of ``clip_seconds``: shorter recordings are zero-padded at the end,
    longer ones are cut into windows every ``clip_seconds / 2`` whose outputs are averaged per recording.

    Spectrogram settings: ``n_fft``-point Hann STFT every ``hop_length`` samples, ``n_mels`` mel bands
    (Slaney scale and area normalisation, as librosa) from ``fmin`` to ``fmax``; ``log``: decibels clipped
    at ``top_db`` below each window's maximum, then standardised with ``mean``/``std``; ``image_height``: the
    spectrogram is resized to that many rows (the CNN's input size), time stretched alike, or to exactly
    ``image_width`` columns for networks with a fixed input size (vision transformers).
    """

    kind: str = "spectrogram"  # "spectrogram", "speaker" or "hf"
    sample_rate: int = 16000
    clip_seconds: float = 1.0
    n_fft: int = 400
    hop_length: int = 160
    n_mels: int = 128
    fmin: float = 20.0
    fmax: float | None = None  # None: sample_rate / 2
    log: bool = True
    top_db: float = 80.0
    mean: float = 0.0
    std: float = 1.0
    image_height: int | None = 224
    image_width: int | None = None
    target_dbfs: float | None = None
    trim_db: float | None = None

    @property
    def clip_samples(self) -> int:
        return int(round(self.clip_seconds * self.sample_rate))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AudioPreprocessConfig:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


# ---------------------------------------------------------------------------------------------- mel frontend


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    lin = f / (200.0 / 3)
    return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), lin)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), (200.0 / 3) * m)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
    """Triangular mel filters ``(n_mels, n_fft // 2 + 1)`` on the Slaney scale, each normalised to unit area
    (the same filters as ``librosa.filters.mel`` with its defaults)."""
    fmax = float(fmax or sample_rate / 2)
    bins = np.linspace(0, sample_rate / 2, 1 + n_fft // 2)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges)
    weights = np.zeros((n_mels, len(bins)))
    for i in range(n_mels):
        rising = (bins - edges[i]) / widths[i]
        falling = (edges[i + 2] - bins) / widths[i + 1]
        weights[i] = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2 : n_mels + 2] - edges[:n_mels]))[:, None]
    return weights.astype(np.float32)


class MelSpectrogram(nn.Module):
    """Waveforms ``(B, N)`` -> mel power spectrogram ``(B, n_mels, frames)`` (centred frames, zero padding; ``1 + N //
    hop`` frames for an even ``n_fft``), or decibels standardised with ``mean``/``std`` when ``pre.log``; float32.

    Computed in float64 (float32 where the device has none, Apple's MPS): in float32 a quiet frequency's decibels
    carry the rounding of the loudest one's (up to 1e-4 after standardisation, which a linear probe's large weights
    turn into 1e-4 in probabilities), so two correct float32 implementations (``torch.stft`` here, the exported
    graph's :class:`FramedMelSpectrogram`) would not agree to the export's tolerance. The cost is small beside the
    network's."""

    def __init__(self, pre: AudioPreprocessConfig):
        super().__init__()
        self.pre = pre
        fb = mel_filterbank(pre.sample_rate, pre.n_fft, pre.n_mels, pre.fmin, pre.fmax)
        # buffers, not parameters; not saved (persistent=False): they follow from the preprocessing config
        self.register_buffer("filters", torch.from_numpy(fb), persistent=False)
        self.register_buffer("window", torch.hann_window(pre.n_fft), persistent=False)

    def power(self, waves: torch.Tensor) -> torch.Tensor:
        """The power spectrogram ``(B, n_fft // 2 + 1, frames)`` of waveforms, in their dtype."""
        pre = self.pre
        spec = torch.stft(waves, pre.n_fft, pre.hop_length, window=self.window.to(waves.dtype), center=True,
                          pad_mode="constant", return_complex=True)
        return spec.abs().pow(2)

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        pre = self.pre
        dtype = torch.float32 if waves.device.type == "mps" else torch.float64
        with torch.autocast(device_type=waves.device.type, enabled=False):
            mel = self.filters.to(dtype) @ self.power(waves.to(dtype))
            if not pre.log:
                return mel.float()
            db = 10.0 * torch.log10(mel.clamp(min=1e-10))
            db = torch.maximum(db, db.amax(dim=(1, 2), keepdim=True) - pre.top_db)
            return ((db - pre.mean) / pre.std).float()


class FramedMelSpectrogram(MelSpectrogram):
    """:class:`MelSpectrogram` with its STFT written as frames (an index gather) times a matrix of cosines and sines
    with the Hann window folded in: the same numbers (float64 both), from operators that onnxruntime runs in float64
    (an exported audio model's first step; training keeps ``torch.stft``)."""

    def __init__(self, pre: AudioPreprocessConfig):
        super().__init__(pre)
        n = pre.n_fft
        k = torch.arange(n // 2 + 1, dtype=torch.float64)[None]
        angle = 2 * torch.pi * torch.arange(n, dtype=torch.float64)[:, None] * k / n
        window = self.window.double()[:, None]
        basis = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window], dim=1)
        self.register_buffer("basis", basis, persistent=False)  # (n_fft, 2 * bins): real parts, then imaginary
        # the graph keeps its constants in float64, which also tells them from the network's weights (INT8's share)
        self.filters = self.filters.double()

    def power(self, waves: torch.Tensor) -> torch.Tensor:
        pre = self.pre
        half = pre.n_fft // 2
        x = nn.functional.pad(waves, (half, half))  # centred frames, zero padding (as torch.stft)
        frames = 1 + (x.shape[1] - pre.n_fft) // pre.hop_length
        at = (torch.arange(frames, device=x.device)[:, None] * pre.hop_length
              + torch.arange(pre.n_fft, device=x.device)[None])
        parts = x[:, at] @ self.basis.to(waves.dtype)  # (B, frames, 2 * bins)
        bins = pre.n_fft // 2 + 1
        return (parts[..., :bins].pow(2) + parts[..., bins:].pow(2)).transpose(1, 2)


class SpecAugment(nn.Module):
    """SpecAugment-style masking (Park et al. 2019) while training: ``n`` frequency bands of up to
    ``freq_fraction`` of the rows and ``n`` time spans of up to ``time_fraction`` of the columns set to 0 (the
    standardised mean). Does nothing in eval mode."""

    def __init__(self, n: int = 2, freq_fraction: float = 0.15, time_fraction: float = 0.1):
        super().__init__()
        self.n, self.freq_fraction, self.time_fraction = n, freq_fraction, time_fraction

    def forward(self, spec: torch.Tensor) -> torch.Tensor:  # (B, 1, F, T)
        if not self.training:
            return spec
        b, _, f, t = spec.shape
        keep = torch.ones_like(spec, dtype=torch.bool)
        for axis, size, frac in ((2, f, self.freq_fraction), (3, t, self.time_fraction)):
            for _ in range(self.n):
                width = (torch.rand(b, device=spec.device) * frac * size).long()
                start = (torch.rand(b, device=spec.device) * (size - width + 1)).long()
                pos = torch.arange(size, device=spec.device)
                band = (pos[None] >= start[:, None]) & (pos[None] < (start + width)[:, None])  # (B, size)
                shape = (b, 1, size, 1) if axis == 2 else (b, 1, 1, size)
                keep &= ~band.view(shape)
        return spec * keep


# ---------------------------------------------------------------------------------------------- backbones


class AudioBackbone(NamedLayerGroups, nn.Module):
    """What the three audio kinds share: layer groups by parameter name, ``modality``, the training profile."""

    modality = "audio"
    profile = "audio"
    has_frontend = False  # a mel frontend inside the module, rebuilt whenever the preprocessing changes

    def __init__(self, body: nn.Module, spec: BackboneSpec, num_features: int, preprocess: AudioPreprocessConfig,
                 groups: list[list[str]]):
        super().__init__()
        self.body = body
        self.spec = spec
        self.num_features = int(num_features)
        self._preprocess = preprocess
        self._group_names = groups
        self._rebuild_frontend()

    @property
    def preprocess(self) -> AudioPreprocessConfig:
        return self._preprocess

    @preprocess.setter
    def preprocess(self, value: AudioPreprocessConfig) -> None:
        self._preprocess = value
        self._rebuild_frontend()

    def _rebuild_frontend(self) -> None:
        if self.has_frontend:  # on the device the previous frontend was on
            old = getattr(self, "frontend", None)
            new = MelSpectrogram(self.preprocess)
            self.frontend = new.to(old.filters.device) if old is not None else new

    def set_augment(self, on: bool) -> None:
        """Turn SpecAugment masking on or off for training (kinds without a spectrogram ignore it)."""

    def exportable(self) -> nn.Module:
        """The same network and weights, written with operators an ONNX exporter can trace (waveform windows in,
        features out); raises :class:`BackboneError` for a kind whose input steps cannot be in a graph."""
        raise BackboneError(f"Audio backbone {self.spec.name!r} runs its inputs through a Hugging Face feature "
                            "extractor, which is not in an ONNX graph: audio models on spectrograms "
                            "(efficientnet_lite0 and other image backbones) and on the speaker encoder export.")

    def random_like(self) -> AudioBackbone:
        """The same architecture and preprocessing with random weights (the scratch baseline)."""
        bb = build_from_spec(self.spec, pretrained=False)
        bb.preprocess = self.preprocess
        return bb

    def extra_repr(self) -> str:
        return f"name={self.spec.name!r}, num_features={self.num_features}, kind={self.preprocess.kind!r}"


class SpectrogramBackbone(AudioBackbone):
    """An image CNN on log-mel spectrograms: waveforms -> standardised log-mel -> resized 3-channel image -> CNN."""

    has_frontend = True

    def __init__(self, image_backbone: nn.Module, spec: BackboneSpec, preprocess: AudioPreprocessConfig):
        super().__init__(image_backbone.body, spec, image_backbone.num_features, preprocess,
                         image_backbone.layer_group_names())
        self.masking = SpecAugment()
        self.masking_on = False

    def set_augment(self, on: bool) -> None:
        self.masking_on = bool(on)

    def exportable(self) -> nn.Module:
        """A copy whose spectrogram's STFT is :class:`FramedMelSpectrogram`'s."""
        import copy

        out = copy.deepcopy(self).eval()
        out.frontend = FramedMelSpectrogram(self.preprocess)
        return out

    def spectrogram(self, waves: torch.Tensor) -> torch.Tensor:
        """The standardised log-mel image ``(B, 1, n_mels, frames)`` the CNN sees (before resizing)."""
        return self.frontend(waves).unsqueeze(1)

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        x = self.spectrogram(waves)
        if self.training and self.masking_on:
            x = self.masking(x)
        return self.from_spectrogram(x)

    def from_spectrogram(self, x: torch.Tensor) -> torch.Tensor:
        """Features from the standardised log-mel image ``(B, 1, n_mels, frames)`` (:meth:`spectrogram`): resized to
        the image height the CNN was fitted at, repeated to three channels. Explanations edit the spectrogram
        between the two halves of :meth:`forward`."""
        h = self.preprocess.image_height
        if h:
            width = self.preprocess.image_width or max(8, round(x.shape[-1] * h / x.shape[-2]))
            x = nn.functional.interpolate(x, size=(h, width), mode="bilinear", align_corners=False)
        x = x.expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last)
        return self.body(x)


class GE2E(nn.Module):
    """The GE2E speaker-encoder network (Wan et al. 2018), as Resemblyzer ships it: mel frames ``(B, T, 40)`` ->
    3-layer LSTM -> last hidden state -> linear -> ReLU -> unit length."""

    def __init__(self, n_mels: int = 40, hidden: int = 256, layers: int = 3, embedding: int = 256):
        super().__init__()
        self.lstm = nn.LSTM(n_mels, hidden, layers, batch_first=True)
        self.linear = nn.Linear(hidden, embedding)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(mels)
        e = torch.relu(self.linear(hidden[-1]))
        return e / e.norm(dim=1, keepdim=True).clamp(min=1e-8)


SPEAKER_PARTIAL_FRAMES = 160  # 1.6 s partial utterances
SPEAKER_RATE = 1.3  # partial utterances per second (Resemblyzer's default)
SPEAKER_MIN_COVERAGE = 0.75


def partial_slices(n_samples: int, hop: int, sample_rate: int, frames: int = SPEAKER_PARTIAL_FRAMES,
                   rate: float = SPEAKER_RATE, min_coverage: float = SPEAKER_MIN_COVERAGE) -> list[int]:
    """Start frames of the partial utterances that cover ``n_samples`` (Resemblyzer's scheme): one every
    ``1 / rate`` seconds; the last one is dropped when less than ``min_coverage`` of it holds audio."""
    n_frames = int(np.ceil((n_samples + 1) / hop))
    step = int(np.round((sample_rate / rate) / hop))
    starts = list(range(0, max(1, n_frames - frames + step + 1), step))
    coverage = (n_samples - starts[-1] * hop) / (frames * hop)
    if coverage < min_coverage and len(starts) > 1:
        starts = starts[:-1]
    return starts


class SpeakerEncoder(AudioBackbone):
    """Resemblyzer's speaker encoder: waveforms -> mel power frames -> partial utterances of 1.6 s -> GE2E
    embeddings -> their average, at unit length."""

    profile = "speaker"
    has_frontend = True

    def __init__(self, body: GE2E, spec: BackboneSpec, preprocess: AudioPreprocessConfig):
        layers = body.lstm.num_layers
        groups = [[f"lstm.{w}_l{i}" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")] for i in range(layers)]
        super().__init__(body, spec, body.linear.out_features, preprocess, groups + [["linear.weight", "linear.bias"]])

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        pre, frames = self.preprocess, SPEAKER_PARTIAL_FRAMES
        # each row's own length (its window was zero-padded at the end): the partial utterances cover the
        # recording, as Resemblyzer's embed_utterance does, not the padding
        nonzero = (waves != 0).int()
        lengths = (waves.shape[1] - nonzero.flip(1).argmax(1)).where(nonzero.any(1), waves.shape[1]).tolist()
        starts = [partial_slices(n, pre.hop_length, pre.sample_rate) for n in lengths]
        need = (max(s[-1] for s in starts) + frames) * pre.hop_length
        if need > waves.shape[1]:  # zero-pad so the last partial utterance is whole
            waves = nn.functional.pad(waves, (0, need - waves.shape[1]))
        mel = self.frontend(waves).transpose(1, 2)  # (B, T, n_mels)
        most = max(len(s) for s in starts)
        parts = torch.stack([torch.stack([mel[b, s : s + frames] for s in row + row[:1] * (most - len(row))])
                             for b, row in enumerate(starts)])  # (B, P, 160, M); short rows repeat a partial
        keep = torch.tensor([[i < len(row) for i in range(most)] for row in starts], device=waves.device)
        b, p = parts.shape[:2]
        with torch.autocast(device_type=waves.device.type, enabled=False):
            e = self.body(parts.reshape(b * p, frames, -1).float()).view(b, p, -1)
        e = (e * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)
        return e / e.norm(dim=1, keepdim=True).clamp(min=1e-8)


    def exportable(self) -> nn.Module:
        return SpeakerWindows(self)


class SpeakerWindows(nn.Module):
    """:class:`SpeakerEncoder`'s forward for windows of one fixed length, written without Python loops over rows, so
    an exporter can trace it: every partial utterance a whole window can hold is embedded, and each row averages the
    ones its own length (its window without the trailing zero padding) covers, as :func:`partial_slices` chooses
    them (a row's partial utterances are always the first ones of a whole window's)."""

    def __init__(self, encoder: SpeakerEncoder):
        super().__init__()
        import copy

        pre = encoder.preprocess
        self.pre, self.body = pre, copy.deepcopy(encoder.body).eval()
        self.frontend = FramedMelSpectrogram(pre)
        self.starts = partial_slices(pre.clip_samples, pre.hop_length, pre.sample_rate)
        self.need = max(pre.clip_samples, (self.starts[-1] + SPEAKER_PARTIAL_FRAMES) * pre.hop_length)

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        pre, frames, hop = self.pre, SPEAKER_PARTIAL_FRAMES, self.pre.hop_length
        n = waves.shape[1]
        nonzero = (waves != 0).to(torch.int64)
        lengths = torch.where(nonzero.amax(1) > 0, n - nonzero.flip(1).argmax(1), torch.full_like(nonzero[:, 0], n))
        step = int(np.round((pre.sample_rate / SPEAKER_RATE) / hop))
        n_frames = (lengths + hop) // hop  # ceil((length + 1) / hop)
        count = (torch.clamp(n_frames - frames + step + 1, min=1) + step - 1) // step
        coverage = (lengths - (count - 1) * step * hop).to(torch.float32) / (frames * hop)
        count = torch.where((coverage < SPEAKER_MIN_COVERAGE) & (count > 1), count - 1, count)
        mel = self.frontend(nn.functional.pad(waves, (0, self.need - n))).transpose(1, 2)  # (B, T, n_mels)
        parts = torch.stack([mel[:, s : s + frames] for s in self.starts], dim=1)  # (B, P, frames, n_mels)
        b, p = parts.shape[:2]
        e = self.body(parts.reshape(b * p, frames, -1).float()).view(b, p, -1)
        keep = (torch.arange(p, device=waves.device)[None] < count[:, None]).to(e.dtype)
        e = (e * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)
        return e / e.norm(dim=1, keepdim=True).clamp(min=1e-8)


class HFAudioBackbone(AudioBackbone):
    """A Hugging Face audio encoder behind its own feature extractor; features are the time-averaged last
    hidden states (or the model's pooled output when it has one, e.g. AST)."""

    profile = "hf_audio"

    def __init__(self, body: nn.Module, extractor: Any, spec: BackboneSpec, preprocess: AudioPreprocessConfig):
        width = getattr(body.config, "hidden_size", None) or getattr(body.config, "d_model", None)
        if not width:
            raise BackboneError(f"Audio encoder {spec.name!r} does not say its feature size (no hidden_size or d_model "
                                "in its config): use an encoder such as AST, wav2vec2, HuBERT or Whisper.")
        super().__init__(body, spec, int(width), preprocess, ordered_layer_groups(body))
        self.__dict__["extractor"] = extractor  # not a module: kept out of the module tree
        # wav2vec2-style models mask time steps themselves while training: only when augmentation is asked for
        self._mask_time_prob = getattr(body.config, "mask_time_prob", None)

    def set_augment(self, on: bool) -> None:
        if self._mask_time_prob is not None:
            self.body.config.mask_time_prob = self._mask_time_prob if on else 0.0

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        arrays = list(waves.detach().float().cpu().numpy())
        inputs = self.extractor(arrays, sampling_rate=self.preprocess.sample_rate, return_tensors="pt")
        inputs = {k: v.to(waves.device) for k, v in inputs.items()
                  if k in ("input_values", "input_features", "attention_mask")}
        out = self.body(**inputs)
        pooled = getattr(out, "pooler_output", None)
        return pooled if pooled is not None else out.last_hidden_state.mean(1)


def ordered_layer_groups(body: nn.Module) -> list[list[str]]:
    """Parameters before the first numbered layer (``layer.N``/``layers.N``), then one group per layer, then the
    rest, in the model's own order (a wav2vec2 convolutional front end stays on the input side)."""
    groups: list[list[str]] = [[]]
    seen: dict[int, int] = {}
    tail: list[str] = []
    for name, _ in body.named_parameters():
        m = re.search(r"(?:^|\.)(?:layer|layers)\.(\d+)\.", name)
        if m:
            idx = int(m.group(1))
            if idx not in seen:
                seen[idx] = len(groups)
                groups.append([])
            groups[seen[idx]].append(name)
        elif seen:
            tail.append(name)
        else:
            groups[0].append(name)
    return [g for g in [*groups, tail] if g]


# ---------------------------------------------------------------------------------------------- resolve/build


def resolve_audio(name: str, image_resolve) -> BackboneSpec:
    """What ``name`` means when the data are audio: the speaker encoder, a Hugging Face audio encoder (hub id or
    local folder with a feature extractor), or any image backbone used on spectrograms."""
    if name.lower() in SPEAKER_NAMES:
        return BackboneSpec("speaker-encoder", "speaker", "ge2e", "PyPI resemblyzer", {"modality": "audio"})
    path = Path(name).expanduser()
    if path.is_dir() and (path / "preprocessor_config.json").is_file() and (path / "config.json").is_file():
        return BackboneSpec(name, "hf-audio-dir", str(path.resolve()), str(path.resolve()), {"modality": "audio"})
    if name.startswith("hf:") or (re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name) and not path.exists()):
        return BackboneSpec(name, "hf-audio", name.removeprefix("hf:"), "Hugging Face hub", {"modality": "audio"})
    image = image_resolve(name)
    if image.extra.get("modality") == "text":
        raise BackboneError(f"Backbone {name!r} is a text encoder, but the data are audio: use efficientnet_lite0 "
                            "(spectrograms) or speaker-encoder.")
    if image.source in AUDIO_SOURCES:
        return image
    return BackboneSpec(name, "spectrogram", image.arch, image.weights, {"modality": "audio", "image": image.to_dict()})


def speaker_weights() -> Path:
    """Resemblyzer's ``pretrained.pt``, found without importing the package (which needs librosa and webrtcvad)."""
    found = importlib.util.find_spec("resemblyzer")
    if found is None or not found.submodule_search_locations:
        raise BackboneError("Backbone 'speaker-encoder' needs its weights package: run "
                            "`pip install 'transferkit[audio]'` (or `pip install resemblyzer`).")
    path = Path(list(found.submodule_search_locations)[0]) / "pretrained.pt"
    if not path.is_file():
        raise BackboneError(f"{path} is missing: reinstall it with `pip install --force-reinstall resemblyzer`.")
    return path


@register_source(*AUDIO_SOURCES)
def build_audio(spec: BackboneSpec, pretrained: bool = True) -> AudioBackbone:
    """Build the audio backbone ``spec`` describes (pretrained weights only when asked)."""
    if spec.source == "spectrogram":
        image = build_from_spec(BackboneSpec.from_dict(spec.extra["image"]), pretrained=pretrained)
        h, w = image.preprocess.input_size
        # vision transformers take one input size only: the spectrogram is then resized to it whole
        fixed = (bool(getattr(image.body, "pretrained_cfg", {}).get("fixed_input_size"))
                 or hasattr(image.body, "image_size"))
        out = replace(spec, weights=spec.weights if pretrained else "random")
        pre = AudioPreprocessConfig(kind="spectrogram", image_height=h, image_width=w if fixed else None)
        return SpectrogramBackbone(image, out, pre)
    if spec.source == "speaker":
        body = GE2E()
        if pretrained:
            path = speaker_weights()
            state = torch.load(path, map_location="cpu", weights_only=True)["model_state"]
            body.load_state_dict({k: v for k, v in state.items() if not k.startswith("similarity_")})
        pre = AudioPreprocessConfig(kind="speaker", sample_rate=16000, n_fft=400, hop_length=160, n_mels=40, fmin=0.0,
                                    log=False, image_height=None, target_dbfs=-30.0, trim_db=40.0)
        return SpeakerEncoder(body.eval(), replace(spec, weights=spec.weights if pretrained else "random"), pre)
    return build_hf_audio(spec, pretrained)


def build_hf_audio(spec: BackboneSpec, pretrained: bool = True, folder: Path | None = None) -> HFAudioBackbone:
    """A Hugging Face audio encoder and its feature extractor from the hub, a local folder, or a bundle."""
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

    with quiet_transformers():
        folder = folder or _hf_audio_dir(spec)
        refuse_remote_code(folder)  # a model folder or bundle is data: one asking to run code is refused
        try:
            extractor = AutoFeatureExtractor.from_pretrained(str(folder), trust_remote_code=False)
            config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
            body = (AutoModel.from_pretrained(str(folder), trust_remote_code=False) if pretrained
                    else AutoModel.from_config(config, trust_remote_code=False))
            if getattr(config, "is_encoder_decoder", False):  # Whisper and the like: the encoder alone
                body = body.get_encoder()
        except (OSError, ValueError, KeyError, AttributeError) as err:
            raise BackboneError(f"Cannot load an audio encoder from {folder} ({type(err).__name__}: "
                                f"{str(err).splitlines()[0][:160]}).") from None
    rate = int(getattr(extractor, "sampling_rate", 16000))
    pre = AudioPreprocessConfig(kind="hf", sample_rate=rate, log=False, image_height=None)
    spec = replace(spec, weights=spec.weights if pretrained else "random",
                   extra={**spec.extra, "modality": "audio", "model_type": config.model_type})
    return HFAudioBackbone(body, extractor, spec, pre)


def _hf_audio_dir(spec: BackboneSpec) -> Path:
    if spec.source == "hf-audio-dir":
        return Path(spec.arch)
    from huggingface_hub import snapshot_download

    try:
        with hub_offline_unless_reachable():
            folder = Path(snapshot_download(spec.arch, allow_patterns=["*.json", "*.txt", "*.safetensors"]))
            if not any(folder.rglob("*.safetensors")):  # older repos ship only pytorch_model.bin
                folder = Path(snapshot_download(spec.arch, allow_patterns=["*.json", "*.txt", "*.bin"]))
            return folder
    except Exception as err:  # offline, unknown repo, gated repo ...
        raise BackboneError(f"Could not download audio backbone {spec.arch!r} ({type(err).__name__}): connect to the "
                            f"internet, or {OFFLINE_AUDIO_HINT}.") from None


def save_audio_files(backbone: AudioBackbone, folder: Path) -> None:
    """A Hugging Face encoder's config and feature extractor (``encoder/``), so a bundle rebuilds without a download."""
    if isinstance(backbone, HFAudioBackbone):
        config = backbone.body.config
        current = getattr(config, "mask_time_prob", None)
        if backbone._mask_time_prob is not None:  # the architecture as loaded (masking builds a parameter)
            config.mask_time_prob = backbone._mask_time_prob
        try:
            config.save_pretrained(str(folder / "encoder"))
        finally:
            if current is not None:
                config.mask_time_prob = current
        backbone.extractor.save_pretrained(str(folder / "encoder"))


def load_audio_backbone(folder: Path, spec: BackboneSpec, preprocess: AudioPreprocessConfig) -> AudioBackbone:
    """Rebuild an audio backbone (random weights) for a bundle in ``folder``."""
    if spec.source in ("hf-audio", "hf-audio-dir"):
        if not (folder / "encoder" / "config.json").is_file():
            raise BackboneError(f"{folder} is an audio bundle without encoder/config.json: copy the "
                                "whole model/ folder.")
        refuse_remote_code(folder / "encoder", scripts=True)  # a bundle is data: a tampered one must not run code
        bb = build_hf_audio(spec, pretrained=False, folder=folder / "encoder")
    else:
        bb = build_audio(spec, pretrained=False)
    bb.preprocess = preprocess
    return bb


@torch.no_grad()
def spectrogram_stats(backbone: AudioBackbone, waves: torch.Tensor, batch_size: int = 64) -> tuple[float, float]:
    """Mean and standard deviation of the log-mel decibels over the training windows, for the dataset-level
    standardisation (as AST does)."""
    pre = replace(backbone.preprocess, mean=0.0, std=1.0)
    front = MelSpectrogram(pre)
    total, total_sq, count = 0.0, 0.0, 0
    for start in range(0, len(waves), batch_size):
        db = front(waves[start : start + batch_size].float()).double()
        total += float(db.sum())
        total_sq += float((db * db).sum())
        count += db.numel()
    mean = total / max(1, count)
    std = max(1e-3, (total_sq / max(1, count) - mean**2) ** 0.5)
    return round(mean, 4), round(std, 4)


def describe(pre: AudioPreprocessConfig) -> str:
    """One line for the console and the report."""
    if pre.kind == "spectrogram":
        return (f"{pre.sample_rate} Hz, {pre.clip_seconds:g} s windows, {pre.n_mels}-band log-mel "
                f"({pre.n_fft / pre.sample_rate * 1000:.0f} ms / {pre.hop_length / pre.sample_rate * 1000:.0f} ms)"
                + (f" -> {pre.image_height} px high" if pre.image_height else ""))
    if pre.kind == "speaker":
        return f"{pre.sample_rate} Hz, {pre.clip_seconds:g} s windows, {pre.n_mels}-band mel, 1.6 s partial utterances"
    return f"{pre.sample_rate} Hz, {pre.clip_seconds:g} s windows, the model's feature extractor"
