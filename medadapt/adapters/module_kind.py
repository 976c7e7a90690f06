"""Adapter kinds whose adapter is one ``nn.Module`` kept in the model's module dict (prompts, heads).

The family's scorer builds such a module (it knows the towers' sizes and the domain's labels;
:meth:`~medadapt.families.base.Scorer.build_adapter`), or, for a config read from a stage folder,
the kind builds it from the resolved config. Its tensors are the module's state dict and its
config file is the config's JSON. A kind subclasses :class:`ModuleKind`, names its module class and
says when a config is resolved.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ..errors import AdapterError
from .kind import AdapterKind

if TYPE_CHECKING:  # pragma: no cover
    from .registry import AdapterSet


class ModuleKind(AdapterKind):
    """An adapter kind kept as one module in ``AdapterSet.prompts`` (see the module docstring)."""

    module_class: ClassVar[type[nn.Module]]
    built_by_family = True
    stacks = False

    def resolved(self, spec: Any) -> bool:
        """Whether ``spec`` holds every size needed to build the module without the family (a saved config)."""
        raise NotImplementedError

    def create(self, adapters: "AdapterSet", name: str, spec: Any, module: nn.Module | None = None) -> None:
        if module is not None:
            built = module  # built by the family's scorer for this base and domain
        elif self.resolved(spec):
            built = self.module_class(spec)  # a resolved config (read from a stage folder): weights follow
        else:
            raise AdapterError(f"a {self.name} adapter is built by the backbone family's scorer; add it to a domain through the model (add_domain).")
        built.requires_grad_(False)
        adapters.prompts[name] = built.to(adapters.device)

    def owns(self, adapters: "AdapterSet", name: str) -> bool:
        return name in adapters.prompts and isinstance(adapters.prompts[name], self.module_class)

    def remove(self, adapters: "AdapterSet", name: str) -> None:
        del adapters.prompts[name]

    def parameters(self, adapters: "AdapterSet", name: str) -> list[nn.Parameter]:
        return list(adapters.prompts[name].parameters())

    def config(self, adapters: "AdapterSet", name: str) -> Any:
        return adapters.prompts[name].config

    def state_dict(self, adapters: "AdapterSet", name: str) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in adapters.prompts[name].state_dict().items()}

    def load_state_dict(self, adapters: "AdapterSet", name: str, weights: dict[str, torch.Tensor]) -> None:
        try:
            adapters.prompts[name].load_state_dict(weights, strict=True)
        except RuntimeError as exc:
            raise AdapterError(f"{self.name} weights do not match their config: {exc}") from exc

    def write_config(self, adapters: "AdapterSet", name: str, folder: Path, base_source: str | None, base_revision: str | None) -> None:
        (folder / self.files[0]).write_text(adapters.prompts[name].config.to_json() + "\n", encoding="utf-8")
