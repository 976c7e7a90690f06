"""The prompt adapter kind: learnable CoOp text context and VPT visual tokens (see :mod:`.prompt`).

Which texts and image tokens a prompt adapter rewrites depends on the backbone family, so the
family's scorer builds it (:meth:`~medadapt.families.base.Scorer.build_adapter`, called by the model)
and this kind receives the module; a family without prompt support refuses with a clear error.
At most one prompt adapter serves a row (``stacks = False``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import AdapterError
from .prompt import PROMPT_CONFIG_NAME, PROMPT_WEIGHTS_NAME, PromptAdapter, PromptConfig
from .kind import AdapterKind, register_adapter_kind

if TYPE_CHECKING:  # pragma: no cover
    from .registry import AdapterSet


class PromptKind(AdapterKind):
    """Learnable prompts: text context vectors plus optional visual prompt tokens."""

    name = "prompt"
    files = (PROMPT_CONFIG_NAME, PROMPT_WEIGHTS_NAME)
    display_name = "medadapt PromptConfig"
    card_name = "prompt"
    card_tags = ("prompt",)
    stacks = False
    built_by_family = True

    def accepts(self, spec: Any) -> bool:
        return isinstance(spec, PromptConfig)

    def config_from_dict(self, data: dict[str, Any], what: str) -> PromptConfig:
        return PromptConfig.from_dict(data)

    def config_from_settings(self, settings: Any, default_targets: list[str] | str) -> PromptConfig:
        return PromptConfig(n_ctx=settings.n_ctx, ctx_init=settings.ctx_init, n_visual_tokens=settings.n_visual_tokens)

    def create(self, adapters: "AdapterSet", name: str, spec: Any, module: nn.Module | None = None) -> None:
        if module is not None:
            prompt = module  # built by the family's scorer for this base and domain
        elif spec.n_ctx_tokens is not None and spec.text_dim is not None and spec.vision_dim is not None:
            prompt = PromptAdapter(spec)  # a resolved config (read from a stage folder): weights follow
        else:
            raise AdapterError("a prompt adapter is built by the backbone family's scorer; add it through the model (add_domain).")
        prompt.requires_grad_(False)
        adapters.prompts[name] = prompt.to(adapters.device)

    def owns(self, adapters: "AdapterSet", name: str) -> bool:
        return name in adapters.prompts and isinstance(adapters.prompts[name], PromptAdapter)

    def remove(self, adapters: "AdapterSet", name: str) -> None:
        del adapters.prompts[name]

    def parameters(self, adapters: "AdapterSet", name: str) -> list[nn.Parameter]:
        return list(adapters.prompts[name].parameters())

    def config(self, adapters: "AdapterSet", name: str) -> PromptConfig:
        return adapters.prompts[name].config

    def state_dict(self, adapters: "AdapterSet", name: str) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in adapters.prompts[name].state_dict().items()}

    def load_state_dict(self, adapters: "AdapterSet", name: str, weights: dict[str, torch.Tensor]) -> None:
        try:
            adapters.prompts[name].load_state_dict(weights, strict=True)
        except RuntimeError as exc:
            raise AdapterError(f"prompt weights do not match their config: {exc}") from exc

    def write_config(self, adapters: "AdapterSet", name: str, folder: Path, base_source: str | None, base_revision: str | None) -> None:
        (folder / self.files[0]).write_text(adapters.prompts[name].config.to_json() + "\n", encoding="utf-8")


PROMPT = register_adapter_kind(PromptKind())
