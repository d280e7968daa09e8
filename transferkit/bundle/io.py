"""Moved to :mod:`transferkit.io`. Kept as a re-export only while ``transferkit/comparison.py`` imports from here."""

from ..io import atomic_dir, atomic_write_bytes, atomic_write_text, jsonable as _jsonable, write_json  # noqa: F401
