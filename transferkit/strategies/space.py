"""Search spaces: what ``transferkit search`` may change in each strategy.

Each strategy's config declares its space beside its defaults: ``search_space`` (and ``<profile>_search_space`` where
a backbone's defaults differ, as ``text_defaults`` do; a dimension set to None there is left out). A dimension is a
:class:`Range` (numbers from ``low`` to ``high``, whole numbers when the option is an int, on a log scale with
``log=True``) or a tuple of choices.

A small YAML file (``transferkit search --space FILE``) changes the declared spaces, strategy by strategy::

    finetune:
      lr: {low: 1.0e-5, high: 1.0e-3, log: true}   # a range replaces the declared one
      augment: [true, false]                       # choices
      epochs: 10                                   # a fixed value: set, not searched
      label_smoothing: null                        # left out: the strategy's default
    linear:
      c: {low: 0.01, high: 10, log: true}

Every problem is refused with one line naming the strategy and the option: an unknown strategy or option (with
the closest known name), an empty or reversed range, a log range that reaches 0, a value of the wrong type.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import TransferkitError


@dataclass(frozen=True)
class Range:
    """Numbers from ``low`` to ``high`` (both included); whole numbers when the option is an int."""

    low: float
    high: float
    log: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "log": self.log}


Dimension = Range | tuple  # a tuple: the choices


def declared_space(config_cls: type, profile: str | None = None) -> dict[str, Dimension]:
    """The space ``config_cls`` declares, with ``profile``'s changes (e.g. ``text_search_space``) over it."""
    space = dict(getattr(config_cls, "search_space", {}) or {})
    for name, dim in (getattr(config_cls, f"{profile}_search_space", None) or {}).items():
        if dim is None:
            space.pop(name, None)
        else:
            space[name] = dim
    return space


def option_types(config_cls: type) -> dict[str, Any]:
    """Each option of a strategy config -> its type (``int``, ``float``, ``bool``, ``str``; Optional unwrapped)."""
    hints = typing.get_type_hints(config_cls)
    out = {}
    for f in dataclasses.fields(config_cls):
        kind = hints.get(f.name, Any)
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            kind = next((a for a in typing.get_args(kind) if a is not type(None)), Any)
        out[f.name] = kind
    return out


def closest(name: str, known: list[str]) -> str:
    """`` (closest: 'lr')`` when a known name is near ``name``, else ``''``."""
    near = difflib.get_close_matches(str(name), known, n=1)
    return f" (closest: {near[0]!r})" if near else ""


def check_dimension(strategy: str, name: str, dim: Any, kind: Any, where: str = "") -> Any:
    """``dim`` as a Range, a tuple of choices or a fixed value of option ``name`` (type ``kind``), or one line
    saying what is wrong with it."""
    label = f"{where}{strategy}.{name}"
    if isinstance(dim, dict):
        unknown = set(dim) - {"low", "high", "log"}
        if unknown or not {"low", "high"} <= set(dim):
            raise TransferkitError(f"{label}: a range is written {{low: ..., high: ...}} (and optionally log: true); "
                                   f"got {dim!r}.")
        if not isinstance(dim.get("log", False), bool):
            raise TransferkitError(f"{label}: log is true or false (got {dim['log']!r}).")
        dim = Range(number(label, dim["low"]), number(label, dim["high"]), dim.get("log", False))
    if isinstance(dim, Range):
        if kind not in (int, float):
            raise TransferkitError(f"{label} is a {getattr(kind, '__name__', kind)} option: give choices such as "
                                   "[a, b], not a range.")
        low, high = dim.low, dim.high
        if not (math.isfinite(low) and math.isfinite(high)):
            raise TransferkitError(f"{label}: the range {low}..{high} must be finite.")
        if low >= high:
            raise TransferkitError(f"{label}: the range {low}..{high} is empty: low must be below high (a single "
                                   "value is written as a plain number).")
        if dim.log and low <= 0:
            raise TransferkitError(f"{label}: a log range must start above 0 (got {low}).")
        if kind is int:
            if low != int(low) or high != int(high):
                raise TransferkitError(f"{label} takes whole numbers: the range {low}..{high} must be too.")
            return Range(int(low), int(high), dim.log)
        return Range(float(low), float(high), dim.log)
    if kind is float:  # YAML reads 1e-5 (no dot) as a string
        dim = [number(label, v) if isinstance(v, str) else v for v in dim] if isinstance(dim, (list, tuple)) else \
            number(label, dim) if isinstance(dim, str) else dim
    if isinstance(dim, (list, tuple)):
        if not dim:
            raise TransferkitError(f"{label}: the list of choices is empty; give at least one.")
        for value in dim:
            check_value(label, value, kind)
        if len(set(map(repr, dim))) != len(dim):
            raise TransferkitError(f"{label}: the choices {list(dim)} hold a value twice.")
        return tuple(dim)
    check_value(label, dim, kind)
    return dim


