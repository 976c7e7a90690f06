"""The head adapter kind: a linear head over image features beside the label-prompt prior (see :mod:`.head`).

The family's scorer builds a head (it knows the image feature size and the domain's labels;
:meth:`~medadapt.families.base.Scorer.build_adapter`), so a family without image features (a
generative base) refuses it with the reason. A head serves one domain's labels: at most one serves
a row (``stacks = False``, the slot a prompt adapter takes), on top of any LoRA stacked with it. The
trainer initialises it from the domain's training data before its first step (:meth:`HeadKind.initialise`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import AdapterError
from .head import HEAD_CONFIG_NAME, HEAD_WEIGHTS_NAME, HeadAdapter, HeadConfig, initial_head
from .kind import AdapterKind, register_adapter_kind

if TYPE_CHECKING:  # pragma: no cover
    from .registry import AdapterSet


class HeadKind(AdapterKind):
    """A linear head over the image tower's features, started from the text prior."""

    name = "head"
    files = (HEAD_CONFIG_NAME, HEAD_WEIGHTS_NAME)
    display_name = "medadapt HeadConfig"
    card_name = "linear head"
    card_tags = ("linear-head",)
    stacks = False
    built_by_family = True
    initialised_from_data = True
    serves_shared = False

    def accepts(self, spec: Any) -> bool:
        return isinstance(spec, HeadConfig)

    def config_from_dict(self, data: dict[str, Any], what: str) -> HeadConfig:
        return HeadConfig.from_dict(data)

    def config_from_settings(self, settings: Any, default_targets: list[str] | str) -> HeadConfig:
        return HeadConfig(init=settings.head_init)

    def create(self, adapters: "AdapterSet", name: str, spec: Any, module: nn.Module | None = None) -> None:
        if module is not None:
            head = module  # built by the family's scorer for this base and domain
        elif spec.resolved:
            head = HeadAdapter(spec)  # a resolved config (read from a stage folder): weights follow
        else:
            raise AdapterError("a head adapter is built by the backbone family's scorer; add it to a domain through the model (add_domain).")
        head.requires_grad_(False)
        adapters.prompts[name] = head.to(adapters.device)

    def owns(self, adapters: "AdapterSet", name: str) -> bool:
        return name in adapters.prompts and isinstance(adapters.prompts[name], HeadAdapter)

    def remove(self, adapters: "AdapterSet", name: str) -> None:
        del adapters.prompts[name]

    def parameters(self, adapters: "AdapterSet", name: str) -> list[nn.Parameter]:
        return list(adapters.prompts[name].parameters())

    def config(self, adapters: "AdapterSet", name: str) -> HeadConfig:
        return adapters.prompts[name].config

    def state_dict(self, adapters: "AdapterSet", name: str) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in adapters.prompts[name].state_dict().items()}

    def load_state_dict(self, adapters: "AdapterSet", name: str, weights: dict[str, torch.Tensor]) -> None:
        try:
            adapters.prompts[name].load_state_dict(weights, strict=True)
        except RuntimeError as exc:
            raise AdapterError(f"head weights do not match their config: {exc}") from exc

    def write_config(self, adapters: "AdapterSet", name: str, folder: Path, base_source: str | None, base_revision: str | None) -> None:
        (folder / self.files[0]).write_text(adapters.prompts[name].config.to_json() + "\n", encoding="utf-8")

    def initialise(self, adapters: "AdapterSet", name: str, features: torch.Tensor, zero_shot: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        """Start head ``name`` from its domain's training data (see :func:`medadapt.adapters.head.initial_head`)."""
        with adapters.gate.changing():
            decided = initial_head(adapters.prompts[name], features, zero_shot, labels)
            adapters.version += 1
        return decided


HEAD = register_adapter_kind(HeadKind())
