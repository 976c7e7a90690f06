"""The prompt adapter kind: learnable CoOp text context and VPT visual tokens (see :mod:`.prompt`).

Which texts and image tokens a prompt adapter rewrites depends on the backbone family, so the
family's scorer builds it (:meth:`~medadapt.families.base.Scorer.build_adapter`, called by the model)
and this kind receives the module; a family without prompt support refuses with a clear error.
At most one prompt adapter serves a row (``stacks = False``).
"""

from __future__ import annotations

from typing import Any

from .prompt import PROMPT_CONFIG_NAME, PROMPT_WEIGHTS_NAME, PromptAdapter, PromptConfig
from .kind import register_adapter_kind
from .module_kind import ModuleKind


class PromptKind(ModuleKind):
    """Learnable prompts: text context vectors plus optional visual prompt tokens."""

    name = "prompt"
    files = (PROMPT_CONFIG_NAME, PROMPT_WEIGHTS_NAME)
    display_name = "medadapt PromptConfig"
    card_name = "prompt"
    card_tags = ("prompt",)
    module_class = PromptAdapter

    def accepts(self, spec: Any) -> bool:
        return isinstance(spec, PromptConfig)

    def config_from_dict(self, data: dict[str, Any], what: str) -> PromptConfig:
        return PromptConfig.from_dict(data)

    def config_from_settings(self, settings: Any, default_targets: list[str] | str) -> PromptConfig:
        return PromptConfig(n_ctx=settings.n_ctx, ctx_init=settings.ctx_init, n_visual_tokens=settings.n_visual_tokens)

    def resolved(self, spec: Any) -> bool:
        return spec.n_ctx_tokens is not None and spec.text_dim is not None and spec.vision_dim is not None


PROMPT = register_adapter_kind(PromptKind())
