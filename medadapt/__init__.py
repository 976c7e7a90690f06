"""medadapt: continual adaptation of frozen medical vision-language models with per-domain adapters."""

__version__ = "0.1.0"

from .adapters.prompt import PromptConfig  # noqa: E402
from .domains import Domain  # noqa: E402
from .errors import (  # noqa: E402
    AdapterError,
    BaseMismatchError,
    DomainError,
    ImageError,
    MedAdaptError,
    StageFileError,
    UnsupportedBackboneError,
)
from .model import ContinualVLM  # noqa: E402
from .routing import RoutedPrediction, RoutingError  # noqa: E402

__all__ = [
    "AdapterError",
    "BaseMismatchError",
    "ContinualVLM",
    "Domain",
    "DomainError",
    "ImageError",
    "MedAdaptError",
    "PromptConfig",
    "RoutedPrediction",
    "RoutingError",
    "StageFileError",
    "UnsupportedBackboneError",
    "__version__",
]
