"""Dual-encoder backbones: which transformers models medadapt can adapt, and how to reach their parts.

A *family* describes one architecture: the transformers classes, where the text token embeddings and
the vision patch embeddings live (prompt adapters hook there), whether the vision sequence starts with
a class token, how text must be padded, and sensible LoRA target modules. New families register
themselves with :func:`register_family`; nothing else needs editing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .errors import UnsupportedBackboneError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FamilySpec:
    """How medadapt talks to one dual-encoder architecture."""

    name: str
    model_types: tuple[str, ...]
    model_class: Callable[[], type]
    text_token_embedding: Callable[[nn.Module], nn.Module]
    vision_embeddings: Callable[[nn.Module], nn.Module]
    vision_has_cls: Callable[[nn.Module], bool]
    pad_to_max_length: bool = False
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")


_FAMILIES: dict[str, FamilySpec] = {}


def register_family(spec: FamilySpec) -> FamilySpec:
    """Register a dual-encoder family so :func:`load_backbone` accepts its ``model_type``."""
    _FAMILIES[spec.name] = spec
    return spec


def supported_families() -> list[str]:
    """Names of the registered families with their transformers ``model_type``."""
    return [f"{s.name} (model_type {', '.join(s.model_types)})" for s in _FAMILIES.values()]


def family_for_model_type(model_type: str) -> FamilySpec:
    """Return the family serving ``model_type`` or raise a clear error listing the supported ones."""
    for spec in _FAMILIES.values():
        if model_type in spec.model_types:
            return spec
    raise UnsupportedBackboneError(
        f"model_type {model_type!r} is not a supported dual-encoder backbone. "
        f"Supported families: {'; '.join(supported_families())}."
    )


def _clip_model_class() -> type:
    from transformers import CLIPModel

    return CLIPModel


def _siglip_model_class() -> type:
    from transformers import SiglipModel

    return SiglipModel


def _dual_encoder_model_class() -> type:
    from transformers import VisionTextDualEncoderModel

    return VisionTextDualEncoderModel


def _hf_input_embeddings(text_model: nn.Module) -> nn.Module:
    if hasattr(text_model, "get_input_embeddings"):
        return text_model.get_input_embeddings()
    return text_model.embeddings.token_embedding


register_family(
    FamilySpec(
        name="clip",
        model_types=("clip",),
        model_class=_clip_model_class,
        text_token_embedding=lambda m: m.text_model.embeddings.token_embedding,
        vision_embeddings=lambda m: m.vision_model.embeddings,
        vision_has_cls=lambda m: True,
        lora_targets=("q_proj", "v_proj"),
    )
)
register_family(
    FamilySpec(
        name="siglip",
        model_types=("siglip",),
        model_class=_siglip_model_class,
        text_token_embedding=lambda m: m.text_model.embeddings.token_embedding,
        vision_embeddings=lambda m: m.vision_model.embeddings,
        vision_has_cls=lambda m: False,
        pad_to_max_length=True,
        lora_targets=("q_proj", "v_proj"),
    )
)
register_family(
    FamilySpec(
        name="vision-text-dual-encoder",
        model_types=("vision-text-dual-encoder",),
        model_class=_dual_encoder_model_class,
        text_token_embedding=lambda m: _hf_input_embeddings(m.text_model),
        vision_embeddings=lambda m: m.vision_model.embeddings,
        vision_has_cls=lambda m: getattr(m.vision_model.embeddings, "cls_token", None) is not None
        or getattr(m.vision_model.embeddings, "class_embedding", None) is not None,
        lora_targets=("query", "value", "q_proj", "v_proj"),
    )
)


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
    """A frozen dual encoder with its tokenizer and image processor.

    ``source`` is the Hub id or local folder it was loaded from (``None`` when it was built in
    memory); ``revision`` the resolved revision when known.
    """

    model: nn.Module
    tokenizer: Any
    image_processor: Any
    family: FamilySpec
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

    def text_max_length(self) -> int:
        """Longest text the text tower accepts."""
        cfg = getattr(self.model.config, "text_config", None) or self.model.config
        limit = getattr(cfg, "max_position_embeddings", None) or 77
        tok_limit = getattr(self.tokenizer, "model_max_length", limit) or limit
        return int(min(limit, tok_limit))


def _split_processor(processor: Any) -> tuple[Any, Any]:
    tokenizer = getattr(processor, "tokenizer", None)
    image_processor = getattr(processor, "image_processor", None)
    return tokenizer, image_processor


def backbone_from_model(
    model: nn.Module,
    processor: Any = None,
    tokenizer: Any = None,
    image_processor: Any = None,
    source: str | None = None,
    revision: str | None = None,
) -> Backbone:
    """Wrap an already-built transformers dual encoder (plus its processor or tokenizer + image processor)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type is None:
        raise UnsupportedBackboneError(
            f"{type(model).__name__} has no transformers config; pass a transformers dual encoder. "
            f"Supported families: {'; '.join(supported_families())}."
        )
    spec = family_for_model_type(model_type)
    if processor is not None:
        p_tok, p_img = _split_processor(processor)
        tokenizer = tokenizer or p_tok
        image_processor = image_processor or p_img
    if tokenizer is None or image_processor is None:
        missing = [n for n, v in (("tokenizer", tokenizer), ("image_processor", image_processor)) if v is None]
        raise UnsupportedBackboneError(
            f"a built model needs its preprocessing too: missing {', '.join(missing)}. Pass `processor=` "
            "(e.g. CLIPProcessor) or both `tokenizer=` and `image_processor=`."
        )
    if source is None:
        name = getattr(model.config, "_name_or_path", "") or None
        source = name
    return Backbone(model, tokenizer, image_processor, spec, source=source, revision=revision)


