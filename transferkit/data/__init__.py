"""Data sources -> labelled image lists -> splits -> images decoded once per run."""

from .sources import ImageSet, Splits, load_splits

__all__ = ["ImageSet", "Splits", "load_splits"]
