"""Prompt adapters: learnable text context (CoOp) and visual prompt tokens (VPT-shallow).

The text side replaces the words of the prompt template before the label with learnable vectors:
the text ``"<ctx_text> <label><suffix>"`` is tokenised as usual and, inside the text tower's token
embedding, the rows of the ``<ctx_text>`` tokens are swapped for the adapter's ``ctx`` parameter.
With ``ctx_init="template"`` the vectors start as the template words' own embeddings, so an
untrained prompt adapter reproduces the zero-shot model. The vision side prepends
``n_visual_tokens`` learnable tokens to the patch sequence right after the embeddings (after the
class token when there is one). Both work through forward hooks on the two embedding modules a
family names (see :mod:`medadapt.families.dual_encoder`, which also resolves and initialises new
prompt adapters).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterator
import warnings

import torch
from torch import nn

from ..errors import AdapterError

PROMPT_CONFIG_NAME = "prompt_config.json"
PROMPT_WEIGHTS_NAME = "prompt_model.safetensors"
PLACEHOLDER = "X"


@dataclass
class PromptConfig:
    """Configuration of a prompt adapter.

    ``ctx_init``: ``"template"`` (start from the domain template's words before ``{}``; random
    when the template starts with the label), ``"random"`` (``n_ctx`` placeholder words,
    normal(0, ``init_std``) vectors), or any literal text whose token embeddings start the context.
    ``n_visual_tokens``: learnable tokens prepended to the vision sequence (0 = text only).
    ``ctx_text`` and ``n_ctx_tokens`` are resolved when the adapter is created and saved with it.
    """

    n_ctx: int = field(default=4, metadata={"help": "placeholder words when the context starts random"})
    ctx_init: str = field(default="template", metadata={"help": "'template', 'random' or literal text"})
    n_visual_tokens: int = field(default=0, metadata={"help": "visual prompt tokens (VPT-shallow)"})
    init_std: float = field(default=0.02, metadata={"help": "std of random initialisation"})
    ctx_text: str | None = None
    n_ctx_tokens: int | None = None
    text_dim: int | None = None
    vision_dim: int | None = None
    adapter_type: str = "prompt"

    def __post_init__(self) -> None:
        if self.n_ctx < 1:
            raise AdapterError(f"PromptConfig.n_ctx must be >= 1, got {self.n_ctx}.")
        if self.n_visual_tokens < 0:
            raise AdapterError(f"PromptConfig.n_visual_tokens must be >= 0, got {self.n_visual_tokens}.")
        if not self.ctx_init:
            raise AdapterError("PromptConfig.ctx_init must be 'template', 'random' or some text.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PromptConfig":
        """Build from a saved dict; unknown keys (from a newer medadapt) are dropped with a warning."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(f"PromptConfig: ignoring unknown keys {unknown}", stacklevel=2)
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def split_template(prompt: str) -> tuple[str, str]:
    """``"a chest x-ray showing {}."`` -> (``"a chest x-ray showing"``, ``"."``)."""
    prefix, suffix = prompt.split("{}", 1)
    return prefix.rstrip(), suffix


class PromptAdapter(nn.Module):
    """Learnable text context vectors and optional visual prompt tokens."""

    def __init__(self, config: PromptConfig) -> None:
        super().__init__()
        if config.n_ctx_tokens is None or config.text_dim is None or config.vision_dim is None:
            raise AdapterError("PromptAdapter needs a resolved PromptConfig; add it with ContinualVLM.add_domain().")
        self.config = config
        self.ctx = nn.Parameter(torch.zeros(config.n_ctx_tokens, config.text_dim))
        self.visual = (
            nn.Parameter(torch.zeros(config.n_visual_tokens, config.vision_dim)) if config.n_visual_tokens else None
        )

    def texts(self, labels: list[str], template: str) -> list[str]:
        """The texts fed to the tokenizer for ``labels`` under ``template`` (context first)."""
        _, suffix = split_template(template)
        return [f"{self.config.ctx_text} {label}{suffix}" for label in labels]


class PromptHooks:
    """Forward hooks on the text token embedding and vision embeddings of one backbone.

    They do nothing unless a context (``text`` / ``vision``) is open, so the base model is
    untouched outside medadapt's own calls. What a context sets is call-local (a ``ContextVar``):
    calls from other threads do not see it.
    """

    def __init__(self, text_embedding: nn.Module, vision_embeddings: nn.Module | None, vision_has_cls: bool) -> None:
        """``vision_embeddings`` is ``None`` for an image tower without a patch sequence (a CNN): no VPT hook."""
        self._text: ContextVar[tuple[torch.Tensor, torch.Tensor] | None] = ContextVar("medadapt_prompt_text", default=None)
        self._vision: ContextVar[torch.Tensor | None] = ContextVar("medadapt_prompt_vision", default=None)
        self._has_cls = vision_has_cls
        self._handles = [text_embedding.register_forward_hook(self._text_hook)]
        if vision_embeddings is not None:
            self._handles.append(vision_embeddings.register_forward_hook(self._vision_hook))

    def _text_hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        text = self._text.get()
        if text is None:
            return None
        positions, ctx = text
        positions = positions.to(output.device)
        rows = torch.arange(output.shape[0], device=output.device).unsqueeze(1).expand_as(positions)
        output = output.clone()
        output[rows, positions] = ctx.to(output.dtype).unsqueeze(0).expand(output.shape[0], -1, -1)
        return output

    def _vision_hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        vision = self._vision.get()
        if vision is None:
            return None
        tokens = vision.to(output.dtype).unsqueeze(0).expand(output.shape[0], -1, -1)
        k = 1 if self._has_cls else 0
        return torch.cat([output[:, :k], tokens, output[:, k:]], dim=1)

    @contextmanager
    def text(self, positions: torch.Tensor, ctx: torch.Tensor) -> Iterator[None]:
        token = self._text.set((positions, ctx))
        try:
            yield
        finally:
            self._text.reset(token)

    @contextmanager
    def vision(self, tokens: torch.Tensor | None) -> Iterator[None]:
        token = self._vision.set(tokens)
        try:
            yield
        finally:
            self._vision.reset(token)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
