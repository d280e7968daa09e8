"""A bundle's network, rebuilt from its checked ``config.json`` and filled from ``model.safetensors`` only after
the file's header, its tensor names and shapes, and its values have been checked (:func:`load_weights`): a
truncated, renamed or mis-shaped file is one line naming the file and the tensors, never a SafetensorError or a
size-mismatch traceback."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import TransferkitError, is_whole_number
from .format import FIX

MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit on its JSON header


def rebuild(folder: str | Path, build: Callable[[], Any], what: str = "backbone") -> Any:
    """``build()`` (a backbone or detector made from a bundle's config), with any failure of the libraries it
    calls (timm, transformers, torchvision on a tampered architecture) turned into one line naming the bundle.

    Raises:
        TransferkitError: as ``build`` raises it (prefixed with ``folder``'s config.json and ``what`` unless it
            names a file of the bundle already), or naming ``folder`` and the library's complaint.
    """
    config = Path(folder) / "config.json"
    try:
        return build()
    except TransferkitError as err:
        if str(folder) in str(err):  # it names its file already (e.g. code asked for in encoder/config.json)
            raise
        raise TransferkitError(f"{config}: {what}: {err}") from None
    except Exception as err:  # noqa: BLE001 - a bundle is untrusted data: whatever it makes a library do is its fault
        detail = (str(err).strip().splitlines() or [""])[0][:160]
        raise TransferkitError(f"{folder}: the {what} its config files describe cannot be rebuilt "
                               f"({type(err).__name__}: {detail}); {FIX}.") from None


# -- the weights -----------------------------------------------------------------------------------------------
# safetensors' dtype names -> bytes per element
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


def weights_header(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, read from a safetensors file's header, after checking that the header is intact and
    that every tensor's bytes lie inside the file (a truncated copy is caught here, not by a SafetensorError).

    Raises:
        TransferkitError: one line naming the file and what is wrong with it.
    """
    path = Path(path)
    size = path.stat().st_size
    damaged = f"{path} is damaged"
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise TransferkitError(f"{path} is empty or cut short ({size} bytes): {FIX}.")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, MAX_HEADER_BYTES):
            raise TransferkitError(f"{damaged} (its header claims {n} bytes, the file holds {size}): it was cut "
                                   f"short or is not safetensors; {FIX}.")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise TransferkitError(f"{damaged} (its header is not JSON): {FIX}.") from None
    if not isinstance(header, dict):
        raise TransferkitError(f"{damaged} (its header is not a JSON object): {FIX}.")
    data = size - 8 - n
    shapes: dict[str, tuple[int, ...]] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        ok = (isinstance(entry, dict) and entry.get("dtype") in DTYPE_BYTES and isinstance(entry.get("shape"), list)
              and all(is_whole_number(d) and d >= 0 for d in entry["shape"])
              and isinstance(entry.get("data_offsets"), list)
              and len(entry["data_offsets"]) == 2 and all(is_whole_number(o) for o in entry["data_offsets"]))
        if not ok:
            raise TransferkitError(f"{damaged} (tensor {name!r} has no valid dtype, shape and offsets): {FIX}.")
        begin, end = entry["data_offsets"]
        if end > data:
            raise TransferkitError(f"{path} is cut short: tensor {name!r} needs {end - data} bytes more than the "
                                   f"file holds; {FIX}.")
        if not 0 <= begin <= end or end - begin != math.prod(entry["shape"]) * DTYPE_BYTES[entry["dtype"]]:
            raise TransferkitError(f"{damaged} (tensor {name!r}'s bytes do not match its shape): {FIX}.")
        shapes[name] = tuple(entry["shape"])
    return shapes


def _listed(names: list[str], most: int = 3) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def load_weights(module: Any, path: str | Path) -> None:
    """Fill ``module`` (built from a bundle's ``config.json``) from the bundle's ``model.safetensors``, after
    checking the file (:func:`weights_header`), that its tensor names and shapes are exactly the module's, and
    that every value is finite.

    Raises:
        TransferkitError: naming the file and the first few missing, unexpected or mis-shaped tensors (or the one
            holding NaN or infinity).
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    found = weights_header(path)
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    problems = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shaped = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])
    if missing:
        problems.append(f"missing {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected {_listed(unexpected)}")
    if shaped:
        problems.append("; ".join(f"{k} is {list(found[k])}, the network needs {list(expected[k])}"
                                  for k in shaped[:3]) + (f" and {len(shaped) - 3} more" if len(shaped) > 3 else ""))
    if problems:
        raise TransferkitError(f"{path} does not match the network the bundle's config describes: "
                               f"{'; '.join(problems)}; {FIX}.")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise TransferkitError(f"{path} is damaged ({str(err).splitlines()[0][:120]}): {FIX}.") from None
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise TransferkitError(f"{path}: tensor {name!r} holds NaN or infinite values; {FIX}.")
    module.load_state_dict(state)
