"""Backbone files on disk: user checkpoints (``--arch`` names the architecture) and transferkit's own
backbone folder format, each a registered weight source (``checkpoint``, ``backbone_dir``).

A backbone folder holds ``backbone.json`` (architecture, preprocessing, provenance) and
``backbone.safetensors`` (the feature network's tensors). ``transferkit pretrain`` writes them and
``--backbone path/to/folder`` reads them. Nothing here unpickles: ``.pt``/``.pth``/``.bin`` files go through
``torch.load(weights_only=True)``, which only accepts tensors and plain containers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import BackboneError
from ..io import atomic_dir
from .protocol import BackboneSpec, ImageBackbone, PreprocessConfig, register_source
from .sources import build_timm, build_torchvision

BACKBONE_FORMAT = "transferkit-backbone/1"


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors or weights-only torch file; unwraps ``{"state_dict": ...}``-style nesting."""
    if not path.is_file():
        raise BackboneError(f"Checkpoint {path} does not exist: check the path.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise BackboneError(
            f"Cannot read checkpoint {path} ({type(err).__name__}): it must be safetensors or a "
            "weights-only torch file."
        ) from None
    for key in ("state_dict", "model", "model_state_dict", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(f"Checkpoint {path} holds no state_dict of tensors: save model.state_dict().")
    return state


def save_backbone(backbone: ImageBackbone, folder: str | Path, provenance: dict[str, Any] | None = None) -> Path:
    """Write ``backbone`` as a folder that ``create_backbone(folder)`` loads; atomic (temp folder, then rename)."""
    with atomic_dir(folder) as tmp:
        write_backbone_files(backbone, tmp, provenance)
    return Path(folder)


def write_backbone_files(backbone: ImageBackbone, folder: Path, provenance: dict[str, Any] | None = None) -> None:
    """``backbone.safetensors`` and ``backbone.json`` into an existing (temporary) ``folder``."""
    from safetensors.torch import save_file

    spec = backbone.spec
    meta = {
        "format": BACKBONE_FORMAT,
        "arch": rebuild_arch(spec),
        "num_features": backbone.num_features,
        "preprocess": backbone.preprocess.to_dict(),
        "derived_from": spec.to_dict(),
        "provenance": provenance or {},
    }
    state = {k: v.detach().contiguous().cpu() for k, v in backbone.body.state_dict().items()}
    save_file(state, str(folder / "backbone.safetensors"))
    (folder / "backbone.json").write_text(json.dumps(meta, indent=2))


def rebuild_arch(spec: BackboneSpec) -> str:
    """The architecture id that :func:`build_checkpoint` understands: a timm name or ``torchvision:<name>``."""
    if spec.source == "torchvision":
        return f"torchvision:{spec.arch}"
    return spec.arch  # timm and package arches are timm names; checkpoint/backbone_dir already use this form


def read_backbone_dir_spec(folder: Path) -> BackboneSpec:
    try:
        meta = json.loads((folder / "backbone.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise BackboneError(f"Cannot read {folder / 'backbone.json'} ({err}): the backbone "
                            "folder is damaged.") from None
    if meta.get("format") != BACKBONE_FORMAT:
        raise BackboneError(f"{folder / 'backbone.json'} is not a {BACKBONE_FORMAT} file.")
    return BackboneSpec(
        name=str(folder),
        source="backbone_dir",
        arch=meta["arch"],
        weights=str(folder.resolve()),
        extra={"preprocess": meta["preprocess"], "provenance": meta.get("provenance", {})},
    )


def load_backbone_state(body: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Load a checkpoint's tensors into ``body``: every tensor of the architecture must be there, with its shape.

    Classifier tensors (anything ``body`` lacks) are dropped, and so is a wrapper prefix that every key carries
    (``module.`` from DDP, ``model.``, ``backbone.``, ``body.``).

    Args:
        body: the feature network to fill.
        state: tensors by name, e.g. from :func:`read_state_dict`.
        origin: where they came from, for the error message.

    Raises:
        BackboneError: a tensor of the architecture is missing or has another shape (``--arch`` does not match).
    """
    for prefix in ("module.", "model.", "backbone.", "body."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    own = body.state_dict()
    kept = {k: v for k, v in state.items() if k in own}
    missing = [k for k in own if k not in kept and not k.endswith("num_batches_tracked")]
    if missing:
        raise BackboneError(
            f"Checkpoint {origin} lacks {len(missing)} tensors of this architecture (first: {missing[0]}): "
            "check --arch matches the checkpoint."
        )
    for k, v in kept.items():
        if v.shape != own[k].shape:
            raise BackboneError(f"Checkpoint {origin}: {k} has shape {tuple(v.shape)}, expected "
                                f"{tuple(own[k].shape)}; check --arch.")
    body.load_state_dict(kept, strict=False)


@register_source("checkpoint")
def build_checkpoint(spec: BackboneSpec, pretrained: bool) -> ImageBackbone:
    """The timm or torchvision architecture ``spec.arch``, filled from the checkpoint file ``spec.weights``."""
    arch = spec.arch
    if arch.startswith("torchvision:"):
        bb = build_torchvision(BackboneSpec(spec.name, "torchvision", arch.split(":", 1)[1]), pretrained=False)
    else:
        bb = build_timm(BackboneSpec(spec.name, "timm", arch.removeprefix("timm:")), pretrained=False)
    bb.spec = spec
    if pretrained:
        load_backbone_state(bb.body, read_state_dict(Path(spec.weights)), spec.weights)
    return bb


@register_source("backbone_dir")
def load_backbone_dir(spec: BackboneSpec, pretrained: bool) -> ImageBackbone:
    """A transferkit backbone folder (``backbone.json`` + ``backbone.safetensors``), e.g. from ``pretrain``."""
    bb = build_checkpoint(BackboneSpec(spec.name, "checkpoint", spec.arch, spec.weights), pretrained=False)
    bb.spec = spec
    bb.preprocess = PreprocessConfig.from_dict(spec.extra["preprocess"])
    if pretrained:
        path = Path(spec.weights) / "backbone.safetensors"
        load_backbone_state(bb.body, read_state_dict(path), str(path))
    return bb
