"""The LoRA adapter kind: peft LoRA on the frozen base, saved as a standard peft folder.

Besides a ``peft.LoraConfig``, a :class:`MergeSpec` creates a LoRA as peft's weighted combination
of existing LoRAs (see :mod:`medadapt.merging`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from peft import LoraConfig
from torch import nn

from ..errors import AdapterError, StageFileError
from .checks import check_lora_dict, refuse_modules_to_save
from .kind import AdapterKind, register_adapter_kind

if TYPE_CHECKING:  # pragma: no cover
    from .registry import AdapterSet

LORA_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass
class MergeSpec:
    """A LoRA built as peft's ``add_weighted_adapter`` combination of the LoRAs ``sources``."""

    sources: list[str]
    weights: list[float]
    method: str
    options: dict[str, Any] = field(default_factory=dict)


class LoraKind(AdapterKind):
    """LoRA through peft: one peft model on one frozen base, never a copy of it."""

    name = "lora"
    files = LORA_FILES
    display_name = "peft LoraConfig"
    card_name = "LoRA"
    card_tags = ("peft", "lora")

    def accepts(self, spec: Any) -> bool:
        return isinstance(spec, (LoraConfig, MergeSpec))

    def config_from_dict(self, data: dict[str, Any], what: str) -> LoraConfig:
        data = {k: v for k, v in data.items() if k in LoraConfig.__dataclass_fields__ and k != "peft_type"}
        check_lora_dict(data, what)
        try:
            return LoraConfig(**data)
        except (TypeError, ValueError) as exc:
            raise StageFileError(f"{what}: adapter_config.json is not a valid LoRA config: {exc}") from exc

    def config_from_settings(self, settings: Any, default_targets: list[str] | str) -> LoraConfig:
        targets = settings.target_modules or default_targets
        return LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                          target_modules=list(targets) if not isinstance(targets, str) else targets)

    def create(self, adapters: "AdapterSet", name: str, spec: Any, module: nn.Module | None = None) -> None:
        if isinstance(spec, MergeSpec):
            adapters.lora.add_weighted(name, spec.sources, spec.weights, spec.method, **spec.options)
            return
        refuse_modules_to_save(spec, f"adapter {name!r}")
        adapters.lora.add(name, spec)

    def owns(self, adapters: "AdapterSet", name: str) -> bool:
        return name in adapters.lora

    def remove(self, adapters: "AdapterSet", name: str) -> None:
        adapters.lora.remove(name)

    def parameters(self, adapters: "AdapterSet", name: str) -> list[nn.Parameter]:
        return adapters.lora.parameters(name)

    def config(self, adapters: "AdapterSet", name: str) -> LoraConfig:
        return adapters.lora.config(name)

    def state_dict(self, adapters: "AdapterSet", name: str) -> dict[str, torch.Tensor]:
        return adapters.lora.state_dict(name)

    def load_state_dict(self, adapters: "AdapterSet", name: str, weights: dict[str, torch.Tensor]) -> None:
        adapters.lora.load_state_dict(name, weights)

    def write_config(self, adapters: "AdapterSet", name: str, folder: Path, base_source: str | None, base_revision: str | None) -> None:
        config = copy.deepcopy(adapters.lora.config(name))
        config.base_model_name_or_path = base_source
        config.revision = base_revision
        for key, value in vars(config).items():  # peft keeps target_modules as a set: its order follows PYTHONHASHSEED
            if isinstance(value, (set, frozenset)):
                setattr(config, key, sorted(value))
        config.save_pretrained(str(folder))  # peft's own adapter_config.json

    def set_trainable(self, adapters: "AdapterSet", names: Sequence[str]) -> None:
        adapters.lora.set_trainable([n for n in names if n in adapters.lora])

    def install(self, adapters: "AdapterSet", name: str, spec: Any, weights: dict[str, torch.Tensor], what: str) -> None:
        """Strict and constant-time (see ``LoraBank.load``): every key and shape is checked before
        anything is injected, and a refused stage leaves the model as it was."""
        refuse_modules_to_save(spec, what, StageFileError)
        spec.base_model_name_or_path = None  # the manifest names the base; else peft warns it was "renamed"
        try:
            adapters.lora.load(name, spec, weights)
        except (AdapterError, RuntimeError) as exc:
            raise StageFileError(f"{what}: weights do not fit this base model: {exc}") from exc
        if name in adapters.trainable:  # a new adapter is frozen unless already named trainable
            self.set_trainable(adapters, sorted(adapters.trainable))


def lora_rank(config: LoraConfig) -> int:
    """The largest rank of a LoRA config (``r`` or its ``rank_pattern``)."""
    return max([config.r, *(config.rank_pattern or {}).values()])


def check_equal_ranks(configs: dict[str, LoraConfig], method: str) -> None:
    ranks = {n: lora_rank(c) for n, c in configs.items()}
    if len(set(ranks.values())) > 1:
        raise AdapterError(
            f"merge method {method!r} needs LoRAs of equal rank, got ranks {ranks}; use method='svd' (re-factorised "
            "at svd_rank) or method='cat' (rank = sum of ranks) to merge adapters of different ranks."
        )


LORA = register_adapter_kind(LoraKind())
