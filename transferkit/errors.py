"""The one exception type users see.

Every message is one line that names the file or value at fault and says what to do about it. The CLI prints
the message alone (no traceback); the Python API raises it so callers can catch it.
"""


class TransferkitError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class DataError(TransferkitError, ValueError):
    """Bad or unreadable training data."""


class BackboneError(TransferkitError, ValueError):
    """Unknown backbone, or weights that cannot be loaded here."""


class DivergedError(TransferkitError):
    """Training stopped at a loss that is not a finite number (NaN or infinity); nothing was saved from it."""


class MissingExtraError(TransferkitError):
    """An optional dependency is not installed; the message names the extra that brings it and the pip command."""


def need(module: str, extra: str, purpose: str, package: str | None = None):
    """Import ``module``, or stop in one line naming the extra: ``need("pydicom", "medical", "Reading DICOM files")``.

    ``package`` is the name pip knows it by, where that differs from the module's. Only the module itself being
    absent is a missing extra; a module that is there but fails to import raises as it is (a broken install).
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        # the module, or a package it lies in, is absent; anything else missing is a broken install, raised as it is
        if err.name is None or not (module == err.name or module.startswith(err.name + ".")):
            raise
        name = package or module
        raise MissingExtraError(f"{purpose} needs {name}, which is not installed: pip install 'transferkit[{extra}]' "
                                f"(or pip install {name}).") from None


# Sizes every part agrees on, so that what one writes another reads: fit, pretrain and a bundle's config.json.
# An image side beyond 2048 px costs gigabytes per batch (a tampered input_size of 4096 took 3.4 GB per image);
# below 8 px no backbone has a feature map left (fit asks for 32: its strides need it).
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 8, 2048
MIN_FIT_SIZE = 32
MIN_TEXT_TOKENS, MAX_TEXT_TOKENS = 8, 32_768  # a few words; longer than any encoder's position table
MAX_SEED = 2**32 - 1  # numpy's seeds stop here
MAX_COUNT = 2**31 - 1  # epochs, steps, batch sizes: what a C int holds (torch and numpy take them as such)
MAX_LABEL_CHARS = 1000  # a class name longer than this is not a name: reports, tables and plots show each one


def is_whole_number(value: object) -> bool:
    """An integer (Python's or numpy's), not a boolean."""
    import numbers

    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_finite_number(value: object) -> bool:
    """A real number that is neither NaN nor infinite, not a boolean: an integer as long as a float holds it
    (``math.isfinite`` would overflow on a 400-digit one; ``float()`` of it too, wherever it is used)."""
    import math
    import numbers
    import sys

    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    if is_whole_number(value):
        return abs(value) <= sys.float_info.max  # type: ignore[operator]
    return math.isfinite(value)


def check_number(name: str, value: object, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, whole: bool = False, example: str = "") -> None:
    """Refuse a setting that is not a finite number in its range, with one line naming it and the range.

    ``low``/``high`` bound it (None: unbounded), excluded when ``low_open``/``high_open``; ``whole`` asks for an
    integer; ``example`` ends the line (", e.g. 1e-4"). NaN, infinity and booleans are never numbers here; an
    integer is finite however long.

    >>> check_number("lr", float("nan"), low=0, low_open=True, example="1e-4")
    Traceback (most recent call last):
    ...
    transferkit.errors.TransferkitError: lr nan is out of range: use a finite number above 0, e.g. 1e-4.
    >>> check_number("lr", "0.1", low=0, low_open=True)
    Traceback (most recent call last):
    ...
    transferkit.errors.TransferkitError: lr '0.1' is not a number: use a finite number above 0.
    """
    import numbers

    ok = is_finite_number(value) and (not whole or is_whole_number(value))
    if ok and low is not None:
        ok = value > low if low_open else value >= low  # type: ignore[operator]
    if ok and high is not None:
        ok = value < high if high_open else value <= high  # type: ignore[operator]
    if ok:
        return
    lo = None if low is None else (f"above {_plain(low)}" if low_open else f"from {_plain(low)}")
    hi = None if high is None else (f"below {_plain(high)}" if high_open else f"up to {_plain(high)}")
    if lo and hi:
        rng = f" {lo} and {hi}" if low_open else f" {lo} to {hi.removeprefix('up to ')}"
    elif lo:
        rng = f", {_plain(low)} or more" if not low_open else f" {lo}"
    else:
        rng = f" {hi}" if hi else ""
    kind = "a whole number" if whole else "a finite number"
    tail = f", e.g. {example}" if example else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        problem = "is not a number"
    elif whole and is_finite_number(value) and not is_whole_number(value):
        problem = "is not a whole number"
    else:
        problem = "is out of range"
    raise TransferkitError(f"{name} {_shown(value)} {problem}: use {kind}{rng}{tail}.")


def _shown(value: object) -> str:
    text = repr(value)
    if len(text) <= 40:
        return text
    return f"{text[:12]}... ({len(text)} {'digits' if is_whole_number(value) else 'characters'})"


def _plain(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


PRECISIONS = ("auto", "bf16", "fp16", "no")


def check_precision(precision: object) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else one line saying which are (YAML reads a bare ``no`` as
    false: the file must quote it)."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise TransferkitError(f"precision {precision!r} is unknown: choose auto, bf16, fp16 or no (in a YAML file "
                               "write 'no' in quotes).")
    return precision
