"""Decode every image once per run into a uint8 tensor at the backbone's input size.

Fine-tuning then reads from memory each epoch (augmenting on the uint8 tensor), and the feature cache is
keyed by each file's content hash, so nothing is decoded or hashed twice in a run.

Every image a user gives is read through :func:`load_pil`: its size is checked from the header before any pixel
is decoded (:data:`MAX_IMAGE_PIXELS`, :data:`MAX_ASPECT_RATIO`), and its EXIF orientation is applied, so training,
``predict`` and ``evaluate`` see the same upright pixels.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..backbones.protocol import PreprocessConfig
from ..console import progress, warn
from ..errors import DataError, check_number
from .sources import ImageSet, Item

# the backbone's interpolation name -> PIL's resampling filter (shared by every image reader)
INTERPOLATION = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


# An image may hold this many pixels before it is decoded: 80 MP (10000x8000; phone photos are 12-50 MP) costs
# 240 MB as RGB. A 30000x30000 PNG of a few hundred kilobytes would need 2.7 GB. Raised with --max-image-pixels
# (``image_limits``); PIL's own guard warns from 89 MP and refuses from 179 MP.
MAX_IMAGE_PIXELS = 80_000_000
# Longer side over shorter side. A classifier's square input keeps 1/50 of a 50:1 image; a 116-byte 12000x1 PNG,
# its short side scaled up to the input size, cost 4.2 GB. Nothing a camera or scanner makes is this elongated.
MAX_ASPECT_RATIO = 50
# Bumped whenever the same file decodes to other pixels (2: EXIF orientation applied, padding after the resize):
# it is part of each image's fingerprint, so feature caches of older decodes are not reused.
DECODING = b"2"

_limits = {"pixels": MAX_IMAGE_PIXELS}
_pil_guard = threading.Lock()  # PIL's global bomb limit is lifted for header reads only, one at a time


def max_image_pixels() -> int:
    """The pixel limit in force (:data:`MAX_IMAGE_PIXELS` unless raised by :func:`image_limits`)."""
    return _limits["pixels"]


def set_max_image_pixels(pixels: int | None) -> int:
    """Set the pixel limit for every image read from now on (``None``: the default); returns the previous one.
    Raises :class:`TransferkitError` for a limit that is not a positive whole number."""
    if pixels is None:
        pixels = MAX_IMAGE_PIXELS
    check_number("max_image_pixels", pixels, low=1, whole=True, example=f"{MAX_IMAGE_PIXELS} (the default)")
    previous, _limits["pixels"] = _limits["pixels"], int(pixels)
    return previous


@contextmanager
def image_limits(max_pixels: int | None = None) -> Iterator[None]:
    """Read images of up to ``max_pixels`` pixels inside the block (``None``: the limit stays as it is).

    Example::

        >>> with image_limits(max_pixels=200_000_000):
        ...     model.predict(["scan.tif"])
    """
    previous = set_max_image_pixels(max_pixels) if max_pixels is not None else max_image_pixels()
    try:
        yield
    finally:
        _limits["pixels"] = previous


def check_image_size(name: object, width: int, height: int, max_pixels: int | None = None) -> None:
    """Refuse an image too large or too elongated to decode and resize safely, before its pixels are read:
    one line naming it, its size, the limit and how to raise it."""
    limit = max_image_pixels() if max_pixels is None else max_pixels
    if width < 1 or height < 1:
        raise DataError(f"{name} has no pixels ({width}x{height}): replace or remove it, or pass --skip-bad to skip "
                        "unreadable files.")
    if width * height > limit:
        raise DataError(f"{name} is {width}x{height} pixels ({width * height / 1e6:.1f} MP), over the limit of "
                        f"{limit / 1e6:g} MP: shrink it, pass --max-image-pixels {width * height} if you trust it, or "
                        "--skip-bad to skip such files.")
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        raise DataError(f"{name} is {width}x{height} pixels, {ratio:.0f}:1, more elongated than the limit of "
                        f"{MAX_ASPECT_RATIO}:1: cut it into pieces or remove it, or pass --skip-bad to skip such "
                        "files.")


def check_volume_size(name: object, width: int, height: int, frames: int) -> None:
    """:func:`check_image_size` for each of ``frames`` slices, and the pixels of all of them (every frame of a DICOM
    series or NIfTI volume is decoded at once) against the same limit."""
    check_image_size(name, width, height)
    total, limit = width * height * frames, max_image_pixels()
    if frames > 1 and total > limit:
        raise DataError(f"{name} holds {frames} frames of {width}x{height} pixels ({total / 1e6:.1f} MP in all), over "
                        f"the limit of {limit / 1e6:g} MP: pass --max-image-pixels {total} if you trust it, or "
                        "--skip-bad to skip such files.")


def open_image(source: bytes | Path, name: object) -> Image.Image:
    """An image (its encoded bytes, or a file) opened without decoding its pixels, after
    :func:`check_image_size`. PIL's own guard would answer a bomb with an exception naming no file (and refuse
    what ``--max-image-pixels`` allows), so it is lifted while the header is read; the check here replaces it.
    Raises PIL's errors for a file that is not an image."""
    with _pil_guard:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    try:
        check_image_size(name, *img.size)
    except DataError:
        img.close()
        raise
    return img


ORIENTATION = 0x0112  # the EXIF tag: 1 upright, 3 upside down, 6 and 8 turned by 90 degrees, 2/4/5/7 mirrored


