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

__all__ = [
    "BackboneFamily",
    "DualEncoderFamily",
    "Preprocessing",
    "Scorer",
    "family_by_name",
    "family_for_model_type",
    "register_family",
    "supported_families",
]
