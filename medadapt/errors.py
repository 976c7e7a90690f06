"""Exceptions raised by medadapt. Every one carries a message that names the problem."""

from __future__ import annotations


class MedAdaptError(Exception):
    """Base class of all medadapt errors."""


class UnsupportedBackboneError(MedAdaptError, ValueError):
    """The model (or a built-in tiny model name) is not one a registered backbone family can adapt."""


class DomainError(MedAdaptError, ValueError):
    """A domain is unknown, duplicated or badly specified."""


class AdapterError(MedAdaptError, ValueError):
    """An adapter is unknown, duplicated, of the wrong kind or built for another base model."""


class ImageError(MedAdaptError, ValueError):
    """An input image cannot be decoded or has an unsupported shape or mode."""


class StageFileError(MedAdaptError, ValueError):
    """A saved stage (manifest or adapter folder) is missing, corrupted or does not match."""


class BaseMismatchError(StageFileError):
    """A save was made for a different base model than the one given."""


class RoutingError(MedAdaptError, ValueError):
    """Routing cannot be fitted or used (no trained domains, no router, bad threshold...)."""


class ConfigError(MedAdaptError, ValueError):
    """A run configuration is invalid (unknown key, bad value, unreadable file)."""


class RehearsalError(MedAdaptError, ValueError):
    """Invalid rehearsal buffer configuration, input or saved state."""


class DataError(MedAdaptError, ValueError):
    """A dataset, its configuration or its contents is invalid."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A data file or folder named by the configuration does not exist."""


class MissingExtraError(MedAdaptError, ImportError):
    """An optional dependency (an extra such as ``medadapt[dicom]``) is not installed."""


class SaveLockedError(MedAdaptError, RuntimeError):
    """Another process (named in the message) is writing the same save folder or output_dir."""


class StorageError(MedAdaptError, OSError):
    """A save or checkpoint could not be written (disk full, read-only folder, permission denied)."""


class CheckpointError(StageFileError):
    """A training checkpoint is incomplete or fails verification, so a run cannot resume from it."""


class TrainingError(MedAdaptError, RuntimeError):
    """Training cannot go on (e.g. the loss became NaN or infinite)."""


class HubError(MedAdaptError, RuntimeError):
    """The Hugging Face Hub cannot be used for this operation (offline mode, unreachable)."""


class UnsafeFolderError(StageFileError):
    """A folder holds something medadapt refuses to follow or touch (a symlink, FIFO or folder where its own
    lock file or journal belongs, or a journal naming paths outside the folder); nothing was changed."""


class InterruptedSaveError(StageFileError):
    """A folder holds a save interrupted in the middle of swapping folders; a reader does not repair it
    (``medadapt recover FOLDER``, or ``recover=True`` by the folder's owner, does)."""


class InputError(MedAdaptError, ValueError):
    """An argument of a call (questions, max_new_tokens, ...) has the wrong type or value."""


class ServingError(MedAdaptError, RuntimeError):
    """A call conflicts with what another thread does with the same model (training while serving)."""


class MetricError(MedAdaptError, ValueError):
    """Inputs a metric cannot score (accuracy matrix, labels and probabilities, VQA answers)."""


class FederationError(MedAdaptError, RuntimeError):
    """A federated run cannot go on, or a site refuses a round (wrong base, missing data, too few sites)."""
