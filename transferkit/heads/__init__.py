"""Heads: what sits on top of a backbone's pooled features, and the classifier that joins the two."""

from .linear import Classifier, LinearHead, build_head

__all__ = ["Classifier", "LinearHead", "build_head"]
