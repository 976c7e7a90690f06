"""Backbone families: what medadapt needs from one kind of base model, behind one interface.

A *family* (dual encoders such as CLIP/SigLIP, generative image-text-to-text models such as LLaVA
or Gemma 3) is one module that subclasses :class:`BackboneFamily` and registers an instance with
:func:`register_family`. It provides:

* loading and saving of the model's preprocessing (tokenizer, image processor, chat template);
* a :class:`Scorer`: preprocessed images of a domain in, ``(N, num_labels)`` class logits out,
  for what serves every row (a :class:`~medadapt.stages.Served`: one for all rows, or one per row
  in mixed-domain batches), and the training loss of a batch (:meth:`Scorer.loss`);
* the image tower (routing reads frozen features from it);
* default LoRA targets and the Hub card's pipeline tag.

The model, trainer, Hub code and router only talk to this interface, so they never ask which
family they serve. :class:`Backbone` (a frozen base with its preprocessing and family) and its
fingerprints live here too, so families and the code that loads bases share one floor.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Hashable, Iterator, Sequence

import torch
from torch import nn

from ..errors import AdapterError, UnsupportedBackboneError
from ..stages import Served

if TYPE_CHECKING:  # pragma: no cover
    from ..adapters.registry import AdapterSet
    from ..domains import Domain
    from ..training.objectives import Batch

ServedLike = Any  # a Served; a raw adapter name, tuple of names or None is read with Served.of


@dataclass
class Preprocessing:
    """What turns user inputs into model inputs: any of a full processor, tokenizer, image processor."""

    tokenizer: Any = None
    image_processor: Any = None
    processor: Any = None


_VOLATILE_CONFIG_KEYS = {
    "_name_or_path",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "_attn_implementation",
    "_attn_implementation_autoset",
    "_commit_hash",
    "architectures",
    "output_hidden_states",
    "output_attentions",
    "return_dict",
    "use_cache",
}


def _clean_config(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _clean_config(v) for k, v in sorted(obj.items()) if k not in _VOLATILE_CONFIG_KEYS}
    if isinstance(obj, (list, tuple)):
        return [_clean_config(v) for v in obj]
    return obj


def config_fingerprint(model: nn.Module) -> str:
    """sha256 of the model config with run-dependent keys (dtype, paths, versions) removed."""
    cleaned = _clean_config(model.config.to_dict())
    blob = json.dumps(cleaned, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def weights_fingerprint(model: nn.Module, n_tensors: int = 8, n_values: int = 64) -> str:
    """sha256 of a deterministic sample of base weights, rounded to bfloat16.

    Two checkpoints with the same config (e.g. CLIP and a CLIP fine-tuned on PubMed) differ here.
    Rounding to bfloat16 keeps the print stable when the same weights are loaded in another dtype.
    """
    state = {k: v for k, v in model.state_dict().items() if v.is_floating_point() and v.numel() > 0}
    names = sorted(state)
    step = max(1, len(names) // n_tensors)
    digest = hashlib.sha256()
    for name in names[::step][:n_tensors]:
        values = state[name].detach().flatten()[:n_values].to("cpu", torch.float32)
        values = values.to(torch.bfloat16).to(torch.float32)
        digest.update(name.encode())
        digest.update(values.numpy().tobytes())
    return digest.hexdigest()


@dataclass
class Backbone:
    """A frozen base model with its preprocessing and the family that serves it.

    ``source`` is the Hub id or local folder it was loaded from (``None`` when it was built in
    memory); ``revision`` the resolved revision when known.
    """

    model: nn.Module
    preprocessing: Preprocessing
    family: "BackboneFamily"
    source: str | None = None
    revision: str | None = None
    fingerprints: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.model.eval()
        for param in self.model.parameters():
            param.requires_grad_(False)
        if not self.fingerprints:
            self.fingerprints = {
                "config": config_fingerprint(self.model),
                "weights": weights_fingerprint(self.model),
            }

    @property
    def model_type(self) -> str:
        return self.model.config.model_type

    @property
    def tokenizer(self) -> Any:
        return self.preprocessing.tokenizer

    @property
    def image_processor(self) -> Any:
        return self.preprocessing.image_processor

    @property
    def processor(self) -> Any:
        return self.preprocessing.processor

    def text_max_length(self) -> int:
        """Longest text the model accepts."""
        return self.family.text_max_length(self)

    def preprocess(self, images: Any) -> torch.Tensor:
        """User images -> the pixel tensor this family's scorer consumes."""
        return self.family.preprocess(self, images)


