"""Backbone families (see :mod:`.base`); importing this package registers the built-in ones."""

from .base import (
    BackboneFamily,
    Preprocessing,
    Scorer,
    family_by_name,
    family_for_model_type,
    register_family,
    supported_families,
)
from .dual_encoder import DualEncoderFamily
from .generative import GenerativeFamily

__all__ = [
    "BackboneFamily",
    "DualEncoderFamily",
    "GenerativeFamily",
    "Preprocessing",
    "Scorer",
    "family_by_name",
    "family_for_model_type",
    "register_family",
    "supported_families",
]
