"""Medical images to 8-bit pixels: DICOM (pydicom), NIfTI (nibabel) and 16-bit PNG/TIFF.

Stored values first become physical values (DICOM: the modality LUT, i.e. ``RescaleSlope`` and
``RescaleIntercept``, so CT is in Hounsfield units; NIfTI: ``scl_slope``/``scl_inter``). A window
``[centre - width/2, centre + width/2]`` then maps them linearly onto 0-255, clipping outside it:

- ``auto`` (default): the file's own window (DICOM ``WindowCenter``/``WindowWidth``, NIfTI ``cal_min``/``cal_max``)
  when it has one, else the 0.5th-99.5th percentile of the image's values (one outlier pixel cannot darken it);
- a preset in Hounsfield units for CT (:data:`WINDOWS`: ``lung``, ``mediastinum``, ``bone``, ``brain``, ...);
- ``"C,W"``: your own centre and width, e.g. ``"-600,1500"``; ``full``: the image's minimum to maximum.

``MONOCHROME1`` images (bright = low value, common in CR/DX radiographs) are inverted after windowing, so bone
is always bright. Colour DICOM (ultrasound RGB, YBR, palette colour) is returned as RGB and never windowed.

Volumes (NIfTI, multi-frame DICOM) give one 2-D image per file: ``slices="2d"`` takes the middle slice,
``"2.5d"`` stacks the middle slice and its two neighbours as the three channels a pretrained stem expects.
NIfTI volumes are first reoriented to RAS, so the slice axis is axial for the usual scans.

Greyscale reaches the 3-channel pretrained stem by **channel repeat**: the same 8-bit image in R, G and B. For a
backbone normalised with equal per-channel statistics (EfficientNet-Lite: mean = std = 0.5) that is exactly the
first convolution with its weights summed over the input channels (timm's ``in_chans=1`` adaptation); tested in
``tests/test_medical.py``.

Nothing from a header is kept except the values used for pixels, and a patient id hashed with
:func:`patient_key` for patient-level splits.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from ..errors import DataError, need

DICOM_SUFFIXES = {".dcm", ".dicom", ".ima"}
NIFTI_SUFFIXES = (".nii", ".nii.gz")
# the readers, from the medical extra: errors.need's module, extra and what needs it
DICOM_READER = ("pydicom", "medical", "Reading DICOM files")
NIFTI_READER = ("nibabel", "medical", "Reading NIfTI files")
# (centre, width) in Hounsfield units: the usual radiology presets
WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-600, 1500),
    "mediastinum": (50, 350),
    "soft-tissue": (50, 400),
    "abdomen": (60, 400),
    "liver": (30, 150),
    "bone": (400, 1800),
    "brain": (40, 80),
    "subdural": (75, 215),
    "stroke": (32, 8),
}
SLICE_MODES = ("2d", "2.5d")
_reading = threading.local()


class _WhileReading(logging.Filter):
    """Drops pydicom's log records while this thread reads a file: they can quote header values."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_reading, "active", False)


_QUIET = _WhileReading()


@contextlib.contextmanager
def _quiet_pydicom():
    """No warning or log line from pydicom while a header is read (pydicom's messages may quote values)."""
    logger = logging.getLogger("pydicom")
    if _QUIET not in logger.filters:
        logger.addFilter(_QUIET)
    _reading.active = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        _reading.active = False


