"""Shipping a model out of transferkit: ONNX export with measured parity (:mod:`transferkit.export.onnx` for
classifiers, :mod:`transferkit.export.detection` for detectors) and running an exported folder
(:mod:`transferkit.export.runtime`)."""

from __future__ import annotations

FORMATS = ("onnx",)
