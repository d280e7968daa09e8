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
from pathlib import Path
from typing import Any

import torch

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
    """Return ``(features (N, D) float32, came_from_cache)`` for ``DecodedImages`` or ``EncodedTexts``.

    A cache entry holds its shape, dtype and a SHA-256 of its values; one that does not match them (or this data's
    row count, or the backbone's width) is recomputed with a note, never used. A cache that cannot be written (its
    root is a file, the disk is full) is skipped with a warning: the features are computed all the same.
    """
    precision = str(accelerator.mixed_precision)
    path = entry_path(feature_key(backbone, data, precision)) if cache else None
    if path is not None and path.is_file():
        feats, problem = read_entry(path, len(data.fingerprints), getattr(backbone, "num_features", None))
        if feats is not None:
            return feats, True
        from ..console import info

        info(f"feature cache: {path.name} {problem}: computing the features again")
        path.unlink(missing_ok=True)
    feats = forward_inputs(backbone, data, backbone.preprocess, device=accelerator.device,
                           autocast=accelerator.autocast, batch_size=batch_size, description=description)
    if path is not None:
        write_entry(path, feats)
    return feats, False


def entry_path(key: str) -> Path | None:
    """The cache file for ``key``, its folder created; None (with a warning) when the cache cannot be a folder."""
    from ..console import warn

    folder = cache_root() / "features"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # the root (or a folder on its way) is a file, or not writable
        warn(f"feature cache {folder} cannot be used ({err.strerror or err}): features are not cached; remove what is "
             "in the way or set TRANSFERKIT_CACHE to a folder")
        return None
    return folder / f"{key}.safetensors"


def checksum(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def read_entry(path: Path, rows: int, width: int | None) -> tuple[torch.Tensor | None, str]:
    """A cache entry's features when its file, shape, dtype and checksum all hold, else ``(None, what is wrong)``."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            feats = f.get_tensor("features").clone()  # its own memory: not a view of a file someone may change
    except Exception:  # truncated or not safetensors at all: whatever the parser raises, it is recomputed
        return None, "is damaged"
    shape = [int(n) for n in meta.get("shape", "").split(",") if n.strip().isdigit()]
    if "sha256" not in meta:
        return None, "carries no checksum"
    if feats.dtype != torch.float32 or meta.get("dtype") != "float32":
        return None, f"holds {feats.dtype} values, not float32"
    if list(feats.shape) != shape or feats.ndim != 2 or feats.shape[0] != rows or (width and feats.shape[1] != width):
        return None, f"has shape {tuple(feats.shape)}, not ({rows}, {width or 'D'})"
    if checksum(feats) != meta["sha256"]:
        return None, "does not match its checksum"
    return feats, ""


def write_entry(path: Path, feats: torch.Tensor) -> None:
    """Write a cache entry atomically with its shape, dtype and checksum; a failed write only warns."""
    from safetensors.torch import save_file

    from ..console import warn

    feats = feats.contiguous()
    meta = {"shape": ",".join(map(str, feats.shape)), "dtype": str(feats.dtype).removeprefix("torch."),
            "sha256": checksum(feats)}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file({"features": feats}, str(tmp), metadata=meta)
        os.replace(tmp, path)
    except Exception as err:  # OSError, or safetensors' own error around one: the run goes on without the entry
        tmp.unlink(missing_ok=True)
        warn(f"feature cache: could not write {path} ({err}): features are not cached")
