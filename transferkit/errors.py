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



def check_number(name: str, value: object, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, whole: bool = False, example: str = "") -> None:
    """Refuse a setting that is not a finite number in its range, with one line naming it and the range.

    ``low``/``high`` bound it (None: unbounded), excluded when ``low_open``/``high_open``; ``whole`` asks for an
    integer; ``example`` ends the line (", e.g. 1e-4"). NaN, infinity and booleans are never numbers here.

    >>> check_number("lr", float("nan"), low=0, low_open=True, example="1e-4")
    Traceback (most recent call last):
    ...
    transferkit.errors.TransferkitError: lr nan is out of range: use a finite number above 0, e.g. 1e-4.
    """
    import math
    import numbers

    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and whole:
        ok = isinstance(value, numbers.Integral)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if ok:
        return
    lo = None if low is None else (f"above {_plain(low)}" if low_open else f"from {_plain(low)}")
    hi = None if high is None else (f"below {_plain(high)}" if high_open else f"up to {_plain(high)}")
    if lo and hi:
        rng = f" {lo} to {hi}" if not low_open else f" {lo} and {hi}"
    elif lo:
        rng = f", {_plain(low)} or more" if not low_open else f" {lo}"
    else:
        rng = f" {hi}" if hi else ""
    kind = "a whole number" if whole else "a finite number"
    tail = f", e.g. {example}" if example else ""
    raise TransferkitError(f"{name} {value!r} is out of range: use {kind}{rng}{tail}.")


def _plain(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)
