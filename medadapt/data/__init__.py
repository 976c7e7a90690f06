"""Data loading for medadapt: per-domain datasets from npz, image folders, Hugging Face
datasets, VQA-RAD organ recognition, or built-in synthetic modalities."""

from .base import (
    BUILTIN_FORMATS,
    DataConfig,
    DataError,
    DataNotFoundError,
    DomainData,
    ImageLabelDataset,
)
from .loaders import load_domain, register_loader, registered_formats
from .synthetic import SYNTHETIC_KINDS, default_synthetic_domains

__all__ = [
    "BUILTIN_FORMATS",
    "DataConfig",
    "DataError",
    "DataNotFoundError",
    "DomainData",
    "ImageLabelDataset",
    "SYNTHETIC_KINDS",
    "default_synthetic_domains",
    "load_domain",
    "register_loader",
    "registered_formats",
]
