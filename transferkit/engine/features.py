"""Pooled features of a frozen backbone, computed once and cached on disk.

The cache key covers the backbone's weights, its preprocessing (image size and normalisation, max length and
pooling, or sample rate, window and spectrogram settings; a Hugging Face feature extractor's settings), the
precision and every input's content hash, so a changed file, backbone or setting never
reuses stale features.
"""

from __future__ import annotations

import hashlib
import json
import os

import torch

from typing import Any

from ..cache import cache_root
from .inference import forward_inputs


def weights_fingerprint(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def feature_key(backbone: torch.nn.Module, data: Any, precision: str) -> str:
    h = hashlib.sha256()
    h.update(weights_fingerprint(backbone).encode())
    h.update(json.dumps(backbone.preprocess.to_dict(), sort_keys=True).encode())
    extractor = getattr(backbone, "extractor", None)  # a Hugging Face audio encoder's own feature settings
    if extractor is not None:
        h.update(json.dumps(extractor.to_dict(), sort_keys=True, default=str).encode())
    h.update(precision.encode())
    h.update("\n".join(data.fingerprints).encode())
    return h.hexdigest()[:32]


@torch.no_grad()
def extract_features(
    backbone: torch.nn.Module,
    data: Any,
    accelerator,
    *,
    batch_size: int = 64,
    cache: bool = True,
    description: str = "extracting features",
) -> tuple[torch.Tensor, bool]:
    """Return ``(features (N, D) float32, came_from_cache)`` for ``DecodedImages`` or ``EncodedTexts``."""
    from safetensors.torch import load_file, save_file

    precision = str(accelerator.mixed_precision)
    path = cache_root() / "features" / f"{feature_key(backbone, data, precision)}.safetensors" if cache else None
    if path is not None and path.is_file():
        try:
            return load_file(str(path))["features"], True
        except Exception:  # a damaged cache entry is recomputed, never trusted
            path.unlink(missing_ok=True)
    feats = forward_inputs(backbone, data, backbone.preprocess, device=accelerator.device,
                           autocast=accelerator.autocast, batch_size=batch_size, description=description)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({"features": feats.contiguous()}, str(tmp))
        os.replace(tmp, path)
    return feats, False
