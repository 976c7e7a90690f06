"""Data loading for medadapt: per-domain datasets from npz, image folders, Hugging Face
datasets (on disk, on the Hub or in memory), generic VQA tables (``vqa``), VQA-RAD (organ recognition, or questions and answers), DICOM folders, or built-in synthetic
modalities."""

from .base import (
    BUILTIN_FORMATS,
    DataConfig,
    DataError,
    DataNotFoundError,
    DomainData,
    ImageLabelDataset,
)
from .loaders import load_domain, register_loader, registered_formats
from . import dicom as _dicom_format  # noqa: F401  (registers the ``dicom`` format)
from .files import BadFilesWarning, ImageFiles
from .synthetic import SYNTHETIC_KINDS, default_synthetic_domains
from .vqa import OPEN_LABEL, VQADataset
from . import vqa_table as _vqa_table_format  # noqa: F401  (registers the generic ``vqa`` format)
from .vqa_rad import VQA_RAD_HUB_ID, VQA_RAD_SPLITS, VQASample, load_vqa_rad

__all__ = [
    "BUILTIN_FORMATS",
    "BadFilesWarning",
    "ImageFiles",
    "DataConfig",
    "DataError",
    "DataNotFoundError",
    "DomainData",
    "ImageLabelDataset",
    "OPEN_LABEL",
    "VQADataset",
    "VQASample",
    "VQA_RAD_HUB_ID",
    "VQA_RAD_SPLITS",
    "load_vqa_rad",
    "SYNTHETIC_KINDS",
    "default_synthetic_domains",
    "load_domain",
    "register_loader",
    "registered_formats",
]
