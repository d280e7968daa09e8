"""Backbones: one protocol (:class:`Backbone`), one registry (:func:`create_backbone`), several weight sources."""

from .audio import AUDIO_BACKBONES, AudioBackbone, AudioPreprocessConfig
from .protocol import Backbone, BackboneSpec, ImageBackbone, PreprocessConfig
from .registry import BACKBONES, DEFAULT_BACKBONE, create_backbone, list_backbones, resolve
from .text import DEFAULT_TEXT_BACKBONE, TEXT_BACKBONES, TextBackbone, TextPreprocessConfig

__all__ = [
    "AUDIO_BACKBONES",
    "AudioBackbone",
    "AudioPreprocessConfig",
    "BACKBONES",
    "DEFAULT_BACKBONE",
    "DEFAULT_TEXT_BACKBONE",
    "TEXT_BACKBONES",
    "TextBackbone",
    "TextPreprocessConfig",
    "Backbone",
    "BackboneSpec",
    "ImageBackbone",
    "PreprocessConfig",
    "create_backbone",
    "list_backbones",
    "resolve",
]
