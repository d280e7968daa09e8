"""Data sources -> labelled examples -> splits -> model input prepared once per run (decoded images, token ids,
audio windows)."""

from .sources import AudioSet, ImageSet, Splits, load_splits
from .text import TextSet, load_text_splits

__all__ = ["AudioSet", "ImageSet", "Splits", "TextSet", "load_splits", "load_text_splits"]
