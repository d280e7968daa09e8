"""Shipping a model out of transferkit: ONNX export with measured parity (:mod:`transferkit.export.onnx`)."""

from __future__ import annotations

FORMATS = ("onnx",)