def is_dicom(path: Path) -> bool:
    """A DICOM suffix, or the ``DICM`` marker at byte 128 (PACS exports often have no suffix at all)."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    if path.suffix and not re.fullmatch(r"\.\d+", path.suffix):  # UID-like names end in digits
        return False
    try:
        with path.open("rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def is_medical(path: Path) -> bool:
    return is_nifti(path) or is_dicom(path)


def need_readers(paths: Iterable[str | Path]) -> None:
    """Stop in one line, before any work, when ``paths`` hold DICOM or NIfTI files and their reader is not installed
    (a run that reads them one by one, e.g. pre-training's loader workers, would otherwise fail at the first drawn)."""
    dicom = nifti = False
    for path in paths:
        path = Path(path)
        if is_nifti(path):
            nifti = True
        elif not dicom and is_dicom(path):
            dicom = True
        if dicom and nifti:
            break
    if dicom:
        need(*DICOM_READER)
    if nifti:
        need(*NIFTI_READER)


def check_window(window: str) -> str:
    """Validate a window setting; return it normalised. Raises :class:`DataError` with the choices."""
    w = str(window).strip().lower()
    if w in ("auto", "full") or w in WINDOWS:
        return w
    parts = w.split(",")
    if len(parts) == 2:
        try:
            centre, width = float(parts[0]), float(parts[1])
        except ValueError:
            pass
        else:
            if width > 0:
                return f"{centre:g},{width:g}"
    raise DataError(f"Window {window!r} is unknown: use auto, full, one of {', '.join(WINDOWS)}, or 'centre,width' "
                    "such as -600,1500.")


def check_slices(slices: str) -> str:
    s = str(slices).strip().lower()
    if s not in SLICE_MODES:
        raise DataError(f"Slices {slices!r} is unknown: use 2d (the middle slice) or 2.5d (three neighbouring slices "
                        "as channels).")
    return s


def apply_window(values: np.ndarray, window: str, own: tuple[float, float] | None = None) -> np.ndarray:
    """Physical values -> uint8 through ``window`` (see the module doc); ``own`` is the file's (centre, width).

    >>> apply_window(np.array([-1000.0, -600.0, 150.0]), "lung").tolist()
    [60, 128, 255]
    """
    v = np.asarray(values, dtype=np.float64)
    w = check_window(window)
    finite = v[np.isfinite(v)]
    if w == "auto" and own is not None and own[1] > 0:
        lo, hi = own[0] - own[1] / 2, own[0] + own[1] / 2
    elif w in ("auto", "full"):
        if finite.size == 0:
            lo, hi = 0.0, 1.0
        elif w == "auto":
            lo, hi = np.percentile(finite, [0.5, 99.5])
        else:
            lo, hi = float(finite.min()), float(finite.max())
    elif w in WINDOWS:
        c, width = WINDOWS[w]
        lo, hi = c - width / 2, c + width / 2
    else:
        c, width = (float(x) for x in w.split(","))
        lo, hi = c - width / 2, c + width / 2
    if hi <= lo:  # a constant image: mid-grey rather than a division by zero
        return np.full(v.shape, 128 if finite.size else 0, dtype=np.uint8)
    out = np.clip((np.nan_to_num(v, nan=lo) - lo) / (hi - lo), 0.0, 1.0)
    return np.round(out * 255).astype(np.uint8)


# called with (width, height, frames) from a file's header, before any pixel is decoded; raises DataError to refuse
SizeCheck = Callable[[int, int, int], None]


def read_medical(path: Path, window: str = "auto", slices: str = "2d", check_size: SizeCheck | None = None
                 ) -> np.ndarray:
    """One DICOM or NIfTI file -> ``(H, W)`` uint8 greyscale, or ``(H, W, 3)`` uint8 (colour DICOM, 2.5-D stacks).

    ``check_size(width, height, frames)`` sees the size the header declares (DICOM Rows, Columns and
    NumberOfFrames; the NIfTI shape) before a pixel is decoded: every frame is decoded, so a refusal must come
    first. Raises :class:`DataError` naming the file when it cannot be read.
    """
    if is_nifti(path):
        return read_nifti(path, window, slices, check_size)
    return read_dicom(path, window, slices, check_size)


def read_dicom(path: Path, window: str = "auto", slices: str = "2d", check_size: SizeCheck | None = None
               ) -> np.ndarray:
    with _quiet_pydicom():
        return _read_dicom(path, window, slices, check_size)


def _header_int(ds, keyword: str, default: int) -> int:
    try:
        return int(ds.get(keyword, default) or default)
    except (TypeError, ValueError):
        return default


def _read_dicom(path: Path, window: str, slices: str, check_size: SizeCheck | None) -> np.ndarray:
    pydicom = need(*DICOM_READER)
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, force=path.suffix.lower() in DICOM_SUFFIXES)
    except (InvalidDicomError, OSError, ValueError, EOFError) as err:
        raise DataError(f"{path} is not a readable DICOM file ({type(err).__name__}): replace or remove it, or pass "
                        "--skip-bad.") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        kind = str(ds.get("Modality", "")) or "DICOM"
        raise DataError(f"{path} is a {kind} object without an image (no pixel data): remove it, or pass --skip-bad.")
    if check_size is not None and "Rows" in ds and "Columns" in ds:  # without them pixel_array fails below
        frames = max(1, _header_int(ds, "NumberOfFrames", 1))
        check_size(_header_int(ds, "Columns", 0), _header_int(ds, "Rows", 0), frames)
    try:
        arr = ds.pixel_array  # pydicom 3 returns RGB for YBR colour data, compressed or not
    except Exception as err:  # noqa: BLE001 - pydicom raises many kinds for undecodable pixel data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", "its transfer syntax")
        if "decod" in str(err).lower() or "decompress" in str(err).lower():
            raise DataError(f"{path} is compressed with {name}, which no installed decoder reads: pip install "
                            "pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg (or decompress it with dcmdjpeg), or pass "
                            "--skip-bad.") from None
        raise DataError(f"{path}: its pixel data cannot be read ({type(err).__name__}): replace or remove it, or pass "
                        "--skip-bad.") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        return _dicom_colour(ds, arr, photometric, frames)
    if frames > 1:  # (frames, H, W)
        picked = _slice_indices(frames, slices)
        arr = np.stack([arr[i] for i in picked])
    else:
        picked = [0]
        arr = arr[None] if slices == "2.5d" else arr
    values = _modality_values(ds, arr, picked)
    own = _dicom_window(ds, picked[len(picked) // 2])
    out = apply_window(values, window, own)
    if photometric == "MONOCHROME1":
        out = 255 - out
    if out.ndim == 3 and slices == "2d":  # the middle frame of several
        out = out[0]
    elif out.ndim == 3:  # 2.5-D: channels last; a single frame is its own neighbour
        out = np.moveaxis(np.repeat(out, 3, axis=0) if out.shape[0] == 1 else out, 0, -1)
    return np.ascontiguousarray(out)


def _frame_item(ds, frame: int, sequence: str):
    """An enhanced (multi-frame) object's functional-group item ``sequence`` for ``frame``: per-frame first,
    then shared; None when the object has neither."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        seq = getattr(ds, groups, None)
        inner = getattr(seq[index], sequence, None) if seq is not None and len(seq) > index else None
        if inner:
            return inner[0]
    return None


def _modality_values(ds, arr: np.ndarray, frames: list[int]) -> np.ndarray:
    """Stored values -> physical values (HU for CT). Classic objects keep ``RescaleSlope``/``RescaleIntercept`` (or a
    modality LUT) at the top level, which pydicom applies; enhanced multi-frame objects keep them per frame in
    their functional groups (``PixelValueTransformationSequence``), applied here frame by frame."""
    from pydicom.pixels import apply_modality_lut

    if "RescaleSlope" in ds or "RescaleIntercept" in ds or "ModalityLUTSequence" in ds:
        return apply_modality_lut(arr, ds).astype(np.float64)
    out = np.asarray(arr, dtype=np.float64)
    stack = out if out.ndim == 3 and len(frames) == out.shape[0] else None
    for k, frame in enumerate(frames):
        item = _frame_item(ds, frame, "PixelValueTransformationSequence")
        if item is None:
            continue
        slope, intercept = float(item.get("RescaleSlope", 1) or 1), float(item.get("RescaleIntercept", 0) or 0)
        if stack is not None:
            stack[k] = stack[k] * slope + intercept
        else:
            out = out * slope + intercept
    return out


def _dicom_window(ds, frame: int = 0) -> tuple[float, float] | None:
    c, w = ds.get("WindowCenter"), ds.get("WindowWidth")
    if c is None or w is None:
        item = _frame_item(ds, frame, "FrameVOILUTSequence")  # enhanced objects: the frame's own window
        if item is None:
            return None
        c, w = item.get("WindowCenter"), item.get("WindowWidth")
    if c is None or w is None:
        return None
    try:
        c = float(c[0] if isinstance(c, (list, tuple)) or type(c).__name__ == "MultiValue" else c)
        w = float(w[0] if isinstance(w, (list, tuple)) or type(w).__name__ == "MultiValue" else w)
    except (TypeError, ValueError, IndexError):
        return None
    return (c, w) if w > 0 else None


def _dicom_colour(ds, arr: np.ndarray, photometric: str, frames: int) -> np.ndarray:
    """Colour DICOM -> (H, W, 3) uint8 RGB (the middle frame of a cine loop)."""
    if frames > 1:
        arr = arr[len(arr) // 2]
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
    arr = np.asarray(arr)  # YBR: pydicom 3's pixel_array has already converted it to RGB
    if arr.dtype != np.uint8:  # 16-bit colour (palette LUTs, RLE test files): scale by the stored bit depth
        bits = int(ds.get("BitsStored", 16) or 16) if photometric != "PALETTE COLOR" else 16
        arr = np.clip(arr.astype(np.float64) / (2 ** bits - 1) * 255, 0, 255).round().astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3])


def read_nifti(path: Path, window: str = "auto", slices: str = "2d", check_size: SizeCheck | None = None
               ) -> np.ndarray:
    nib = need(*NIFTI_READER)
    try:
        img = nib.load(str(path))  # the header only; the voxels are read below
        if check_size is not None:  # the first volume of a 4-D file is all that is read
            shape = tuple(int(n) for n in img.shape[:3]) + (1,) * (3 - min(3, len(img.shape)))
            check_size(shape[0], shape[1], shape[2])
        if len(img.shape) > 3:  # 4-D (time or channels): the first volume only, never the whole series
            img = img.slicer[..., 0] if len(img.shape) == 4 else img.slicer[:, :, :, 0, ...]
        img = nib.as_closest_canonical(img)
        vol = np.asarray(img.dataobj, dtype=np.float32)  # scl_slope/scl_inter applied
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - nibabel raises several kinds for damaged files
        raise DataError(f"{path} is not a readable NIfTI file ({type(err).__name__}): replace or remove it, or pass "
                        "--skip-bad.") from None
    while vol.ndim > 3:
        vol = vol[..., 0]
    hdr = img.header
    lo, hi = float(hdr.get("cal_min", 0)), float(hdr.get("cal_max", 0))
    own = ((lo + hi) / 2, hi - lo) if hi > lo else None
    if vol.ndim == 2:
        vol = vol[:, :, None]
    stack = _pick_slices(vol, slices, axis=2) if slices == "2.5d" else vol[:, :, vol.shape[2] // 2][None]
    if check_window(window) == "auto" and own is None:
        lo_hi = np.percentile(vol[np.isfinite(vol)], [0.5, 99.5]) if np.isfinite(vol).any() else (0.0, 1.0)
        own = ((lo_hi[0] + lo_hi[1]) / 2, float(lo_hi[1] - lo_hi[0]))  # the volume's range: slices agree
    out = apply_window(stack, window, own)
    # RAS (x, y) -> the radiological view DICOM axial images have: anterior at the top, the patient's right on
    # the image's left (rot90 alone would put the patient's left there, mirroring NIfTI against DICOM)
    out = np.stack([np.fliplr(np.rot90(s)) for s in out])
    if out.shape[0] == 1:
        return np.ascontiguousarray(out[0])
    return np.ascontiguousarray(np.moveaxis(out, 0, -1))


def _slice_indices(n: int, slices: str) -> list[int]:
    """The middle slice, or the middle one with its neighbours (edges repeated)."""
    mid = n // 2
    return [mid] if check_slices(slices) == "2d" else [max(0, mid - 1), mid, min(n - 1, mid + 1)]


def _pick_slices(vol: np.ndarray, slices: str, axis: int) -> np.ndarray:
    """The slices :func:`_slice_indices` names, stacked on a new first axis."""
    return np.stack([np.take(vol, i, axis=axis) for i in _slice_indices(vol.shape[axis], slices)])


def read_high_bit_depth(img, window: str = "auto") -> np.ndarray | None:
    """A PIL image with 16-bit, 32-bit integer or float pixels (PNG/TIFF) -> (H, W) uint8 through ``window``;
    None for ordinary 8-bit images, which pass through unchanged."""
    if img.mode not in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return None
    arr = np.asarray(img)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return apply_window(arr.astype(np.float64), window)


MIN_KEY_BYTES = 16  # 128 bits: fewer, and hashed patient ids could be recovered by trying every key


def _hash_key() -> bytes:
    """``TRANSFERKIT_PATIENT_SALT`` when set (share it to compare hashes across machines), else a random key made
    once per installation and kept in the cache folder (readable by its owner only). A public key would let
    anyone recover short numeric ids from their hashes by trying them all; so would an empty or short one, which
    is refused."""
    env = os.environ.get("TRANSFERKIT_PATIENT_SALT")
    if env:  # set but empty: as if unset
        if len(env.strip().encode()) < MIN_KEY_BYTES:
            raise DataError(f"TRANSFERKIT_PATIENT_SALT holds {len(env.strip().encode())} bytes, too short a key for "
                            f"patient ids: set it to at least {MIN_KEY_BYTES} random characters (e.g. python -c "
                            "'import secrets; print(secrets.token_hex(32))'), or unset it.")
        return env.encode()
    from ..cache import cache_root

    path = cache_root() / "patient-key"
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        key = _new_key(path)
    except OSError as err:
        raise DataError(f"The patient key {path} cannot be read ({err.strerror}): fix its permissions, or set "
                        "TRANSFERKIT_PATIENT_SALT.") from None
    if len(key.strip()) < MIN_KEY_BYTES:
        raise DataError(f"The patient key {path} holds {len(key.strip())} bytes, too short to keep hashed patient ids "
                        f"secret (at least {MIN_KEY_BYTES}): delete it so a new one is made (hashes then change), or "
                        "set TRANSFERKIT_PATIENT_SALT to the key shared with other machines.")
    return key


def _new_key(path: Path) -> bytes:
    """Make the installation's patient key at ``path``: written to a file that is created owner-only (0600, never
    readable by others even for a moment), then linked into place so that the first of two concurrent runs wins
    and both read the same key."""
    import tempfile

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".patient-key.", suffix=".tmp", dir=path.parent)  # O_EXCL, mode 0600
    except OSError as err:
        raise DataError(f"The patient key cannot be made in {path.parent} ({err.strerror}): set TRANSFERKIT_CACHE to a "
                        "writable folder, or TRANSFERKIT_PATIENT_SALT.") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_hex(32).encode())
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic, and never replaces a key another run made meanwhile
        except FileExistsError:
            pass
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path.read_bytes()


def patient_key(patient: str) -> str:
    """A patient id -> 12 hex characters (HMAC-SHA256 under :func:`_hash_key`). The raw id is never written
    anywhere; hashes agree between runs on one machine (or wherever ``TRANSFERKIT_PATIENT_SALT`` is shared)."""
    return hmac.new(_hash_key(), str(patient).strip().encode(), hashlib.sha256).hexdigest()[:12]


def dicom_patient(path: Path) -> str | None:
    """The hashed ``PatientID`` of a DICOM file (the header only, no pixels); for anonymised files without one,
    the hashed ``StudyInstanceUID`` (a study belongs to one patient); None when it has neither."""
    pydicom = need(*DICOM_READER)

    with _quiet_pydicom():
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID", "StudyInstanceUID"],
                                 force=path.suffix.lower() in DICOM_SUFFIXES)
        except Exception:  # noqa: BLE001 - an unreadable file is reported when its pixels are read
            return None
        pid = str(ds.get("PatientID", "") or "").strip()
        study = str(ds.get("StudyInstanceUID", "") or "").strip()
    if pid:
        return patient_key(pid)
    return patient_key(f"study:{study}") if study else None