def number(label: str, value: Any) -> float:
    """A YAML number (``1e-5`` without a dot reads as a string in YAML 1.1) as a float, or one line."""
    if isinstance(value, bool):
        raise TransferkitError(f"{label}: {value!r} is not a number.")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TransferkitError(f"{label}: {value!r} is not a number.") from None


def check_value(label: str, value: Any, kind: Any) -> None:
    """Refuse a choice or fixed value whose type does not suit the option."""
    ok = {bool: lambda v: isinstance(v, bool), int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
          str: lambda v: isinstance(v, str)}.get(kind, lambda v: isinstance(v, (bool, int, float, str)))
    if not ok(value):
        raise TransferkitError(f"{label}: {value!r} is not a {getattr(kind, '__name__', 'plain value')}.")


def space_for(strategy: str, config_cls: type, profile: str | None, changes: dict[str, Any] | None = None,
              where: str = "") -> tuple[dict[str, Dimension], dict[str, Any]]:
    """The dimensions searched for ``strategy`` and the options fixed by ``changes`` (from the YAML file), checked
    against the config's options."""
    types = option_types(config_cls)
    space = {name: check_dimension(strategy, name, dim, types.get(name), where)
             for name, dim in declared_space(config_cls, profile).items()}
    fixed: dict[str, Any] = {}
    for name, dim in (changes or {}).items():
        if name not in types:
            raise TransferkitError(f"{where}{strategy} has no option {name!r}{closest(name, list(types))}.")
        space.pop(name, None)
        if dim is None:
            continue
        checked = check_dimension(strategy, name, dim, types[name], where)
        if isinstance(checked, (Range, tuple)):
            space[name] = checked
        else:
            fixed[name] = checked
    if not space:
        raise TransferkitError(f"{where}{strategy}: nothing is left to search (every option is fixed or left out).")
    return space, fixed


def read_space_file(path: str | Path | dict[str, Any] | None, strategies: list[str]) -> dict[str, dict[str, Any]]:
    """The YAML file's changes per strategy (``{}`` for none); a strategy not among ``strategies`` (those searched)
    or not a mapping is refused in one line naming the file."""
    if path is None:
        return {}
    if isinstance(path, dict):
        raw, where = path, "search space: "
    else:
        import yaml

        p = Path(path)
        where = f"{p}: "
        if not p.is_file():
            raise TransferkitError(f"Search space file {p} " + ("is a folder: give the YAML file." if p.is_dir()
                                                                else "does not exist."))
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise TransferkitError(f"{where}not readable YAML ({str(err).splitlines()[0]}).") from None
        raw = raw or {}
    if not isinstance(raw, dict):
        raise TransferkitError(f"{where}the file must map strategy names to their options, e.g. 'finetune: {{lr: "
                               "{low: 1.0e-5, high: 1.0e-3, log: true}}'.")
    for name, changes in raw.items():
        if name not in strategies:
            raise TransferkitError(f"{where}strategy {name!r} is not searched here{closest(name, strategies)}; "
                                   f"searched: {', '.join(strategies)}.")
        if changes is not None and not isinstance(changes, dict):
            raise TransferkitError(f"{where}{name} must map options to ranges, choices or values.")
    return {name: changes or {} for name, changes in raw.items()}
