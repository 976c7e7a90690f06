"""How a dual encoder scores an image against a domain's label prompts, through any adapter.

This is the only module that knows images and texts are embedded by two towers and compared by a
scaled cosine similarity. Domains, adapters, stage files, rehearsal and the trainer talk to it
through ``image_features`` / ``label_features`` / ``logits``, so another backbone family (a
generative VLM scoring label prompts by likelihood) can provide its own scorer beside this one.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .adapters.lora import BASE, LoraBank
from .adapters.prompt import PromptAdapter, PromptHooks, tokenize_texts, tokenize_with_context
from .backbones import Backbone
from .domains import Domain

AdapterRef = str | None  # an adapter name, or None for the frozen base


class DualEncoderScorer:
    """Image/text features and class logits for a CLIP-like dual encoder with medadapt adapters."""

    def __init__(self, backbone: Backbone, lora: LoraBank, prompts: dict[str, PromptAdapter], hooks: PromptHooks):
        self.backbone = backbone
        self.lora = lora
        self.prompts = prompts
        self.hooks = hooks
        self._tokens: dict[tuple, Any] = {}  # label prompts are re-scored every step: tokenise each once

    _TOKEN_CACHE_SIZE = 512

    def _tokenize(self, texts: list[str], ctx_text: str | None = None) -> Any:
        """``tokenize_texts`` (or ``tokenize_with_context`` when ``ctx_text`` is given), memoised."""
        key = (id(self.backbone.tokenizer), ctx_text, tuple(texts))
        out = self._tokens.get(key)
        if out is None:
            out = tokenize_texts(self.backbone, texts) if ctx_text is None else tokenize_with_context(self.backbone, texts, ctx_text)
            if len(self._tokens) >= self._TOKEN_CACHE_SIZE:
                self._tokens.pop(next(iter(self._tokens)))
            self._tokens[key] = out
        return out

    @property
    def model(self) -> torch.nn.Module:
        return self.backbone.model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- context helpers -------------------------------------------------------------------------
    def _split(self, adapter: AdapterRef | Sequence[str]) -> tuple[list[str], PromptAdapter | None]:
        """LoRA names and the prompt adapter (at most one) making up ``adapter``."""
        names = [] if adapter is None else [adapter] if isinstance(adapter, str) else list(adapter)
        loras = [n for n in names if n not in self.prompts]
        prompt_names = [n for n in names if n in self.prompts]
        return loras, (self.prompts[prompt_names[0]] if prompt_names else None)

    # -- images ----------------------------------------------------------------------------------
    def image_features(self, pixel_values: torch.Tensor, adapter: AdapterRef | Sequence[str] = None) -> torch.Tensor:
        """L2-normalised image embeddings of a batch through one adapter (or a stack of them)."""
        loras, prompt = self._split(adapter)
        with ExitStack() as stack:
            stack.enter_context(self.lora.activate(loras or None))
            stack.enter_context(self.hooks.vision(prompt.visual if prompt is not None else None))
            pixel_values = pixel_values.to(self.device, dtype=self.model.dtype)
            out = self.model.get_image_features(pixel_values=pixel_values).pooler_output
        return F.normalize(out.float(), dim=-1)

    def image_features_mixed(self, pixel_values: torch.Tensor, adapters: Sequence[AdapterRef]) -> torch.Tensor:
        """Embeddings with one adapter per image, in batched forwards.

        Rows served by LoRA adapters, the base, or text-only prompt adapters go through a single
        forward using peft's per-row ``adapter_names``; rows whose prompt adapter has visual tokens
        (a longer sequence) get one forward per such adapter.
        """
        groups: dict[str, list[int]] = {}
        for i, name in enumerate(adapters):
            if name in self.prompts and self.prompts[name].visual is not None:
                groups.setdefault(name, []).append(i)
            else:
                groups.setdefault("", []).append(i)
        out = torch.empty(len(adapters), self._embed_dim(), device=self.device)
        for key, rows in groups.items():
            index = torch.tensor(rows, device=pixel_values.device)
            if key:
                out[rows] = self.image_features(pixel_values[index], key)
                continue
            row_names = [adapters[i] if adapters[i] is not None and adapters[i] not in self.prompts else BASE for i in rows]
            if len(set(row_names)) == 1:
                out[rows] = self.image_features(pixel_values[index], None if row_names[0] == BASE else row_names[0])
                continue
            with self.lora.mixed(row_names):
                pv = pixel_values[index].to(self.device, dtype=self.model.dtype)
                feats = self.model.get_image_features(pixel_values=pv).pooler_output
            out[rows] = F.normalize(feats.float(), dim=-1)
        return out

    def _embed_dim(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "projection_dim", None) or cfg.text_config.hidden_size)

    # -- texts -----------------------------------------------------------------------------------
    def text_features(self, texts: list[str], adapter: AdapterRef | Sequence[str] = None) -> torch.Tensor:
        """L2-normalised embeddings of free texts through LoRA adapters (prompt context is not applied)."""
        loras, _ = self._split(adapter)
        tokens = tokenize_texts(self.backbone, texts)
        with self.lora.activate(loras or None):
            return self._encode_text(tokens)

    def _encode_text(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        if self.backbone.family.pad_to_max_length:
            tokens.pop("attention_mask", None)  # SigLIP is trained without a text attention mask
        out = self.model.get_text_features(**tokens).pooler_output
        return F.normalize(out.float(), dim=-1)

    def label_features(self, domain: Domain, adapter: AdapterRef | Sequence[str] = None) -> torch.Tensor:
        """``(num_labels, dim)`` embeddings of the domain's label prompts through ``adapter``."""
        loras, prompt = self._split(adapter)
        with self.lora.activate(loras or None):
            if prompt is None:
                return self._encode_text(self._tokenize(domain.prompts()))
            tokens, positions = self._tokenize(prompt.texts(domain.labels, domain.prompt), prompt.config.ctx_text)
            with self.hooks.text(positions, prompt.ctx):
                return self._encode_text(tokens)

    def label_features_many(self, pairs: Sequence[tuple[Domain, AdapterRef]]) -> list[torch.Tensor]:
        """Label embeddings for several (domain, adapter) pairs; LoRA/base pairs share one forward."""
        results: list[torch.Tensor | None] = [None] * len(pairs)
        batched = [i for i, (_, a) in enumerate(pairs) if a is None or (isinstance(a, str) and a not in self.prompts)]
        for i, (domain, adapter) in enumerate(pairs):
            if i not in batched:
                results[i] = self.label_features(domain, adapter)
        if batched:
            texts, names, spans = [], [], []
            for i in batched:
                domain, adapter = pairs[i]
                spans.append((len(texts), len(texts) + len(domain.labels)))
                texts.extend(domain.prompts())
                names.extend([adapter if adapter is not None else BASE] * len(domain.labels))
            tokens = self._tokenize(texts)
            if len(set(names)) == 1:
                with self.lora.activate(None if names[0] == BASE else names[0]):
                    feats = self._encode_text(tokens)
            else:
                with self.lora.mixed(names):
                    feats = self._encode_text(tokens)
            for i, (start, stop) in zip(batched, spans):
                results[i] = feats[start:stop]
        return results  # type: ignore[return-value]

    # -- logits ----------------------------------------------------------------------------------
    def scale_and_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        scale = self.model.logit_scale.float().exp()
        bias = getattr(self.model, "logit_bias", None)
        return scale, (bias.float() if bias is not None else None)

    def logits_from_features(self, image_feats: torch.Tensor, label_feats: torch.Tensor) -> torch.Tensor:
        """Scaled cosine similarities ``(N, num_labels)`` (plus SigLIP's bias)."""
        scale, bias = self.scale_and_bias()
        logits = scale * image_feats @ label_feats.t()
        return logits + bias if bias is not None else logits

    def logits(self, pixel_values: torch.Tensor, domain: Domain, adapter: AdapterRef | Sequence[str] = None) -> torch.Tensor:
        """Class logits of a batch of one domain through ``adapter``; differentiable for training."""
        return self.logits_from_features(self.image_features(pixel_values, adapter), self.label_features(domain, adapter))
