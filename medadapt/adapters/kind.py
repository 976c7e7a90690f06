"""The adapter kind interface and the registry of kinds (see :mod:`.registry` for the adapters of one model).

An *adapter kind* (LoRA, prompt, ...) knows its config class, the files of its stage folder, and
how to create, save, read, install, weigh and remove one adapter. Kinds register themselves with
:func:`register_adapter_kind`, and what differs between them is asked through their capability
flags (:attr:`AdapterKind.stacks`, :attr:`AdapterKind.built_by_family`,
:attr:`AdapterKind.initialised_from_data`, :attr:`AdapterKind.serves_shared`), so a new kind is one module
plus one registration. A kind whose module the backbone family builds (a prompt adapter) receives
that module ready-made: nothing here imports the families.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from .._io import loads_json
from ..errors import AdapterError, StageFileError
from .checks import check_finite

AdapterSet = Any  # the model's adapters (medadapt.adapters.registry.AdapterSet, which imports this module)


class AdapterKind(ABC):
    """One way of adapting a frozen base (LoRA, learnable prompts...)."""

    name: str = ""
    files: tuple[str, str] = ("", "")  # (config file, weights file) of a stage folder
    display_name: str = ""
    card_name: str = ""  # short name in model cards ("LoRA", "prompt")
    card_tags: tuple[str, ...] = ()
    stacks: bool = True  # any number of adapters of this kind can serve a row together (False: at most one)
    built_by_family: bool = False  # the family's scorer builds its module (Scorer.build_adapter); create receives it
    initialised_from_data: bool = False  # the trainer calls initialise() with the domain's training features first
    serves_shared: bool = True  # False: tied to one domain's labels, so it cannot be a shared adapter

    @abstractmethod
    def accepts(self, spec: Any) -> bool:
        """Whether ``spec`` (a config object) describes an adapter of this kind."""

    @abstractmethod
    def config_from_dict(self, data: dict[str, Any], what: str) -> Any:
        """The config object saved as ``data`` (unknown keys dropped)."""

    @abstractmethod
    def create(self, adapters: AdapterSet, name: str, spec: Any, module: nn.Module | None = None) -> None:
        """Create adapter ``name`` from ``spec`` (its weights start as the kind initialises them);
        ``module`` is the ready-made module of a kind the family builds."""

    @abstractmethod
    def config_from_settings(self, settings: Any, default_targets: list[str] | str) -> Any:
        """The config object a run configuration's adapter settings (``AdapterSettings``) describe."""

    @abstractmethod
    def owns(self, adapters: AdapterSet, name: str) -> bool:
        """Whether ``adapters`` holds an adapter ``name`` of this kind."""

    @abstractmethod
    def remove(self, adapters: AdapterSet, name: str) -> None: ...

    @abstractmethod
    def parameters(self, adapters: AdapterSet, name: str) -> list[nn.Parameter]: ...

    @abstractmethod
    def config(self, adapters: AdapterSet, name: str) -> Any:
        """The config object of adapter ``name`` (what the stage folder's config file holds)."""

    @abstractmethod
    def state_dict(self, adapters: AdapterSet, name: str) -> dict[str, torch.Tensor]:
        """The tensors saved in the stage folder's weights file."""

    @abstractmethod
    def load_state_dict(self, adapters: AdapterSet, name: str, weights: dict[str, torch.Tensor]) -> None:
        """Load saved tensors into the existing adapter ``name``; raises :class:`AdapterError` on a mismatch."""

    @abstractmethod
    def write_config(self, adapters: AdapterSet, name: str, folder: Path, base_source: str | None, base_revision: str | None) -> None:
        """Write the stage folder's config file (``files[0]``) into ``folder``."""

    def set_trainable(self, adapters: AdapterSet, names: Sequence[str]) -> None:
        """Make the adapters of this kind in ``names`` trainable and every other one frozen."""
        for name in adapters.names_of_kind(self):
            for param in self.parameters(adapters, name):
                param.requires_grad_(name in names)

    def initialise(self, adapters: AdapterSet, name: str, features: torch.Tensor, zero_shot: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        """Start adapter ``name`` from its domain's training data (kinds with :attr:`initialised_from_data`)."""
        raise AdapterError(f"{self.name} adapters are not initialised from data.")

    # -- stage folders -------------------------------------------------------------------------
    def read(self, folder: Path, what: str) -> tuple[Any, dict[str, torch.Tensor]]:
        """Config object and weights of one stage folder of this kind (weights must be finite)."""
        config = self.config_from_dict(read_json(folder / self.files[0], what), what)
        weights = read_weights(folder / self.files[1], what)
        check_finite(weights, what)
        return config, weights

    def install(self, adapters: AdapterSet, name: str, spec: Any, weights: dict[str, torch.Tensor], what: str) -> None:
        """Create ``name`` from ``spec`` and load ``weights``; on a mismatch nothing is left behind."""
        self.create(adapters, name, spec)
        try:
            self.load_state_dict(adapters, name, weights)
        except (AdapterError, RuntimeError) as exc:
            self.remove(adapters, name)
            raise StageFileError(f"{what}: weights do not fit this base model: {exc}") from exc
        self.set_trainable(adapters, sorted(adapters.trainable))


_KINDS: dict[str, AdapterKind] = {}


def register_adapter_kind(kind: AdapterKind) -> AdapterKind:
    """Register an adapter kind under ``kind.name``."""
    _KINDS[kind.name] = kind
    return kind


def adapter_kind(name: str) -> AdapterKind:
    """The registered kind called ``name``; a clear error lists the known ones."""
    if name not in _KINDS:
        raise AdapterError(f"unknown adapter kind {name!r}; known kinds: {sorted(_KINDS)}.")
    return _KINDS[name]


def adapter_kinds() -> list[str]:
    """Names of the registered adapter kinds."""
    return sorted(_KINDS)


def registered_kinds() -> list[AdapterKind]:
    """The registered kinds, in registration order."""
    return list(_KINDS.values())


def kind_for_spec(spec: Any) -> AdapterKind:
    """The kind whose config class ``spec`` is; a clear error otherwise."""
    for kind in _KINDS.values():
        if kind.accepts(spec):
            return kind
    names = " or a ".join(k.display_name or k.name for k in _KINDS.values())
    raise AdapterError(f"an adapter must be a {names}, got {type(spec).__name__}.")


def read_weights(path: Path, what: str) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, or a :class:`StageFileError` naming it."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise StageFileError(f"{what}: cannot read {path.name}: {exc}") from exc


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from a file, or a :class:`StageFileError` naming it."""
    try:
        data = loads_json(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StageFileError(f"{what}: cannot read {path.name}: {exc}") from exc
    if not isinstance(data, dict):
        raise StageFileError(f"{what}: {path.name} does not hold a JSON object.")
    return data
