"""The head adapter kind: a linear head over image features beside the label-prompt prior (see :mod:`.head`).

The family's scorer builds a head (it knows the image feature size and the domain's labels;
:meth:`~medadapt.families.base.Scorer.build_adapter`), so a family without image features (a
generative base) refuses it with the reason. A head serves one domain's labels: at most one serves
a row (``stacks = False``, the slot a prompt adapter takes), on top of any LoRA stacked with it. The
trainer initialises it from the domain's training data before its first step (:meth:`HeadKind.initialise`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .head import HEAD_CONFIG_NAME, HEAD_WEIGHTS_NAME, HeadAdapter, HeadConfig, initial_head
from .kind import register_adapter_kind
from .module_kind import ModuleKind

if TYPE_CHECKING:  # pragma: no cover
    from .registry import AdapterSet


class HeadKind(ModuleKind):
    """A linear head over the image tower's features, started from the text prior."""

    name = "head"
    files = (HEAD_CONFIG_NAME, HEAD_WEIGHTS_NAME)
    display_name = "medadapt HeadConfig"
    card_name = "linear head"
    card_tags = ("linear-head",)
    module_class = HeadAdapter
    initialised_from_data = True
    serves_shared = False

    def accepts(self, spec: Any) -> bool:
        return isinstance(spec, HeadConfig)

    def config_from_dict(self, data: dict[str, Any], what: str) -> HeadConfig:
        return HeadConfig.from_dict(data)

    def config_from_settings(self, settings: Any, default_targets: list[str] | str) -> HeadConfig:
        return HeadConfig(init=settings.head_init)

    def resolved(self, spec: Any) -> bool:
        return bool(spec.resolved)

    def initialise(self, adapters: "AdapterSet", name: str, features: torch.Tensor, zero_shot: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        """Start head ``name`` from its domain's training data (see :func:`medadapt.adapters.head.initial_head`)."""
        with adapters.gate.changing():
            decided = initial_head(adapters.prompts[name], features, zero_shot, labels)
            adapters.version += 1
        return decided


HEAD = register_adapter_kind(HeadKind())
