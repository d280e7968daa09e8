"""Decode every image once per run into a uint8 tensor at the backbone's input size.

Fine-tuning then reads from memory each epoch (augmenting on the uint8 tensor), and the feature cache is
keyed by each file's content hash, so nothing is decoded or hashed twice in a run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..backbones.protocol import PreprocessConfig
from ..console import progress, warn
from ..errors import DataError
from .sources import ImageSet, Item

# the backbone's interpolation name -> PIL's resampling filter (shared by every image reader)
INTERPOLATION = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass
class DecodedImages:
    """``pixels``: (N, 3, H, W) uint8; ``targets``: (N,) class indices; ``fingerprints``: content hashes;
    ``kept``: for each decoded image, its position in the source (unreadable ones skipped leave gaps)."""

    pixels: torch.Tensor
    targets: torch.Tensor
    fingerprints: list[str]
    skipped: list[str]
    kept: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, idx: Any) -> DecodedImages:
        """The examples at positions ``idx`` (a cross-validation fold), sharing no pixels with later changes."""
        idx = [int(i) for i in idx]
        return dataclasses.replace(self, pixels=self.pixels[idx], targets=self.targets[idx],
                                   fingerprints=[self.fingerprints[i] for i in idx], skipped=[],
                                   kept=[self.kept[i] for i in idx] if self.kept else [])


def load_pil(item: Item, window: str = "auto", slices: str = "2d") -> tuple[Image.Image, str]:
    """Open a path or array as an RGB PIL image and return it with a content fingerprint.

    DICOM and NIfTI files, and 16-bit or float PNG/TIFF, become 8-bit through ``window``; volumes give the
    slice(s) ``slices`` says (see :mod:`transferkit.data.medical`). Greyscale is repeated into R, G and B.
    Raises :class:`DataError` naming the file when it is not a readable image.
    """
    if isinstance(item, np.ndarray):
        arr = np.ascontiguousarray(item)
        if arr.dtype != np.uint8:
            arr = _to_uint8(arr, window)
        img = Image.fromarray(arr)
        return img.convert("RGB"), hashlib.sha1(arr.tobytes() + str(arr.shape).encode()).hexdigest()
    path = Path(item)
    from .medical import is_medical, read_high_bit_depth, read_medical

    if is_medical(path):
        arr = read_medical(path, window, slices)
        fingerprint = _file_hash(path)
        return Image.fromarray(arr).convert("RGB"), fingerprint
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"Cannot read {path} ({err.strerror}): check the file exists and is readable.") from None
    try:
        img = Image.open(io.BytesIO(data))
        img.load()  # forces a full decode so truncated files fail here, not in the middle of training
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        kind = ("truncated or damaged" if isinstance(err, OSError) and "truncat" in str(err).lower()
                else "not a readable image")
        raise DataError(f"{path} is {kind}: replace or remove it, or pass --skip-bad to skip "
                        "unreadable files.") from None
    deep = read_high_bit_depth(img, window)  # 16-bit X-ray PNGs would saturate in a plain RGB conversion
    if deep is not None:
        img = Image.fromarray(deep)
    return img.convert("RGB"), hashlib.sha1(data).hexdigest()


def _to_uint8(arr: np.ndarray, window: str) -> np.ndarray:
    """A non-uint8 array -> uint8: greyscale through ``window`` (like 16-bit files); colour floats in [0, 1] scaled
    by 255, 16-bit colour by 1/257; anything else refused."""
    if arr.ndim == 2:
        from .medical import apply_window

        return apply_window(arr, window)
    if np.issubdtype(arr.dtype, np.floating) and np.nanmin(arr) >= 0 and np.nanmax(arr) <= 1:
        return np.round(np.nan_to_num(arr) * 255).astype(np.uint8)
    if arr.dtype == np.uint16:
        return (arr // 257).astype(np.uint8)
    raise DataError(f"A {arr.dtype} colour array cannot be shown as an image: give uint8 pixels (0-255), floats in "
                    "[0, 1] or uint16.")


def _file_hash(path: Path) -> str:
    try:
        return hashlib.sha1(path.read_bytes()).hexdigest()
    except OSError as err:
        raise DataError(f"Cannot read {path} ({err.strerror}): check the file exists and is readable.") from None


def resize_center_crop(img: Image.Image, pre: PreprocessConfig) -> np.ndarray:
    """The backbone's eval transform: shorter side to ``size / crop_pct``, centre crop to ``size``. With
    ``pre.resize == "pad"``: the whole image, padded with black to a square, resized to ``size``."""
    h, w = pre.input_size
    if getattr(pre, "resize", "crop") == "pad":
        iw, ih = img.size
        side = max(iw, ih)
        square = Image.new(img.mode, (side, side))
        square.paste(img, ((side - iw) // 2, (side - ih) // 2))
        square = square.resize((w, h), INTERPOLATION.get(pre.interpolation, Image.Resampling.BICUBIC))
        return np.array(square, dtype=np.uint8)
    scale_to = int(round(max(h, w) / pre.crop_pct))
    iw, ih = img.size
    ratio = scale_to / min(iw, ih)
    nw, nh = max(w, round(iw * ratio)), max(h, round(ih * ratio))
    img = img.resize((nw, nh), INTERPOLATION.get(pre.interpolation, Image.Resampling.BICUBIC))
    left, top = (nw - w) // 2, (nh - h) // 2
    return np.array(img.crop((left, top, left + w, top + h)), dtype=np.uint8)


def decode(
    images: ImageSet,
    pre: PreprocessConfig,
    classes: list[str],
    *,
    skip_bad: bool = False,
    description: str = "decoding images",
    workers: int = 2,
) -> DecodedImages:
    """Decode, resize and crop every image of ``images`` once, in a thread pool, with a progress bar."""
    n = len(images)
    h, w = pre.input_size
    pixels = torch.empty((n, 3, h, w), dtype=torch.uint8)
    keep = np.zeros(n, dtype=bool)
    prints = [""] * n
    skipped: list[str] = []
    index = {c: i for i, c in enumerate(classes)}

    def work(i: int) -> tuple[int, np.ndarray | None, str, DataError | None]:
        try:
            img, fp = load_pil(images.items[i], pre.window, pre.slices)
        except DataError as err:
            return i, None, "", err
        return i, resize_center_crop(img, pre), fp, None

    with progress() as bar, ThreadPoolExecutor(max_workers=workers) as pool:
        task = bar.add_task(description, total=n, status="")
        for i, arr, fp, err in pool.map(work, range(n)):
            bar.advance(task)
            if err is not None:
                if not skip_bad:
                    raise err
                skipped.append(str(images.items[i]))
                continue
            pixels[i] = torch.from_numpy(arr).permute(2, 0, 1)
            prints[i] = fp
            keep[i] = True
    if skipped:
        warn(f"skipped {len(skipped)} unreadable image(s), e.g. {skipped[0]}")
    idx = np.flatnonzero(keep)
    if len(idx) == 0:
        raise DataError(f"No readable images in {images.origin or 'the data'}: check the files are images.")
    targets = torch.tensor([index[images.labels[i]] for i in idx], dtype=torch.long)
    return DecodedImages(pixels[torch.from_numpy(idx)], targets, [prints[i] for i in idx], skipped, idx.tolist())


def normalize(pixels: torch.Tensor, pre: PreprocessConfig) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float, scaled to [0, 1] and normalised with the backbone's mean/std."""
    mean = torch.tensor(pre.mean, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, device=pixels.device).view(1, 3, 1, 1)
    return (pixels.float() / 255.0 - mean) / std


def image_prepare(pre: PreprocessConfig):
    """A function: batch of uint8 images -> normalised float in channels_last (faster convolutions on CPU and GPU)."""

    def prepare(pixels: torch.Tensor) -> torch.Tensor:
        return normalize(pixels, pre).contiguous(memory_format=torch.channels_last)

    return prepare
