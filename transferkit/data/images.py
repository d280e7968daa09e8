"""Decode every image once into uint8 rows at the backbone's input size, kept in the pixel cache on disk.

:func:`decode` writes each split's rows to ``cache_root()/"pixels"`` (keyed by the files' content and the
preprocessing), so a later run on the same data decodes nothing; small splits are then held in memory as one
tensor, large ones read from the file batch by batch (:mod:`transferkit.data.pixelstore`), so memory is bounded by
the batch, not the data set. Fine-tuning augments the uint8 rows each epoch, and the feature cache is keyed by
each file's content hash, so nothing is decoded twice.

Every image a user gives is read through :func:`load_pil`: its size is checked from the header before any pixel
is decoded (:data:`MAX_IMAGE_PIXELS`, :data:`MAX_ASPECT_RATIO`), and its EXIF orientation is applied, so training,
``predict`` and ``evaluate`` see the same upright pixels.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
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
from ..console import info, progress, warn
from ..errors import DataError, TransferkitError, check_number
from .parallel import in_order
from .pixelstore import MEMORY_LIMIT_BYTES
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

    Examples:

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
    """``pixels``: (N, 3, H, W) uint8, a tensor in memory or a :class:`~transferkit.data.pixelstore.PixelFile`
    (rows read from the pixel cache on demand; indexing either gives a tensor); ``targets``: (N,) class indices
    (multi-label: (N, K) 0/1); ``fingerprints``: content hashes; ``kept``: for each decoded image, its position in
    the source (unreadable ones skipped leave gaps)."""

    pixels: Any
    targets: torch.Tensor
    fingerprints: list[str]
    skipped: list[str]
    kept: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, idx: Any) -> DecodedImages:
        """The examples at positions ``idx`` (a cross-validation fold): a copy of in-memory pixels, a view (another
        index map, nothing read) of a file store."""
        from .pixelstore import take

        idx = [int(i) for i in idx]
        return dataclasses.replace(self, pixels=take(self.pixels, idx), targets=self.targets[idx],
                                   fingerprints=[self.fingerprints[i] for i in idx], skipped=[],
                                   kept=[self.kept[i] for i in idx] if self.kept else [])


class ViewedPixels:
    """uint8 pixels seen through a test-time view, applied to the rows read (nothing is copied up front): "hflip"
    mirrors left and right; "zoom" takes the centre 90% and resizes it back (the crops training draws, scaled down
    to one). Indexing gives a (N, 3, H, W) uint8 tensor, as the pixels it wraps do."""

    VIEWS = ("hflip", "zoom", "zoom+hflip")

    def __init__(self, pixels: Any, view: str):
        if view not in self.VIEWS:
            raise ValueError(f"view {view!r} is not one of {', '.join(self.VIEWS)}")
        self.pixels, self.view = pixels, view

    def __len__(self) -> int:
        return len(self.pixels)

    @property
    def shape(self) -> torch.Size:
        return self.pixels.shape

    def __getitem__(self, idx: Any) -> torch.Tensor:
        x = self.pixels[idx]
        if "zoom" in self.view:
            one = x.dim() == 3
            h, w = x.shape[-2:]
            dh, dw = round(h * 0.05), round(w * 0.05)
            crop = x[..., dh:h - dh, dw:w - dw].float()
            x = torch.nn.functional.interpolate(crop.unsqueeze(0) if one else crop, size=(h, w), mode="bilinear",
                                                antialias=True, align_corners=False).round().clamp(0, 255)
            x = (x[0] if one else x).to(torch.uint8)
        if "hflip" in self.view:
            x = x.flip(-1)
        return x


def test_time_views(data: DecodedImages) -> list[DecodedImages]:
    """The decoded images seen through :class:`ViewedPixels`' views (test-time augmentation; the identity is not
    among them)."""
    return [dataclasses.replace(data, pixels=ViewedPixels(data.pixels, v)) for v in ViewedPixels.VIEWS]


def read_image_bytes(path: Path) -> bytes:
    """A file's bytes; :class:`DataError` naming it (a folder, a missing or unreadable file) when unreadable."""
    try:
        return path.read_bytes()
    except OSError as err:
        if path.is_dir():
            raise DataError(f"{path} is a folder, not an image: pass image files (e.g. {path}/*.png), or --skip-bad "
                            "to skip it.") from None
        raise DataError(f"Cannot read {path} ({err.strerror}): check the file exists and is readable.") from None


def content_hash(data: bytes) -> str:
    """An image file's fingerprint: its bytes and :data:`DECODING` (so a new decoding invalidates every cache)."""
    return hashlib.sha1(DECODING + data).hexdigest()


def _as_uint8(item: np.ndarray, window: str) -> np.ndarray:
    arr = np.ascontiguousarray(item)
    if arr.ndim >= 2:
        check_image_size(f"An array of shape {arr.shape}", arr.shape[1], arr.shape[0])
    return arr if arr.dtype == np.uint8 else _to_uint8(arr, window)


def _array_hash(arr: np.ndarray) -> str:
    return hashlib.sha1(arr.tobytes() + str(arr.shape).encode()).hexdigest()


