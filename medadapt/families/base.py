"""Backbone families: what medadapt needs from one kind of base model, behind one interface.

A *family* (dual encoders such as CLIP/SigLIP, generative image-text-to-text models such as LLaVA
or Gemma 3) is one module that subclasses :class:`BackboneFamily` and registers an instance with
:func:`register_family`. It provides:

* loading and saving of the model's preprocessing (tokenizer, image processor, chat template);
* a :class:`Scorer`: preprocessed images of a domain in, ``(N, num_labels)`` class logits out,
  for one adapter or one adapter per row (mixed-domain batches);
* the training objective name (see :mod:`medadapt.training.objectives`);
* the image tower (routing reads frozen features from it);
* default LoRA targets and the Hub card's pipeline tag.

The model, trainer, Hub code and router only talk to this interface, so they never ask which
family they serve.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import nn

from ..errors import AdapterError, UnsupportedBackboneError

if TYPE_CHECKING:  # pragma: no cover
    from ..adapters.prompt import PromptAdapter, PromptConfig
    from ..adapters.registry import AdapterSet
    from ..backbones import Backbone
    from ..domains import Domain

AdapterRef = Any  # an adapter name, a tuple of stacked names, or None for the frozen base


@dataclass
class Preprocessing:
    """What turns user inputs into model inputs: any of a full processor, tokenizer, image processor."""

    tokenizer: Any = None
    image_processor: Any = None
    processor: Any = None


class Scorer(ABC):
    """Class logits of preprocessed images against a domain's labels, through any adapter."""

    def __init__(self, backbone: "Backbone", adapters: "AdapterSet") -> None:
        self.backbone = backbone
        self.adapters = adapters

    @property
    def model(self) -> nn.Module:
        return self.backbone.model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The base's floating-point dtype (``model.dtype`` for transformers models; any nn.Module here)."""
        dtype = getattr(self.model, "dtype", None)
        if isinstance(dtype, torch.dtype):
            return dtype
        return next((p.dtype for p in self.model.parameters() if p.is_floating_point()), torch.float32)

    @abstractmethod
    def logits(self, pixel_values: torch.Tensor, domain: "Domain", adapter: AdapterRef = None, questions: Sequence[str] | None = None) -> torch.Tensor:
        """``(N, num_labels)`` logits of a batch of one domain through ``adapter``; differentiable.

        ``questions`` (one per image) replace the domain's own question where the family asks one."""

    @abstractmethod
    def logits_mixed(self, pixel_values: torch.Tensor, domains: Sequence["Domain"], adapters: Sequence[AdapterRef], questions: Sequence[str] | None = None) -> list[torch.Tensor]:
        """Per-row logits (row ``i`` over ``domains[i]``'s labels through ``adapters[i]``), batched."""

    def generate(self, pixel_values: torch.Tensor, questions: Sequence[str], adapters: Sequence[AdapterRef], max_new_tokens: int = 32) -> list[str]:
        """Free-text answers, one per image (generative families only)."""
        raise UnsupportedBackboneError(
            f"the {self.backbone.family.name!r} family scores labels but does not generate text; "
            "use an image-text-to-text base (LLaVA, Gemma 3, PaliGemma, Idefics3) for free-text answers."
        )

    @staticmethod
    def question_of(domain: "Domain") -> str:
        """A domain's question (generative families): its prompt template's text before ``{}``."""
        return domain.prompt.split("{}", 1)[0].strip()

    def create_prompt_adapter(self, config: "PromptConfig", template: str, seed: int | None) -> "PromptAdapter":
        """Build a prompt adapter for this family (families without prompt support refuse)."""
        raise AdapterError(
            f"prompt adapters (PromptConfig) are not supported on the {self.backbone.family.name!r} family; "
            "use a peft LoraConfig."
        )

    def text_side_params(self, adapter: AdapterRef) -> list[nn.Parameter]:
        """Adapter parameters that can change what the family computes from texts (all of them by default)."""
        loras, prompt = self.adapters.split(adapter)
        return [p for n in [*loras, *([prompt] if prompt else [])] for p in self.adapters.parameters(n)]

    def image_features(self, pixel_values: torch.Tensor, adapter: AdapterRef = None) -> torch.Tensor:
        """Normalised image embeddings (families with an embedding space only)."""
        raise UnsupportedBackboneError(f"the {self.backbone.family.name!r} family has no shared image-text embedding space.")

    def text_features(self, texts: list[str], adapter: AdapterRef = None) -> torch.Tensor:
        """Normalised text embeddings (families with an embedding space only)."""
        raise UnsupportedBackboneError(f"the {self.backbone.family.name!r} family has no shared image-text embedding space.")


