"""Copies that make scores lie: the same example (by content, not by name) in training and in a split that scores
the model, and tables whose rows repeat.

A copy in the test split is scored as if unseen, so a model that memorised it looks better than it is (the same
image in train and test gave a test accuracy of 1.000). With no held-out split the folds of the cross-validation
play that part, so copies inside the training split count too. Each finding is one warning with the count and
one example pair; medical runs refuse copies across splits, as they refuse a patient in two splits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..console import warn
from ..errors import DataError


@dataclass
class Copies:
    """Examples whose content is already in an earlier split (or, ``within``, earlier in the same one).

    ``by_split``: how many in each split; ``example``: one pair as ``(name, split, name of the first copy,
    its split)``."""

    by_split: dict[str, int]
    example: tuple[str, str, str, str]

    @property
    def count(self) -> int:
        return sum(self.by_split.values())

    def sentence(self, unit: str) -> str:
        name, split, first, where = self.example
        counts = ", ".join(f"{n} within {s}" if s == "train" else f"{n} in {s}" for s, n in self.by_split.items())
        return (f"{self.count} of the {unit} repeat an earlier one's content ({counts}), e.g. {name} ({split}) = "
                f"{first} ({where}): a copy is scored as if unseen, so the scores are inflated; remove the copies")

    def as_dict(self, unit: str) -> dict[str, Any]:
        name, split, first, where = self.example
        return {"count": self.count, "by_split": self.by_split, "example": [f"{name} ({split})", f"{first} ({where})"],
                "note": self.sentence(unit)}


def find_copies(parts: dict[str, tuple[Sequence[str | None], Sequence[str]]],
                within: tuple[str, ...] = ()) -> Copies | None:
    """``parts``: split name -> (content keys, names), training split first. An example counts when its key is in
    an earlier split, or earlier in its own split for the splits named in ``within`` (the cross-validated
    training split). A key of None (an example with nothing to compare, such as a blank image) matches nothing.
    None when there is no copy."""
    first: dict[str, tuple[str, str]] = {}
    by_split: dict[str, int] = {}
    example = None
    for split, (keys, names) in parts.items():
        seen_here: dict[str, str] = {}
        for key, name in zip(keys, names, strict=True):
            if key is None:
                continue
            earlier = first.get(key) or ((seen_here[key], split) if split in within and key in seen_here else None)
            if earlier is not None:
                by_split[split] = by_split.get(split, 0) + 1
                example = example or (str(name), split, str(earlier[0]), earlier[1])
            seen_here.setdefault(key, name)
        for key, name in seen_here.items():
            first.setdefault(key, (name, split))
    return Copies(by_split, example) if example is not None else None


def answer_copies(copies: Copies | None, unit: str, refuse: bool = False) -> None:
    """Warn about ``copies`` (one line); with ``refuse`` (medical data), copies across splits stop the run."""
    if copies is None:
        return
    if refuse and any(split != "train" for split in copies.by_split):  # within train: only a fold is misled
        raise DataError(f"{copies.sentence(unit)} (medical data refuse copies across splits, as they refuse a "
                        "patient in two splits).")
    warn(copies.sentence(unit))


def warn_repeated_rows(path: object, rows: Sequence[tuple[int, dict[str, Any]]]) -> int:
    """Warn when rows of the table ``path`` repeat an earlier row cell for cell, with the count and one pair of
    line numbers; returns how many repeat."""
    first: dict[tuple, int] = {}
    repeats: list[tuple[int, int]] = []
    for line, row in rows:
        key = tuple(sorted((str(k), repr(v)) for k, v in row.items()))
        if key in first:
            repeats.append((line, first[key]))
        else:
            first[key] = line
    if repeats:
        line, earlier = repeats[0]
        warn(f"{len(repeats)} row(s) of {path} repeat an earlier row, e.g. line {line} = line {earlier}: a repeated "
             "example weighs twice in training and can be scored on a copy of itself; remove the repeats")
    return len(repeats)