def orientation(img: Image.Image) -> int:
    """The image's EXIF orientation; 1 (upright, as stored) when it has none or its EXIF block is garbage (PIL
    raises SyntaxError or worse for one): the pixels are still a readable picture, shown as stored."""
    try:
        value = img.getexif().get(ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - any parser error in a block of metadata leaves the pixels as stored
        return 1
    return value if value in range(1, 9) else 1


def oriented_size(img: Image.Image) -> tuple[int, int]:
    """Width and height as the image is shown: swapped when its EXIF orientation turns it by 90 degrees."""
    w, h = img.size
    return (h, w) if orientation(img) in (5, 6, 7, 8) else (w, h)


def upright(img: Image.Image) -> Image.Image:
    """``img`` turned as its EXIF orientation says (a phone photo taken upright is stored sideways)."""
    if orientation(img) != 1:
        return ImageOps.exif_transpose(img)
    return img


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
    """Open a path or array as an upright RGB PIL image and return it with a content fingerprint.

    DICOM and NIfTI files, and 16-bit or float PNG/TIFF, become 8-bit through ``window``; volumes give the
    slice(s) ``slices`` says (see :mod:`transferkit.data.medical`). Greyscale is repeated into R, G and B. The EXIF
    orientation is applied. Raises :class:`DataError` naming the file when it is not a readable image, or when it
    is larger than :func:`max_image_pixels` or more elongated than :data:`MAX_ASPECT_RATIO` (checked from the
    header, before decoding).
    """
    if isinstance(item, np.ndarray):
        arr = np.ascontiguousarray(item)
        if arr.ndim >= 2:
            check_image_size(f"An array of shape {arr.shape}", arr.shape[1], arr.shape[0])
        if arr.dtype != np.uint8:
            arr = _to_uint8(arr, window)
        img = Image.fromarray(arr)
        return img.convert("RGB"), hashlib.sha1(arr.tobytes() + str(arr.shape).encode()).hexdigest()
    path = Path(item)
    from .medical import is_medical, read_high_bit_depth, read_medical

    if is_medical(path):
        arr = read_medical(path, window, slices, lambda w, h, n: check_volume_size(path, w, h, n))
        check_image_size(path, arr.shape[1], arr.shape[0])
        fingerprint = _file_hash(path)
        return Image.fromarray(arr).convert("RGB"), fingerprint
    try:
        data = path.read_bytes()
    except OSError as err:
        if path.is_dir():
            raise DataError(f"{path} is a folder, not an image: pass image files (e.g. {path}/*.png), or --skip-bad "
                            "to skip it.") from None
        raise DataError(f"Cannot read {path} ({err.strerror}): check the file exists and is readable.") from None
    try:
        img = open_image(data, path)
        img.load()  # forces a full decode so truncated files fail here, not in the middle of training
        img = upright(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        if isinstance(err, DataError):
            raise
        kind = ("truncated or damaged" if isinstance(err, OSError) and "truncat" in str(err).lower()
                else "over PIL's size limit for one frame" if isinstance(err, Image.DecompressionBombError)
                else "not a readable image")
        raise DataError(f"{path} is {kind}: replace or remove it, or pass --skip-bad to skip "
                        "unreadable files.") from None
    deep = read_high_bit_depth(img, window)  # 16-bit X-ray PNGs would saturate in a plain RGB conversion
    if deep is not None:
        img = Image.fromarray(deep)
    return img.convert("RGB"), hashlib.sha1(DECODING + data).hexdigest()


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
        return hashlib.sha1(DECODING + path.read_bytes()).hexdigest()
    except OSError as err:
        raise DataError(f"Cannot read {path} ({err.strerror}): check the file exists and is readable.") from None


def resize_center_crop(img: Image.Image, pre: PreprocessConfig) -> np.ndarray:
    """The backbone's eval transform: shorter side to ``size / crop_pct``, centre crop to ``size``. With
    ``pre.resize == "pad"``: the whole image, padded with black to a square, resized to ``size``.

    Only the pixels kept are resampled (the crop's box in the source, or the image before its padding), so memory
    stays at the input size whatever the image's shape."""
    h, w = pre.input_size
    resample = INTERPOLATION.get(pre.interpolation, Image.Resampling.BICUBIC)
    iw, ih = img.size
    if getattr(pre, "resize", "crop") == "pad":
        side = max(iw, ih)
        nw, nh = max(1, round(iw * w / side)), max(1, round(ih * h / side))
        square = Image.new(img.mode, (w, h))
        square.paste(img.resize((nw, nh), resample), ((w - nw) // 2, (h - nh) // 2))
        return np.array(square, dtype=np.uint8)
    scale_to = int(round(max(h, w) / pre.crop_pct))
    ratio = scale_to / min(iw, ih)
    nw, nh = max(w, round(iw * ratio)), max(h, round(ih * ratio))
    left, top = (nw - w) // 2, (nh - h) // 2
    sx, sy = iw / nw, ih / nh  # the crop of the resized image, in source pixels: the same samples, none else
    box = (left * sx, top * sy, (left + w) * sx, (top + h) * sy)
    return np.array(img.resize((w, h), resample, box=box), dtype=np.uint8)


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


def pixel_keys(data: DecodedImages) -> list[str | None]:
    """A key per decoded image from its pixels at the input size: the same picture saved twice (another name,
    another DICOM UID, another PNG encoder) gives the same key. None for an image of one colour (a blank slice, an
    empty frame): blank slices of different patients are alike without being copies of each other."""
    keys: list[str | None] = []
    for i in range(len(data)):
        px = data.pixels[i]
        keys.append(None if bool((px == px.flatten()[0]).all()) else hashlib.sha1(px.numpy().tobytes()).hexdigest())
    return keys


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