def fingerprint(item: Item, window: str = "auto") -> str:
    """The content fingerprint :func:`load_pil` returns for ``item``, without decoding it: a hash of a file's bytes
    (DICOM and NIfTI included), or of an array's 8-bit pixels. Raises :class:`DataError` when it cannot be read."""
    if isinstance(item, np.ndarray):
        return _array_hash(_as_uint8(item, window))
    return content_hash(read_image_bytes(Path(item)))


def load_pil(item: Item, window: str = "auto", slices: str = "2d") -> tuple[Image.Image, str]:
    """Open a path or array as an upright RGB PIL image and return it with a content fingerprint
    (:func:`fingerprint`).

    DICOM and NIfTI files, and 16-bit or float PNG/TIFF, become 8-bit through ``window``; volumes give the
    slice(s) ``slices`` says (see :mod:`transferkit.data.medical`). Greyscale is repeated into R, G and B. The EXIF
    orientation is applied. Raises :class:`DataError` naming the file when it is not a readable image, or when it
    is larger than :func:`max_image_pixels` or more elongated than :data:`MAX_ASPECT_RATIO` (checked from the
    header, before decoding).
    """
    if isinstance(item, np.ndarray):
        arr = _as_uint8(item, window)
        return Image.fromarray(arr).convert("RGB"), _array_hash(arr)
    path = Path(item)
    from .medical import is_medical, read_high_bit_depth, read_medical

    if is_medical(path):
        arr = read_medical(path, window, slices, lambda w, h, n: check_volume_size(path, w, h, n))
        check_image_size(path, arr.shape[1], arr.shape[0])
        return Image.fromarray(arr).convert("RGB"), fingerprint(path)
    data = read_image_bytes(path)
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
    return img.convert("RGB"), content_hash(data)


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


STORES = ("auto", "memory", "disk")
HASH_PROGRESS_FROM = 5000  # files: hashing fewer takes about a second, not worth a progress bar


def fingerprints(items: list[Item], window: str, *, workers: int = 4, description: str = "") -> list[str | None]:
    """:func:`fingerprint` of every item (reading and hashing bytes only), in a thread pool; None for one that cannot
    be read (:func:`decode` reports it, or skips it with ``skip_bad``)."""

    def work(item: Item) -> str | None:
        try:
            return fingerprint(item, window)
        except DataError:
            return None

    with progress(disable=len(items) < HASH_PROGRESS_FROM) as bar, ThreadPoolExecutor(max_workers=workers) as pool:
        task = bar.add_task(f"hashing {description or 'files'}", total=len(items), status="")
        out = []
        for fp in in_order(pool, work, items):
            out.append(fp)
            bar.advance(task)
    return out


def pixel_key(pre: PreprocessConfig, items: list[Item], prints: list[str | None]) -> str:
    """The cache key of a decoded split: :data:`DECODING`, every preprocessing field that changes pixels (mean and
    std only normalise later), the pixel limit (it decides which files are skipped) and each image's fingerprint in
    order (an unreadable one by its name)."""
    settings = {k: v for k, v in pre.to_dict().items() if k not in ("mean", "std")}
    settings["max_image_pixels"] = max_image_pixels()
    h = hashlib.sha256(DECODING + json.dumps(settings, sort_keys=True, default=str).encode())
    for item, fp in zip(items, prints, strict=True):
        h.update(((fp or f"unreadable {'array' if isinstance(item, np.ndarray) else item}") + "\n").encode())
    return h.hexdigest()[:32]


