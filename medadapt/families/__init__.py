"""Backbone families (see :mod:`.base`); importing this package registers the built-in ones."""

from .base import (
    BackboneFamily,
    Preprocessing,
    Scorer,
    family_by_name,
    family_for_model,
    family_for_model_type,
    family_for_source,
    register_family,
    supported_families,
)
from .dual_encoder import DualEncoderFamily
from .generative import GenerativeFamily
from .open_clip import OpenClipFamily, open_clip_backbone

__all__ = [
    "BackboneFamily",
    "DualEncoderFamily",
    "GenerativeFamily",
    "OpenClipFamily",
    "Preprocessing",
    "Scorer",
    "family_by_name",
    "family_for_model",
    "family_for_model_type",
    "family_for_source",
    "open_clip_backbone",
    "register_family",
    "supported_families",
]