class BackboneFamily(ABC):
    """One architecture family (see the module docstring)."""

    name: str = ""
    model_types: tuple[str, ...] = ()
    pipeline_tag: str = ""
    objective: str = ""
    kind: str = ""  # "dual-encoder" or "generative": a stage saved on one kind cannot serve the other
    auto_class: str = "AutoModel"  # the transformers auto class that loads the base (for model cards)
    tasks: tuple[str, ...] = ("classification",)  # domain tasks it serves ("vqa": free-text answers)

    @abstractmethod
    def model_class(self, model_type: str) -> type:
        """The transformers class that loads ``model_type`` checkpoints."""

    @abstractmethod
    def load_preprocessing(self, source: str, **hub_kwargs: Any) -> Preprocessing:
        """Tokenizer / image processor / processor of a Hub id or folder."""

    @abstractmethod
    def check_preprocessing(self, model: nn.Module, pre: Preprocessing) -> Preprocessing:
        """Complete and validate the preprocessing given with a built model (clear error if missing)."""

    @abstractmethod
    def save_preprocessing(self, pre: Preprocessing, folder: str) -> None:
        """Write the preprocessing next to a saved base (chat template included)."""

    @abstractmethod
    def preprocess(self, backbone: "Backbone", images: Any) -> torch.Tensor:
        """User images -> the pixel tensor the scorer consumes (one row per image)."""

    @abstractmethod
    def vision_tower(self, model: nn.Module) -> nn.Module:
        """The image tower: called with ``pixel_values=`` and ``output_hidden_states=True``."""

    def vision_states(self, model: nn.Module, pixel_values: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Frozen image-tower features the router reads: ``(N, C)`` pooled features and the hidden
        states, each a token sequence ``(N, T, C)`` or a CNN feature map ``(N, C, H, W)``.

        Towers without ``hidden_states`` (or that refuse to return them) give their last state only.
        """
        tower = self.vision_tower(model)
        try:
            out = tower(pixel_values=pixel_values, output_hidden_states=True)
        except ValueError:  # e.g. a timm model without forward_intermediates
            out = tower(pixel_values=pixel_values)
        states = [s for s in (getattr(out, "hidden_states", None) or ()) if isinstance(s, torch.Tensor)]
        if not states:
            states = [out.last_hidden_state]
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            last = states[-1]
            pooled = last.flatten(2).mean(-1) if last.dim() == 4 else last.mean(1)
        return (pooled.flatten(2).mean(-1) if pooled.dim() > 2 else pooled), states

    def vision_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The ``(N, C, H, W)`` images the image tower reads, from what :meth:`preprocess` returned."""
        return pixel_values

    @abstractmethod
    def default_lora_targets(self, model: nn.Module) -> list[str] | str:
        """peft ``target_modules`` used when a domain is added without a LoRA config."""

    @abstractmethod
    def make_scorer(self, backbone: "Backbone", adapters: "AdapterSet") -> Scorer: ...

    # -- bases that are not transformers models (e.g. open_clip) -----------------------------------
    def claims_source(self, source: str) -> bool:
        """Whether this family loads ``source`` itself (:meth:`load`) instead of transformers' Auto classes."""
        return False

    def recognizes(self, model: nn.Module) -> bool:
        """Whether ``model``, built without a transformers config, belongs to this family."""
        return False

    def load(self, source: str, revision: str | None = None, torch_dtype: torch.dtype | None = None, **hub_kwargs: Any) -> "Backbone":
        """Load a base this family claims (see :meth:`claims_source`)."""
        raise UnsupportedBackboneError(f"the {self.name!r} family loads through transformers' Auto classes.")

    def save_weights(self, model: nn.Module, folder: str, state: dict[str, torch.Tensor]) -> None:
        """Write the base's weights (``state``: without adapter tensors) and config into ``folder``."""
        from transformers.utils import logging as hf_logging

        was_enabled = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            model.save_pretrained(folder, state_dict=state)
        finally:
            if was_enabled:
                hf_logging.enable_progress_bar()

    def manifest_fields(self, backbone: "Backbone") -> dict[str, Any]:
        """Extra facts about the base recorded in a save's manifest (``base`` section)."""
        return {}

    def attach(self, backbone: "Backbone") -> None:
        """Hook into a freshly wrapped base (e.g. prompt hooks); called once per model."""

    def text_max_length(self, backbone: "Backbone") -> int:
        """Longest text the model accepts."""
        cfg = getattr(backbone.model.config, "text_config", None) or backbone.model.config
        limit = getattr(cfg, "max_position_embeddings", None) or 77
        tokenizer = backbone.tokenizer
        tok_limit = getattr(tokenizer, "model_max_length", limit) or limit
        return int(min(limit, tok_limit))


_FAMILIES: dict[str, BackboneFamily] = {}


def register_family(family: BackboneFamily) -> BackboneFamily:
    """Register a family so :func:`family_for_model_type` (and so ``from_base``) accepts its model types."""
    _FAMILIES[family.name] = family
    return family


def supported_families() -> list[str]:
    """The registered families with their transformers ``model_type`` values."""
    return [f"{f.name} (model_type {', '.join(f.model_types)})" for f in _FAMILIES.values()]


def family_for_model_type(model_type: str) -> BackboneFamily:
    """The family serving ``model_type``, or a clear error listing the supported ones."""
    for family in _FAMILIES.values():
        if model_type in family.model_types:
            return family
    raise UnsupportedBackboneError(
        f"model_type {model_type!r} is not a supported backbone. Supported families: {'; '.join(supported_families())}."
    )


def family_for_source(source: str) -> BackboneFamily | None:
    """The family that loads ``source`` itself (e.g. ``hf-hub:`` open_clip repos), or ``None``."""
    for family in _FAMILIES.values():
        if family.claims_source(source):
            return family
    return None


def family_for_model(model: nn.Module) -> BackboneFamily | None:
    """The family recognising a model built without a transformers config, or ``None``."""
    for family in _FAMILIES.values():
        if family.recognizes(model):
            return family
    return None


def family_by_name(name: str) -> BackboneFamily:
    """The registered family called ``name``."""
    if name not in _FAMILIES:
        raise UnsupportedBackboneError(f"unknown backbone family {name!r}; supported: {'; '.join(supported_families())}.")
    return _FAMILIES[name]