def _own_aligned_memory(model: nn.Module) -> None:
    """Copy CPU tensors that point into a memory-mapped checkpoint at an unaligned offset.

    transformers may leave weights as views into the mmapped safetensors file, at offsets that are
    not 64-byte aligned; CPU BLAS then takes other code paths and rounds differently, so a base
    reloaded from a folder would not give bit-identical outputs to the same weights built in memory.
    """
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.device.type == "cpu" and tensor.data_ptr() % 64:
                tensor.data = tensor.data.clone()


def load_backbone(
    source: str,
    revision: str | None = None,
    trust_remote_code: bool = False,
    torch_dtype: torch.dtype | None = None,
    **hub_kwargs: Any,
) -> Backbone:
    """Load a frozen dual encoder, its tokenizer and image processor from a Hub id or local folder."""
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

    config = AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code, **hub_kwargs)
    spec = family_for_model_type(config.model_type)
    # safetensors only: transformers refuses pickled (.bin) weights instead of unpickling them
    model_kwargs: dict[str, Any] = dict(revision=revision, trust_remote_code=trust_remote_code, use_safetensors=True, **hub_kwargs)
    if torch_dtype is not None:
        model_kwargs["dtype"] = torch_dtype
    model = spec.model_class().from_pretrained(source, **model_kwargs)
    _own_aligned_memory(model)
    tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code, **hub_kwargs)
    image_processor = AutoImageProcessor.from_pretrained(
        source, revision=revision, trust_remote_code=trust_remote_code, **hub_kwargs
    )
    resolved = getattr(config, "_commit_hash", None) or revision
    return Backbone(model, tokenizer, image_processor, spec, source=source, revision=resolved)


def save_backbone(backbone: Backbone, folder: str) -> None:
    """Write the base model (safetensors), tokenizer and image processor into ``folder``."""
    state = {
        key.replace(".base_layer.", "."): value
        for key, value in backbone.model.state_dict().items()
        if "lora_" not in key
    }
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        backbone.model.save_pretrained(folder, state_dict=state)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
    backbone.tokenizer.save_pretrained(folder)
    backbone.image_processor.save_pretrained(folder)
