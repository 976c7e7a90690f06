"""medadapt: continual adaptation of frozen medical vision-language models with per-domain adapters."""

from .version import __version__

from .adapters import MergeSpec  # noqa: E402
from .adapters.head import HeadConfig  # noqa: E402
from .adapters.prompt import PromptConfig  # noqa: E402
from .domains import Domain  # noqa: E402
from .errors import (  # noqa: E402
    AdapterError,
    BaseMismatchError,
    CheckpointError,
    ConfigError,
    DataError,
    DataNotFoundError,
    DomainError,
    FederationError,
    HubError,
    ImageError,
    MedAdaptError,
    MissingExtraError,
    RehearsalError,
    RoutingError,
    SaveLockedError,
    ServingError,
    StageFileError,
    StorageError,
    TrainingError,
    UnsupportedBackboneError,
)
from .families import supported_families  # noqa: E402
from .model import ContinualVLM  # noqa: E402
from .routing import RoutedPrediction  # noqa: E402

__all__ = [
    "AdapterError",
    "BaseMismatchError",
    "CheckpointError",
    "ConfigError",
    "ContinualVLM",
    "DataError",
    "DataNotFoundError",
    "Domain",
    "DomainError",
    "FederationError",
    "HeadConfig",
    "HubError",
    "ImageError",
    "MedAdaptError",
    "MergeSpec",
    "MissingExtraError",
    "PromptConfig",
    "RehearsalError",
    "RoutedPrediction",
    "RoutingError",
    "SaveLockedError",
    "ServingError",
    "StageFileError",
    "StorageError",
    "TrainingError",
    "UnsupportedBackboneError",
    "__version__",
    "supported_families",
]
