"""What counts as a label: a missing one is refused with its line, never turned into a class called "nan".

Tables and Python lists hand labels over as they are: CSV cells as strings, JSON values as strings, numbers, true
or null, pandas cells as NaN where empty. Without a check, ``NaN``, ``nan`` and ``null`` would each become a class,
and JSON ``1`` and ``"1"`` would merge into one class "1" once turned into strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import MAX_LABEL_CHARS, DataError

# cell texts that mean "no value" in the tools that write tables (pandas, R, spreadsheets, JSON); "None" and
# "NA" are left out: both are plausible class names ("no finding", "North America")
MISSING_WORDS = {"", "nan", "-nan", "null"}
CONTROL = frozenset(map(chr, [*range(9), *range(10, 32), 127]))  # line breaks, the rest of C0 and DEL (a tab is fine)


def is_missing(value: Any) -> bool:
    """Whether a label cell holds no label: None, a float NaN, an empty (or blank and
    invisible) cell, or "NaN"/"nan"/"null"."""
    if value is None:
        return True
    if isinstance(value, float):
        return value != value
    if isinstance(value, str):
        return visible(value).lower() in MISSING_WORDS
    return False


def visible(text: str) -> str:
    """``text`` without surrounding spaces and without invisible format characters (a zero-width space, a
    byte-order mark): a label of only those would be a class no report can show."""
    import unicodedata

    return "".join(c for c in text if unicodedata.category(c) != "Cf").strip()


def kind_of(value: Any) -> str:
    """How a label was written: "text", "whole number", "decimal number", "true/false" (or the type's name)."""
    import numbers

    if isinstance(value, str):
        return "text"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, numbers.Integral):
        return "whole number"
    if isinstance(value, numbers.Real):
        return "decimal number"
    return type(value).__name__


def is_multi(values: Sequence[Any], sep: str | None) -> bool:
    """Whether a label column is multi-label: a separator was given (``--label-sep``), or a cell holds a list
    (JSON)."""
    return sep is not None or any(isinstance(v, (list, tuple)) for v in values)


def parse_label(value: Any, multi: bool, sep: str | None, where: str = "a label") -> Any:
    """A label string, a sorted tuple of labels (multi-label), or None when missing (None, NaN, an empty cell,
    "nan" or "null": see :func:`is_missing`).

    An explicit empty list is a valid multi-label answer (no label applies); an empty cell is not. A missing item
    in a list or cell (``[null, "cat"]``, ``"cat|nan"``) or a list inside a list is refused, naming ``where``:
    it would become a class called "None", "nan" or "['a', 'b']".

    >>> parse_label("dog|cat", True, "|"), parse_label([], True, None), parse_label("", True, "|")
    (('cat', 'dog'), (), None)
    """
    if is_missing(value):
        return None
    if multi:
        raw = list(value) if isinstance(value, (list, tuple)) else str(value).split(sep) if sep else [value]
        for v in raw:
            if isinstance(v, (list, tuple, dict, set)):
                raise DataError(f"{where}: the labels {_short(value)} hold {_short(v)}, a "
                                f"{'list' if isinstance(v, (list, tuple, set)) else 'mapping'} inside the list: give "
                                "each label as text.")
            if is_missing(v) and not (isinstance(v, str) and not v.strip() and not isinstance(value, (list, tuple))):
                raise DataError(f"{where}: the labels {_short(value)} hold an empty or missing item ({v!r}): remove "
                                "it (an empty list says that no label applies).")
        return tuple(sorted({str(v).strip() for v in raw if str(v).strip()}))
    text = str(value).strip()
    return text or None


def _short(value: Any, chars: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= chars else text[:chars] + "..."


def label_names(labels: Sequence[Any], multi: bool) -> list[str]:
    """The sorted classes that ``labels`` (strings, or tuples of strings when ``multi``) name."""
    return sorted({y for ys in labels for y in ys}) if multi else sorted(set(labels))


def label_counts(labels: Sequence[Any], multi: bool) -> dict[str, int]:
    """Examples per class (multi-label: the examples that carry each label), sorted by class."""
    from collections import Counter

    counts = Counter(y for ys in labels for y in ys) if multi else Counter(labels)
    return dict(sorted(counts.items()))


def label_targets(labels: Sequence[Any], classes: Sequence[str], multi: bool) -> Any:
    """What a network trains on: (N,) long class indices, or (N, K) float 0/1 rows when ``multi``."""
    import torch

    index = {c: i for i, c in enumerate(classes)}
    if multi:
        t = torch.zeros(len(labels), len(classes))
        for i, ys in enumerate(labels):
            for y in ys:
                t[i, index[y]] = 1.0
        return t
    return torch.tensor([index[y] for y in labels], dtype=torch.long)


def rarest_labels(labels: Sequence[Any]) -> list[Any]:
    """One label per example to stratify by: its label, or for an example with several (multi-label texts, the
    boxes of an image) the rarest of them over all examples (ties: the first by name; "" for none)."""
    from collections import Counter

    many = [tuple(y) if isinstance(y, (list, tuple)) else (y,) for y in labels]
    counts = Counter(c for ys in many for c in ys)
    return [min(ys, key=lambda c: (counts[c], str(c))) if ys else "" for ys in many]


def check_label_kinds(values: Sequence[Any], wheres: Sequence[str], column: str) -> None:
    """Refuse labels of a column written in several ways (``1`` and ``"1"``, ``1`` and ``1.0``, ``true`` and
    ``"yes"``): as strings they would merge into one class or split one class in two. One line names the first
    example of two kinds. Missing values are not looked at; a list (multi-label) is looked at item by item."""
    first: dict[str, int] = {}
    flat: list[tuple[int, Any]] = []
    for i, v in enumerate(values):
        flat += [(i, x) for x in v] if isinstance(v, (list, tuple)) else [(i, v)]
    for i, v in flat:
        if is_missing(v) or isinstance(v, (list, tuple, dict, set)):
            continue
        if isinstance(v, str) and len(v) > MAX_LABEL_CHARS:
            raise DataError(f"{wheres[i]}: the label ({column!r}) is {len(v):,} characters long, more than a class "
                            f"name can be ({MAX_LABEL_CHARS:,}): is {column!r} the label column?")
        if isinstance(v, str) and any(c in v.strip() for c in CONTROL):  # readers strip the ends
            raise DataError(f"{wheres[i]}: the label {v!r} ({column!r}) holds a line break or another control "
                            "character, which would break every report and table it appears in: write it on one line.")
        if kind_of(v) not in first:
            first[kind_of(v)] = (i, v)
        if len(first) > 1:
            (a, (ia, va)), (b, (ib, vb)) = sorted(first.items(), key=lambda kv: kv[1][0])[:2]
            raise DataError(f"The {column!r} labels mix types: {wheres[ia]} has the {a} {va!r}, "
                            f"{wheres[ib]} the {b} {vb!r}; write every label the same way (all as text, "
                            "e.g. \"1\").")


def missing_label(where: str, column: str, value: Any, skip_hint: bool = True) -> DataError:
    """The one line for a row without a label: where, the column, what it held, what to do."""
    held = ("is empty (null)" if value is None else "is empty" if isinstance(value, str) and not value.strip()
            else f"is {value!r}")
    tail = " (or pass --skip-bad)" if skip_hint else ""
    return DataError(f"{where}: the label ({column!r}) {held}, which is no label: fill it in or remove the "
                     f"row{tail}.")