class Scorer(ABC):
    """Class logits of preprocessed images against a domain's labels, through any adapter."""

    def __init__(self, backbone: Backbone, adapters: "AdapterSet") -> None:
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

    def served(self, adapter: ServedLike) -> Served:
        """``adapter`` as a :class:`Served` (a raw name, names or None read against this model's adapters;
        callers that take user input resolve it with :meth:`medadapt.stages.StageTable.serve` first)."""
        return adapter if isinstance(adapter, Served) else Served.of(adapter, self.adapters.prompts)

    @abstractmethod
    def logits(self, pixel_values: torch.Tensor, domain: "Domain", served: ServedLike = None, questions: Sequence[str] | None = None,
               keys: Sequence[Hashable] | None = None) -> torch.Tensor:
        """``(N, num_labels)`` logits of a batch of one domain, every row served by ``served``; differentiable.

        ``questions`` (one per image) replace the domain's own question where the family asks one.
        ``keys`` (one per image: which sample it is, e.g. ``("test", domain, index)``) let a family
        reuse frozen image work kept by :meth:`caching_images`; families without such a cache ignore them."""

    @contextmanager
    def caching_images(self, settings: Any) -> Iterator[Any]:
        """Keep frozen image work of keyed samples for the body (a training run): yields the cache, or
        None for families without one (this default)."""
        yield None

    @abstractmethod
    def logits_mixed(self, pixel_values: torch.Tensor, domains: Sequence["Domain"], served: Sequence[ServedLike], questions: Sequence[str] | None = None) -> list[torch.Tensor]:
        """Per-row logits (row ``i`` over ``domains[i]``'s labels, served by ``served[i]``), batched."""

    @abstractmethod
    def loss(self, batch: "Batch", domains: Sequence["Domain"], served: Served, cache: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss of a (mixed-domain) batch, every row served by ``served``, and a report
        (``{"loss", "acc"}``). ``domains`` holds each row's domain; ``cache`` lets the scorer reuse
        what does not change between steps."""

    def generate(self, pixel_values: torch.Tensor, questions: Sequence[str], served: Sequence[ServedLike], max_new_tokens: int = 32) -> list[str]:
        """Free-text answers, one per image (generative families only)."""
        raise UnsupportedBackboneError(
            f"the {self.backbone.family.name!r} family scores labels but does not generate text; "
            "use an image-text-to-text base (LLaVA, Gemma 3, PaliGemma, Idefics3) for free-text answers."
        )

    @staticmethod
    def question_of(domain: "Domain") -> str:
        """A domain's question: :attr:`medadapt.domains.Domain.question`."""
        return domain.question

    def build_adapter(self, config: Any, template: str, seed: int | None, domain: "Domain | None" = None) -> nn.Module:
        """Build the module of an adapter whose kind the family builds (``AdapterKind.built_by_family``:
        a prompt or head adapter) for ``domain`` (prompt ``template``); families without support refuse."""
        self.check_adapter(config, domain, "adapter")
        raise AdapterError(f"{type(config).__name__} adapters cannot be built on the {self.backbone.family.name!r} family.")  # pragma: no cover

    def check_adapter(self, config: Any, domain: "Domain | None", what: str) -> None:
        """Refuse a saved adapter of a family-built kind that cannot serve this base (clear reason)."""
        reason = getattr(config, "refusal", None)
        if reason:
            raise AdapterError(f"{what}: {type(config).__name__} is not supported on the {self.backbone.family.name!r} family: {reason}")
        raise AdapterError(
            f"prompt adapters (PromptConfig) are not supported on the {self.backbone.family.name!r} family; "
            "use a peft LoraConfig."
        )

    def head_inputs(self, pixel_values: torch.Tensor, domain: "Domain", served: ServedLike) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image features, zero-shot logits)`` a head adapter reads (families with image features only)."""
        raise UnsupportedBackboneError(f"the {self.backbone.family.name!r} family has no image features for a head adapter.")

    def text_side_params(self, served: ServedLike) -> list[nn.Parameter]:
        """Adapter parameters that can change what the family computes from texts (all of them by default)."""
        return [p for n in self.served(served).names for p in self.adapters.parameters(n)]

    def image_features(self, pixel_values: torch.Tensor, served: ServedLike = None) -> torch.Tensor:
        """Normalised image embeddings (families with an embedding space only)."""
        raise UnsupportedBackboneError(f"the {self.backbone.family.name!r} family has no shared image-text embedding space.")

    def text_features(self, texts: list[str], served: ServedLike = None) -> torch.Tensor:
        """Normalised text embeddings (families with an embedding space only)."""
        raise UnsupportedBackboneError(f"the {self.backbone.family.name!r} family has no shared image-text embedding space.")


class BackboneFamily(ABC):
    """One architecture family (see the module docstring)."""

    name: str = ""
    model_types: tuple[str, ...] = ()
    pipeline_tag: str = ""
    objective: str = ""  # the objective name the trainer builds; its loss is the scorer's (Scorer.loss)
    scoring: str = ""  # "dual-encoder" (similarity) or "generative" (likelihood): a stage saved on one cannot serve the other
    auto_class: str = "AutoModel"  # the transformers auto class that loads the base (for model cards)
    tasks: tuple[str, ...] = ("classification",)  # domain tasks it serves ("vqa": free-text answers)

    @property
    def kind(self) -> str:
        """The older name of :attr:`scoring`."""
        return self.scoring

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
