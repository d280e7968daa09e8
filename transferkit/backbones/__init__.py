"""Backbones: one protocol (:class:`Backbone`), one registry (:func:`create_backbone`), several weight sources."""

from .protocol import Backbone, BackboneSpec, ImageBackbone, PreprocessConfig
from .registry import BACKBONES, DEFAULT_BACKBONE, create_backbone, list_backbones, resolve

__all__ = [
    "BACKBONES",
    "DEFAULT_BACKBONE",
    "Backbone",
    "BackboneSpec",
    "ImageBackbone",
    "PreprocessConfig",
    "create_backbone",
    "list_backbones",
    "resolve",
]
