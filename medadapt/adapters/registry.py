"""The adapters of one model, over the registered adapter kinds (:mod:`.kind`).

:class:`AdapterSet` holds every adapter of one model (the peft LoRA bank on the frozen base and the
prompt modules) and answers "which kind is adapter ``name``" by asking each kind.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from ..errors import AdapterError
from .kind import AdapterKind, adapter_kind, adapter_kinds, kind_for_spec, read_json, read_weights, register_adapter_kind, registered_kinds
from .gate import AdapterGate
from .lora import LoraBank

__all__ = ["AdapterKind", "AdapterSet", "adapter_kind", "adapter_kinds", "kind_for_spec", "read_json", "read_weights", "register_adapter_kind"]


class AdapterSet:
    """Every adapter of one model: peft LoRAs on the frozen base plus prompt modules.

    ``prompts`` is the model's registered ``nn.ModuleDict`` (so ``.to()`` and ``parameters()`` see
    them); ``trainable`` names the adapters whose parameters receive gradients. ``gate`` orders
    concurrent calls and changes (see :mod:`.gate`): every change below goes through it, and making
    adapters trainable marks the calling thread as training.
    """

    def __init__(self, base: nn.Module, prompts: nn.ModuleDict) -> None:
        self.lora = LoraBank(base)
        self.prompts = prompts
        self.trainable: set[str] = set()
        self.version = 0  # bumped whenever an adapter is added, removed or its weights are loaded
        self.vision_tower: nn.Module | None = None  # the family's image tower (set by the model)
        self.gate = AdapterGate()
        self.kinds: dict[str, AdapterKind] = {}  # adapter name -> its kind, recorded when it is created

    def kind_of(self, name: str) -> AdapterKind:
        """The kind of adapter ``name``; :class:`AdapterError` when there is none."""
        kind = self.kinds.get(name) if isinstance(name, str) else None
        if kind is None:
            raise AdapterError(f"unknown adapter {name!r}.")
        return kind

    def __contains__(self, name: str) -> bool:
        return name in self.kinds

    def names_of_kind(self, kind: AdapterKind) -> list[str]:
        return [n for n in self.lora.names() if kind.owns(self, n)] + [n for n in self.prompts if kind.owns(self, n)]

    @property
    def device(self) -> torch.device:
        """Where the base's weights (and so new adapters) live."""
        return next(self.lora.base.parameters()).device

    def create(self, name: str, spec: Any, module: nn.Module | None = None) -> AdapterKind:
        """Create adapter ``name`` from ``spec`` (``module``: built by the family, see :attr:`AdapterKind.built_by_family`)."""
        kind = kind_for_spec(spec)
        with self.gate.changing():
            kind.create(self, name, spec, module)
            self.kinds[name] = kind
            self.version += 1
            self.set_trainable(sorted(self.trainable))
        return kind

    def install(self, name: str, spec: Any, weights: dict[str, torch.Tensor], what: str) -> AdapterKind:
        """Create ``name`` from ``spec`` with saved ``weights`` (nothing is left behind when they do not fit)."""
        kind = kind_for_spec(spec)
        with self.gate.changing():
            try:
                kind.install(self, name, spec, weights, what)
                self.kinds[name] = kind
            finally:
                self.version += 1
        return kind

    def remove(self, name: str) -> None:
        with self.gate.changing():
            self.kind_of(name).remove(self, name)
            del self.kinds[name]
            self.trainable.discard(name)
            self.version += 1
            self.set_trainable(sorted(self.trainable))  # peft makes the adapter it activates instead trainable

    def parameters(self, name: str) -> list[nn.Parameter]:
        return self.kind_of(name).parameters(self, name)

    def load_state_dict(self, name: str, weights: dict[str, torch.Tensor]) -> None:
        with self.gate.changing():
            self.kind_of(name).load_state_dict(self, name, weights)
            self.version += 1

    def set_trainable(self, names: Sequence[str]) -> None:
        """Exactly the adapters ``names`` receive gradients.

        A non-empty set marks this thread as training the model until it is emptied again (refused
        while other threads serve it; see :mod:`.gate`)."""
        for n in names:
            self.kind_of(n)
        if set(names) != self.trainable:
            self.gate.set_training(bool(names))
        self.trainable = set(names)
        for kind in registered_kinds():
            kind.set_trainable(self, names)

    @contextmanager
    def active(self, names: str | Sequence[str] | None) -> Iterator[None]:
        """Run the body with the LoRA adapters ``names`` active on the base (``None``: the frozen base)."""
        with self.lora.activate(names or None):
            yield

    @contextmanager
    def frozen_base(self) -> Iterator[None]:
        """Run the body on the frozen base alone (no adapter active)."""
        with self.lora.activate(None):
            yield
