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

import hashlib
import hmac
import os
import re
from pathlib import Path

import numpy as np

from ..errors import DataError

DICOM_SUFFIXES = {".dcm", ".dicom", ".ima"}
NIFTI_SUFFIXES = (".nii", ".nii.gz")
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


def read_medical(path: Path, window: str = "auto", slices: str = "2d") -> np.ndarray:
    """One DICOM or NIfTI file -> ``(H, W)`` uint8 greyscale, or ``(H, W, 3)`` uint8 (colour DICOM, 2.5-D stacks).

    Raises :class:`DataError` naming the file when it cannot be read.
    """
    if is_nifti(path):
        return read_nifti(path, window, slices)
    return read_dicom(path, window, slices)


def read_dicom(path: Path, window: str = "auto", slices: str = "2d") -> np.ndarray:
    import warnings

    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's warnings may quote header values
            ds = pydicom.dcmread(path, force=path.suffix.lower() in DICOM_SUFFIXES)
    except (InvalidDicomError, OSError, ValueError, EOFError) as err:
        raise DataError(f"{path} is not a readable DICOM file ({type(err).__name__}): replace or remove it, or pass "
                        "--skip-bad.") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        kind = str(ds.get("Modality", "")) or "DICOM"
        raise DataError(f"{path} is a {kind} object without an image (no pixel data): remove it, or pass --skip-bad.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array
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
        arr = _pick_slices(arr, slices, axis=0)
    else:
        arr = arr[None] if slices == "2.5d" else arr
    from pydicom.pixels import apply_modality_lut

    values = apply_modality_lut(arr, ds).astype(np.float64)
    own = _dicom_window(ds)
    out = apply_window(values, window, own)
    if photometric == "MONOCHROME1":
        out = 255 - out
    if out.ndim == 3 and slices == "2d":  # the middle frame of several
        out = out[0]
    elif out.ndim == 3:  # 2.5-D: channels last; a single frame is its own neighbour
        out = np.moveaxis(np.repeat(out, 3, axis=0) if out.shape[0] == 1 else out, 0, -1)
    return np.ascontiguousarray(out)


def _dicom_window(ds) -> tuple[float, float] | None:
    c, w = ds.get("WindowCenter"), ds.get("WindowWidth")
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
    elif photometric.startswith("YBR") and arr.ndim == 3:
        from pydicom.pixels import convert_color_space

        # pydicom already converts what it decompresses as JPEG; uncompressed YBR arrives as YBR
        if not ds.file_meta.TransferSyntaxUID.is_compressed:
            arr = convert_color_space(arr, photometric, "RGB")
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:  # 16-bit colour (palette LUTs, RLE test files): scale by the stored bit depth
        bits = int(ds.get("BitsStored", 16) or 16) if photometric != "PALETTE COLOR" else 16
        arr = np.clip(arr.astype(np.float64) / (2 ** bits - 1) * 255, 0, 255).round().astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3])


def read_nifti(path: Path, window: str = "auto", slices: str = "2d") -> np.ndarray:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        img = nib.as_closest_canonical(img)
        vol = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as err:  # noqa: BLE001 - nibabel raises several kinds for damaged files
        raise DataError(f"{path} is not a readable NIfTI file ({type(err).__name__}): replace or remove it, or pass "
                        "--skip-bad.") from None
    while vol.ndim > 3:  # 4-D (time or channels): the first volume
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
    out = np.stack([np.rot90(s) for s in out])  # RAS (x, y) -> rows anterior-to-posterior, as a viewer shows it
    if out.shape[0] == 1:
        return np.ascontiguousarray(out[0])
    return np.ascontiguousarray(np.moveaxis(out, 0, -1))


def _pick_slices(vol: np.ndarray, slices: str, axis: int) -> np.ndarray:
    """The middle slice (``(1, ...)``) or the middle one with its neighbours (``(3, ...)``, edges repeated)."""
    n = vol.shape[axis]
    mid = n // 2
    idx = [mid] if check_slices(slices) == "2d" else [max(0, mid - 1), mid, min(n - 1, mid + 1)]
    return np.stack([np.take(vol, i, axis=axis) for i in idx])


def read_high_bit_depth(img, window: str = "auto") -> np.ndarray | None:
    """A PIL image with 16-bit, 32-bit integer or float pixels (PNG/TIFF) -> (H, W) uint8 through ``window``;
    None for ordinary 8-bit images, which pass through unchanged."""
    if img.mode not in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return None
    arr = np.asarray(img)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return apply_window(arr.astype(np.float64), window)


def patient_key(patient: str) -> str:
    """A patient id -> 12 hex characters (HMAC-SHA256). The raw id is never written anywhere.

    The key is ``TRANSFERKIT_PATIENT_SALT`` when set (set it to a secret: short numeric ids can otherwise be
    recovered from their hashes by trying them all), else a fixed one, so hashes agree between runs.
    """
    key = os.environ.get("TRANSFERKIT_PATIENT_SALT", "transferkit-patient").encode()
    return hmac.new(key, str(patient).strip().encode(), hashlib.sha256).hexdigest()[:12]


def dicom_patient(path: Path) -> str | None:
    """The hashed ``PatientID`` of a DICOM file (the header only, no pixels), or None when it has none."""
    import warnings

    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"],
                                 force=path.suffix.lower() in DICOM_SUFFIXES)
    except Exception:  # noqa: BLE001 - an unreadable file is reported when its pixels are read
        return None
    pid = str(ds.get("PatientID", "") or "").strip()
    return patient_key(pid) if pid else None