def decode(
    images: ImageSet,
    pre: PreprocessConfig,
    classes: list[str],
    *,
    skip_bad: bool = False,
    description: str = "decoding images",
    workers: int = 2,
    store: str = "auto",
    cache: bool = True,
) -> DecodedImages:
    """Decode, resize and crop every image of ``images`` once, in a thread pool, with a progress bar; or, when the
    pixel cache holds these files at this preprocessing, decode nothing.

    Every file is hashed first (bytes only); the decoded rows are written to ``cache_root()/"pixels"`` (see
    :mod:`transferkit.data.pixelstore`: N x 3 x H x W bytes, 150 KB an image at 224 px, 37.6 KB at 112 px) so that a
    later run, ``compare`` or ``rank`` on the same data reads them back.

    Args:
        store: ``"memory"``: ``pixels`` is one tensor; ``"disk"``: a
            :class:`~transferkit.data.pixelstore.PixelFile` reading rows from the cache batch by batch, so memory
            is bounded by the batch; ``"auto"``: memory under :data:`MEMORY_LIMIT_BYTES` decoded, disk above.
            When the cache cannot be used (a warning says why) the rows stay in memory.
        cache: False: neither read nor write the pixel cache (``predict``: files seen once need no entry, and the
            cache would grow with every prediction); the rows stay in memory.

    Raises:
        DataError: a file that is not a readable image (unless ``skip_bad``), or none readable at all.
    """
    if store not in STORES:
        raise TransferkitError(f"store must be one of {', '.join(STORES)}, not {store!r}.")
    from .pixelstore import RowWriter, open_rows, read_header, store_folder

    n = len(images)
    h, w = pre.input_size
    row_shape = (3, h, w)
    in_memory = store == "memory" or (store == "auto" and n * 3 * h * w < MEMORY_LIMIT_BYTES)
    if cache:
        prints: list[str | None] = fingerprints(images.items, pre.window, workers=max(workers, 4),
                                                description=description)
        key = pixel_key(pre, images.items, prints)
        folder = store_folder("pixels")
    else:  # the fingerprints come with the decoding
        prints, key, folder = [None] * n, "", None
    path = folder / f"{key}.rows" if folder is not None else None
    if path is not None and path.is_file():
        header, problem = read_header(path)
        if header is not None and (header.get("key") != key or header.get("fingerprints") != prints
                                   or header["rows"] != n or tuple(header["row_shape"]) != row_shape):
            header, problem = None, "was written for other data"
        if header is None:
            info(f"pixel cache: {path.name} {problem}: decoding again")
            path.unlink(missing_ok=True)
        elif not header["skipped"] or skip_bad:  # else decode: the unreadable file raises its own error
            kept = header["kept"]
            rows = open_rows(path, header, kept)
            return _decoded(images, classes, rows.tensor() if in_memory else rows, kept, header["skipped"], prints)

    writer = None
    if path is not None:
        try:
            if shutil.disk_usage(folder).free < n * 3 * h * w * 1.05 + 2**26:
                raise OSError(28, f"{n * 3 * h * w / 1e9:.1f} GB needed, less free")
            writer = RowWriter(folder, key, n, row_shape, torch.uint8)
        except OSError as err:
            warn(f"pixel cache: cannot write in {folder} ({err.strerror or err}): the decoded images stay in memory")
    pixels = torch.empty((n, *row_shape), dtype=torch.uint8) if in_memory or writer is None else None
    keep = np.zeros(n, dtype=bool)
    skipped: list[int] = []

    def work(i: int) -> tuple[int, np.ndarray | None, DataError | None]:
        try:
            img, prints[i] = load_pil(images.items[i], pre.window, pre.slices)
        except DataError as err:
            return i, None, err
        return i, resize_center_crop(img, pre), None

    try:
        with progress() as bar, ThreadPoolExecutor(max_workers=workers) as pool:
            task = bar.add_task(description, total=n, status="")
            for i, arr, err in in_order(pool, work, range(n)):
                bar.advance(task)
                if err is not None:
                    if not skip_bad:
                        raise err
                    skipped.append(i)
                    continue
                row = torch.from_numpy(arr).permute(2, 0, 1)
                keep[i] = True
                if pixels is not None:
                    pixels[i] = row
                if writer is not None:
                    try:
                        writer.write(i, row)
                    except OSError as err:  # the disk filled up meanwhile: what was written comes back to memory
                        warn(f"pixel cache: cannot write in {folder} ({err.strerror or err}): the decoded images "
                             "stay in memory")
                        if pixels is None:
                            pixels = writer.read_back(range(n))
                        writer.abort()
                        writer = None
        kept = np.flatnonzero(keep).tolist()
        if not kept:
            raise DataError(f"No readable images in {images.origin or 'the data'}: check the files are images.")
        if writer is not None:
            try:
                path = writer.commit(kept, skipped, {"key": key, "fingerprints": prints,
                                                     "skipped_names": [str(images.items[i]) for i in skipped]})
            except OSError as err:
                warn(f"pixel cache: could not write {path} ({err.strerror or err}): the images are not cached")
                if pixels is None:
                    pixels = writer.read_back(range(n))
                writer.abort()
                writer = None
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if pixels is None:
        rows: torch.Tensor | Any = open_rows(path, {"row_shape": row_shape, "dtype": "uint8"}, kept)
    else:
        rows = pixels[torch.tensor(kept)]
    return _decoded(images, classes, rows, kept, skipped, prints)


def _decoded(images: ImageSet, classes: list[str], rows: Any, kept: list[int], skipped: list[int],
             prints: list[str | None]) -> DecodedImages:
    """The result of :func:`decode` for the rows ``kept`` (skipped files reported by their names in ``images``)."""
    names = [str(images.items[i]) for i in skipped]
    if names:
        warn(f"skipped {len(names)} unreadable image(s), e.g. {names[0]}")
    from .labels import label_targets

    targets = label_targets([images.labels[i] for i in kept], classes, images.multi_label)
    return DecodedImages(rows, targets, [str(prints[i]) for i in kept], names, list(kept))


def pixel_keys(data: DecodedImages) -> list[str | None]:
    """A key per decoded image from its pixels at the input size: the same picture saved twice (another name,
    another DICOM UID, another PNG encoder) gives the same key. None for an image of one colour (a blank slice, an
    empty frame): blank slices of different patients are alike without being copies of each other."""
    from .pixelstore import chunks

    keys: list[str | None] = []
    for block in chunks(data.pixels):  # a batch at a time: the pixels may be a file larger than memory
        for px in block:
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
