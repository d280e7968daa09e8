"""Audio classification (issue 4): spectrogram and speaker-encoder backbones, windows, augmentation, strategies,
bundles, bad input, Hugging Face audio encoders, and the spoken-digit benchmark data."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

import transferkit
from transferkit.backbones import create_backbone
from transferkit.backbones.audio import (
    AudioPreprocessConfig,
    FramedMelSpectrogram,
    MelSpectrogram,
    SpecAugment,
    mel_filterbank,
    partial_slices,
)
from transferkit.data.audio import choose_clip_seconds, read_clips, window_clips
from transferkit.data.sources import AudioSet, detect_kind
from transferkit.engine.inference import average_windows
from transferkit.errors import BackboneError, DataError, TransferkitError
from transferkit.tasks.audio import augment_wave

FAST = {
    "linear": {},
    "finetune": {"epochs": 2, "batch_size": 8},
    "gradual": {"epochs": 3, "unfreeze_every": 1, "batch_size": 8},
    "scratch": {"epochs": 2, "batch_size": 8},
    "auto": {"max_epochs": 2, "min_epochs": 1},
}


def tone(freq: float, seconds: float, rate: int = 16_000) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# --------------------------------------------------------------------------------------------- spectrograms


def test_mel_filters_and_spectrogram_equal_librosa():
    import librosa  # the test extra installs it: a broken install must fail here, not skip
    for sr, n_fft, n_mels, fmin, fmax in [(16_000, 400, 40, 0.0, None), (16_000, 400, 128, 20.0, None),
                                          (22_050, 1024, 64, 50.0, 8000.0)]:
        ours = mel_filterbank(sr, n_fft, n_mels, fmin, fmax)
        ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
        np.testing.assert_allclose(ours, ref, atol=1e-7)
    x = np.random.default_rng(0).standard_normal(16_000).astype(np.float32) * 0.1
    pre = AudioPreprocessConfig(n_mels=40, fmin=0.0, log=False)
    ours = MelSpectrogram(pre)(torch.from_numpy(x)[None])[0].numpy()
    ref = librosa.feature.melspectrogram(y=x, sr=16_000, n_fft=400, hop_length=160, n_mels=40)
    assert ours.shape == ref.shape == (40, 101)
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-5


def test_the_framed_spectrogram_of_exports_equals_torch_stft():
    """The exported graph's STFT (frames times a cosine/sine matrix) and training's ``torch.stft``, both float64,
    agree far below the export's tolerance, also on a quiet frequency band and zero padding (float32 would not: the
    quietest bins' decibels carry the loudest one's rounding)."""
    rng = np.random.default_rng(0)
    quiet = 1e-4 * rng.standard_normal(4000).astype(np.float32)
    x = np.concatenate([tone(440, 0.7), quiet, np.zeros(1000, np.float32)])
    waves = torch.from_numpy(np.stack([x, x[::-1].copy()]))
    for pre in (AudioPreprocessConfig(mean=-40.0, std=15.0), AudioPreprocessConfig(n_fft=512, hop_length=128,
                                                                                     n_mels=40, log=False),
                AudioPreprocessConfig(n_fft=401, hop_length=150, n_mels=32)):  # odd: torch.stft's frame count
        ours, theirs = FramedMelSpectrogram(pre)(waves), MelSpectrogram(pre)(waves)
        assert ours.dtype == theirs.dtype == torch.float32 and ours.shape == theirs.shape
        assert (ours - theirs).abs().max() <= 1e-6 * max(1.0, float(theirs.abs().max()))


def test_log_mel_is_standardised_and_clipped_at_top_db():
    pre = AudioPreprocessConfig(mean=-30.0, std=10.0)
    x = torch.from_numpy(np.concatenate([tone(440, 0.5), np.zeros(8000, np.float32)]))[None]
    db = MelSpectrogram(pre)(x) * 10.0 - 30.0  # back to decibels
    assert db.max() - db.min() <= 80.0 + 1e-3  # silence sits at top_db below the loudest bin, not at -100 dB


def test_spec_augment_masks_only_while_training():
    aug = SpecAugment(n=2, freq_fraction=0.3, time_fraction=0.3)
    x = torch.ones(4, 1, 64, 100)
    torch.manual_seed(0)
    masked = aug.train()(x)
    assert masked.shape == x.shape and (masked == 0).any() and (masked == 1).any()
    assert torch.equal(aug.eval()(x), x)


def test_augment_wave_shifts_scales_and_keeps_length():
    torch.manual_seed(0)
    x = torch.from_numpy(tone(440, 1.0))
    outs = [augment_wave(x) for _ in range(5)]
    assert all(o.shape == x.shape for o in outs)
    assert not any(torch.equal(o, x) for o in outs)
    assert all(o.abs().max() <= x.abs().max() * 10 ** (6.5 / 20) + 0.05 for o in outs)  # gain within +-6 dB


# --------------------------------------------------------------------------------------------- windows


def test_clip_length_follows_the_training_durations():
    assert choose_clip_seconds(np.array([0.4, 0.7, 0.72, 1.03, 1.1])) == 1.25  # 95th percentile 1.086, rounded up
    assert choose_clip_seconds(np.array([0.4, 0.7, 0.72, 1.0])) == 1.0
    assert choose_clip_seconds(np.array([0.1, 0.2])) == 0.5
    assert choose_clip_seconds(np.array([30.0, 60.0])) == 10.0


def test_long_recordings_become_windows_averaged_per_recording():
    pre = AudioPreprocessConfig(clip_seconds=1.0)
    clips = read_clips([tone(300, 3.0), tone(300, 0.4)], pre, array_rate=16_000)
    data = window_clips(clips, [0, 1], pre.clip_samples)
    assert data.waves.shape == (6, 16_000) and data.waves.dtype == torch.float16  # 3 s, hop 0.5 s -> 5 windows
    assert data.owner.tolist() == [0, 0, 0, 0, 0, 1]
    assert data.window_targets().tolist() == [0] * 5 + [1]
    out = torch.arange(12, dtype=torch.float32).view(6, 2)
    assert average_windows(out, data.owner, 2).tolist() == [[4.0, 5.0], [10.0, 11.0]]


def test_array_rate_is_required_and_resampled():
    with pytest.raises(DataError, match="sample rate"):
        read_clips([tone(300, 1.0)], AudioPreprocessConfig())
    clips = read_clips([tone(300, 1.0, rate=8000)], AudioPreprocessConfig(), array_rate=8000)
    assert len(clips.clip(0)) == 16_000 and clips.source_rates == {"8000 Hz x 1 ch": 1}


# --------------------------------------------------------------------------------------------- data sources


def test_audio_data_is_detected(audio_folder, colour_folder, tmp_path):
    assert detect_kind(audio_folder) == "audio"
    assert detect_kind(colour_folder) == "image"
    table = tmp_path / "clips.csv"
    rows = [f"{p},{p.parent.name}" for p in sorted((audio_folder / "train").rglob("*.wav"))]
    table.write_text("path,label\n" + "\n".join(rows) + "\n")
    assert detect_kind(table) == "audio"
    assert detect_kind(AudioSet([tone(300, 1)], ["a"], sample_rate=16_000)) == "audio"


def test_bad_audio_files_in_a_dataset(audio_folder, tiny_backbone, tmp_path):
    import soundfile as sf

    bad = audio_folder / "train" / "low" / "broken.wav"
    bad.write_bytes(b"")
    with pytest.raises(DataError, match=r"broken.wav is empty \(0 bytes\)"):
        transferkit.fit(audio_folder, backbone=tiny_backbone, strategy="linear")
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(DataError, match=r"broken.wav is not a readable audio file"):
        transferkit.fit(audio_folder, backbone=tiny_backbone, strategy="linear")
    (audio_folder / "train" / "low" / "notes.pdf").write_bytes(b"%PDF")
    with pytest.raises(DataError, match=r"notes.pdf is not an audio file"):
        transferkit.fit(audio_folder, backbone=tiny_backbone, strategy="linear")
    # silence is kept with a warning; stereo 48 kHz is mixed down and resampled
    sf.write(str(audio_folder / "train" / "mid" / "silent.wav"), np.zeros(8000, np.float32), 16_000)
    stereo = np.stack([tone(800, 0.5, 48_000)] * 2, axis=1)
    sf.write(str(audio_folder / "train" / "mid" / "stereo.wav"), stereo, 48_000)
    model = transferkit.fit(audio_folder, backbone=tiny_backbone, strategy="linear", skip_bad=True)
    info = model.metrics["data"]["audio"]
    assert model.metrics["data"]["train"] + model.metrics["data"]["val"] == 8 * 3 + 3  # broken, pdf skipped
    assert sum(v["skipped"] for v in info.values()) == 2  # the corrupt file and the silent one (skip_bad)
    assert any("48000 Hz x 2 ch" in v["sources"] for v in info.values())


# --------------------------------------------------------------------------------------------- strategies


@pytest.mark.parametrize("name", list(FAST))
def test_audio_strategy_contract(name, audio_folder, tiny_backbone, tmp_path):
    out = tmp_path / "run"
    # small data: cross-validated (2 folds keep the test quick)
    model = transferkit.fit(audio_folder, backbone=tiny_backbone, strategy=name, out=out, cv=2, **FAST[name])
    m = json.loads((out / "metrics.json").read_text())
    assert m["task"] == "audio-classification" and m["strategy"].startswith(name)
    assert m["test"]["n"] == 9 and set(m["test"]["per_class"]) == set(["low", "mid", "high"])
    assert m["backbone"]["preprocess"]["clip_seconds"] == 1.0  # longest tone 0.8 s
    pre = m["backbone"]["preprocess"]
    assert pre["mean"] < 0 and 1 < pre["std"] < 60  # standardised with the training set's decibel statistics
    assert "windows train" in (out / "report.md").read_text()
    again = transferkit.load(out / "model")
    files = sorted((audio_folder / "test").rglob("*.wav"))
    np.testing.assert_allclose(again.predict_proba(files), model.predict_proba(files), atol=1e-5)


def test_tones_are_learned_and_long_recordings_are_windowed(audio_folder, tiny_backbone, tmp_path):
    import soundfile as sf

    model = transferkit.fit(audio_folder, backbone=tiny_backbone, strategy="linear")
    assert model.metrics["test"]["accuracy"] >= 0.66
    long = tmp_path / "long.wav"
    sf.write(str(long), np.concatenate([tone(2000, 1.0)] * 4), 16_000)
    row = model.predict([long])[0]
    assert row["windows"] == 7  # 4 s in 1 s windows every 0.5 s
    assert abs(sum(t["probability"] for t in model.predict([long], top_k=3)[0]["top"]) - 1) < 1e-4


def test_lora_is_refused_for_audio(audio_folder, tiny_backbone):
    with pytest.raises(TransferkitError, match="for audio data choose"):
        transferkit.fit(audio_folder, backbone=tiny_backbone, strategy="lora")


def test_options_that_do_not_apply_to_audio(audio_folder, colour_folder, tiny_backbone):
    with pytest.raises(TransferkitError, match="max_length applies to texts"):
        transferkit.fit(audio_folder, backbone=tiny_backbone, strategy="linear", max_length=64)
    with pytest.raises(TransferkitError, match="clip_seconds applies to audio"):
        transferkit.fit(colour_folder, backbone=tiny_backbone, strategy="linear", clip_seconds=1.0)
    with pytest.raises(TransferkitError, match="out of range"):
        transferkit.fit(audio_folder, backbone=tiny_backbone, strategy="linear", clip_seconds=0.01)
    with pytest.raises(BackboneError, match="text encoder, but the data are audio"):
        transferkit.fit(audio_folder, backbone="all-MiniLM-L6-v2", strategy="linear")


# --------------------------------------------------------------------------------------------- backbones


def test_hf_audio_encoder_from_a_local_folder(audio_folder, tiny_wav2vec2, tmp_path):
    out = tmp_path / "run"
    model = transferkit.fit(audio_folder, backbone=tiny_wav2vec2, strategy="finetune", epochs=1, batch_size=8, out=out)
    assert model.metrics["backbone"]["source"] == "hf-audio-dir"
    assert (out / "model" / "encoder" / "preprocessor_config.json").is_file()
    again = transferkit.load(out / "model")  # rebuilt from the bundle alone
    files = sorted((audio_folder / "test").rglob("*.wav"))[:3]
    np.testing.assert_allclose(again.predict_proba(files), model.predict_proba(files), atol=1e-5)
    groups = model.classifier.backbone.layer_group_names()
    assert any("feature_extractor" in n for n in groups[0])  # the convolutional front end: input side for LLRD


def test_hub_audio_encoder_offline_fails_in_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(BackboneError, match=r"Could not download audio backbone 'MIT/ast-[^\n]*connect "
                                            r"to the internet"):
        create_backbone("hf:MIT/ast-finetuned-audioset-10-10-0.4593", modality="audio")


@pytest.mark.weights
def test_speaker_encoder_equals_resemblyzer():
    from resemblyzer import voice_encoder  # the test extra installs it (and setuptools<81 for its webrtcvad)
    ref = voice_encoder.VoiceEncoder("cpu", verbose=False)
    bb = create_backbone("speaker-encoder").eval()
    assert bb.num_features == 256 and bb.preprocess.sample_rate == 16_000
    rng = np.random.default_rng(0)
    for seconds in (0.7, 1.6, 4.3):  # one partial utterance, the boundary, several
        n = int(seconds * 16_000)
        wav = (np.sin(2 * np.pi * np.cumsum(rng.uniform(100, 300, n)) / 16_000) * 0.2
               + 0.01 * rng.standard_normal(n)).astype(np.float32)
        wav_slices, _ = ref.compute_partial_slices(n, rate=1.3, min_coverage=0.75)
        assert [s.start // 160 for s in wav_slices] == partial_slices(n, 160, 16_000)
        with torch.no_grad():
            ours = bb(torch.from_numpy(wav)[None])[0].numpy()
        np.testing.assert_allclose(ours, ref.embed_utterance(wav), atol=1e-4)
    # in a run, recordings are zero-padded windows in one batch: each still embeds as its own samples do
    clips = read_clips([tone(150, 0.5), tone(220, 1.2), tone(300, 2.9)], bb.preprocess, array_rate=16_000)
    data = window_clips(clips, None, 16_000 * 3)
    assert data.owner.tolist() == [0, 1, 2]
    with torch.no_grad():
        ours = bb(data.waves[:].float()).numpy()
    for row, samples in zip(ours, [clips.clip(r) for r in range(len(clips))], strict=True):
        np.testing.assert_allclose(row, ref.embed_utterance(samples), atol=1e-4)


@pytest.mark.weights
def test_speaker_encoder_fits_and_reloads(audio_folder, tmp_path):
    out = tmp_path / "run"
    model = transferkit.fit(audio_folder, backbone="speaker-encoder", strategy="finetune", epochs=1, out=out)
    assert model.metrics["details"]["layer_groups"] == 4  # three LSTM layers and the projection
    assert model.metrics["backbone"]["preprocess"]["clip_seconds"] == 1.6  # at least one whole partial utterance
    assert model.metrics["details"]["config"]["lr"] == 3e-4  # the speaker encoder's own defaults
    again = transferkit.load(out / "model")
    files = sorted((audio_folder / "test").rglob("*.wav"))
    np.testing.assert_allclose(again.predict_proba(files), model.predict_proba(files), atol=1e-5)


@pytest.mark.weights
@pytest.mark.slow
def test_spoken_digits_with_unseen_speakers(tmp_path):
    if shutil.which("espeak-ng") is None:
        # CI (.ci/run sets TRANSFERKIT_CI) must run it: `make data` installs espeak-ng there
        if os.environ.get("TRANSFERKIT_CI"):
            pytest.fail("espeak-ng is missing on CI: `make data` should have installed it")
        pytest.skip("espeak-ng is not installed (make data installs it)")
    from transferkit.datasets.spoken_digits import build_spoken_digits

    words = ["zero", "one", "two", "three"]
    root = build_spoken_digits(tmp_path / "digits", train_per_class=8, test_per_class=8, train_speakers=10,
                               test_speakers=5, words=words)
    model = transferkit.fit(root, strategy="linear")  # EfficientNet-Lite0 on log-mel spectrograms
    assert model.metrics["test"]["n"] == 32
    assert model.metrics["test"]["accuracy"] >= 0.6  # chance is 0.25; speakers never heard in training


def test_fit_routes_audio_tables_and_folders_with_stray_text_files(audio_folder, tiny_backbone, tmp_path):
    (audio_folder / "train" / "README.txt").write_text("recorded on a phone in 2024")
    model = transferkit.fit(audio_folder, backbone=tiny_backbone, strategy="linear")
    assert model.metrics["task"] == "audio-classification"
    table = tmp_path / "clips.csv"
    rows = [f"{p},{p.parent.name}" for p in sorted((audio_folder / "train").rglob("*.wav"))]
    table.write_text("audio,label\n" + "\n".join(rows) + "\n")
    model = transferkit.fit(table, backbone=tiny_backbone, strategy="linear")
    assert model.metrics["task"] == "audio-classification" and model.metrics["data"]["train"] > 0


def test_validation_scores_recordings_not_windows(audio_folder, tiny_backbone):
    # 0.25 s windows: every tone is several windows; the best epoch's validation accuracy is the recordings'
    model = transferkit.fit(audio_folder, backbone=tiny_backbone, strategy="finetune", epochs=2, batch_size=8,
                            clip_seconds=0.25, precision="no", val_fraction=0.25)
    m = model.metrics
    assert m["data"]["audio"]["val"]["windows"] > m["data"]["val"]
    best = m["history"]["epochs"][m["history"]["best_epoch"]]
    assert best["val_acc"] == pytest.approx(m["val"]["accuracy"])
    assert best["val_loss"] == pytest.approx(m["val"]["log_loss"], rel=1e-3)


def test_spec_augment_is_on_while_fine_tuning_only(audio_folder, tiny_backbone, monkeypatch):
    from transferkit.backbones.audio import SpectrogramBackbone

    calls = []
    original = SpectrogramBackbone.set_augment
    monkeypatch.setattr(SpectrogramBackbone, "set_augment", lambda self, on: (calls.append(on), original(self, on)))
    model = transferkit.fit(audio_folder, backbone=tiny_backbone, strategy="finetune", epochs=1, batch_size=8, cv=2)
    # on for each training run (2 folds, then the final model), off after each
    assert calls == [True, False] * 3 and model.classifier.backbone.masking_on is False
    calls.clear()
    transferkit.fit(audio_folder, backbone=tiny_backbone, strategy="finetune", epochs=1, batch_size=8, augment=False,
                    cv=2)
    assert calls == [False, False] * 3


def test_an_empty_split_is_named(tmp_path, tiny_backbone):
    from conftest import write_tones

    write_tones(tmp_path / "one-each", 1)
    with pytest.raises(TransferkitError, match="The val split has no recordings"):
        transferkit.fit(tmp_path / "one-each", backbone=tiny_backbone, strategy="linear", val_fraction=0.15)


def test_evaluate_arrays_at_their_own_sample_rate(audio_folder, tiny_backbone):
    from transferkit.data.audio import read_audio

    model = transferkit.fit(audio_folder, backbone=tiny_backbone, strategy="linear")
    files = sorted((audio_folder / "test").rglob("*.wav"))
    arrays = AudioSet([read_audio(f, 8000) for f in files], [f.parent.name for f in files], sample_rate=8000)
    on_files, on_arrays = model.evaluate(audio_folder), model.evaluate(arrays)
    assert on_arrays["n"] == 9 and on_arrays["accuracy"] == on_files["accuracy"]
    with pytest.raises(TransferkitError, match="not a single one"):
        model.predict(arrays.items[0])


def test_vision_transformer_gets_its_fixed_input_size():
    bb = create_backbone("timm:test_vit", pretrained=False, modality="audio").eval()
    assert bb.preprocess.image_height == bb.preprocess.image_width == 160
    with torch.no_grad():
        assert bb(torch.from_numpy(np.stack([tone(300, 1.0), tone(900, 1.0)]))).shape == (2, bb.num_features)


def test_backbone_listing_has_the_audio_encoders():
    from transferkit.backbones.registry import list_backbones

    rows = {r["name"]: r for r in list_backbones()}
    assert rows["speaker-encoder"]["modality"] == "audio"
    assert any(r["modality"] == "audio" and r["name"].startswith("hf:") for r in rows.values())


def test_evaluate_and_cli_predict_on_audio(audio_folder, tiny_backbone, tmp_path):
    from typer.testing import CliRunner

    from transferkit.cli import app

    out = tmp_path / "run"
    model = transferkit.fit(audio_folder, backbone=tiny_backbone, strategy="linear", out=out)
    scored = model.evaluate(audio_folder)  # its test/ folder
    assert scored["n"] == 9 and scored["accuracy"] == pytest.approx(model.metrics["test"]["accuracy"])
    wav = str(sorted((audio_folder / "test" / "high").glob("*.wav"))[0])
    r = CliRunner().invoke(app, ["predict", str(out / "model"), wav, "--json"])
    assert r.exit_code == 0, r.output
    row = json.loads(r.output.strip().splitlines()[-1])
    assert row["input"] == wav and row["windows"] == 1
    r = CliRunner().invoke(app, ["predict", str(out / "model"), str(tmp_path / "missing.wav")])
    assert r.exit_code == 2 and "does not exist" in r.output
