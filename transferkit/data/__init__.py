"""Data sources -> labelled examples -> splits -> model input prepared once per run (decoded images, token ids)."""

from .sources import ImageSet, Splits, load_splits
from .text import TextSet, load_text_splits

__all__ = ["ImageSet", "Splits", "TextSet", "load_splits", "load_text_splits"]
