"""Loading, wrapping and saving the frozen base model with its preprocessing.

Which architectures are accepted, and how each one is reached, is decided by the registered backbone
families (:mod:`medadapt.families`); this module only asks the family of a ``model_type``.
:class:`Backbone` and its fingerprints live with the family base (:mod:`medadapt.families.base`)
and are re-exported here.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from .base_files import require_safetensors
from .errors import UnsupportedBackboneError
from .families import Preprocessing, family_for_model, family_for_model_type, family_for_source, supported_families
from .families.base import Backbone, config_fingerprint, weights_fingerprint

__all__ = ["Backbone", "backbone_from_model", "config_fingerprint", "load_backbone", "save_backbone", "weights_fingerprint"]

logger = logging.getLogger(__name__)


def backbone_from_model(
    model: nn.Module,
    processor: Any = None,
    tokenizer: Any = None,
    image_processor: Any = None,
    source: str | None = None,
    revision: str | None = None,
) -> Backbone:
    """Wrap an already-built transformers model plus its processor (or tokenizer + image processor)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type is None:
        other = family_for_model(model)
        hint = (
            f" It is a {other.name} model: wrap it with medadapt.families.open_clip_backbone(model, model_cfg, tokenizer, "
            "preprocess) or load it with ContinualVLM.from_base('hf-hub:...' or a folder)."
            if other is not None else ""
        )
        raise UnsupportedBackboneError(
            f"{type(model).__name__} has no transformers config; pass a transformers model.{hint} "
            f"Supported families: {'; '.join(supported_families())}."
        )
    family = family_for_model_type(model_type)
    pre = family.check_preprocessing(model, Preprocessing(tokenizer=tokenizer, image_processor=image_processor, processor=processor))
    if source is None:
        source = getattr(model.config, "_name_or_path", "") or None
    return Backbone(model, pre, family, source=source, revision=revision)


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
    model_kwargs: dict[str, Any] | None = None,
    **hub_kwargs: Any,
) -> Backbone:
    """Load a frozen base and its preprocessing from a Hub id or local folder (safetensors only).

    ``model_kwargs`` go to the model's ``from_pretrained`` only (quantization, device map...)."""
    from transformers import AutoConfig

    own = family_for_source(source)  # a family that loads its bases itself (open_clip's "hf-hub:" repos)
    if own is not None:
        return own.load(source, revision=revision, torch_dtype=torch_dtype, **hub_kwargs)

    config = AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code, **hub_kwargs)
    family = family_for_model_type(config.model_type)
    require_safetensors(source)  # a local folder with only pickled weights: a clear error, never an unpickle
    # safetensors only: transformers refuses pickled (.bin) weights instead of unpickling them
    loading: dict[str, Any] = dict(revision=revision, trust_remote_code=trust_remote_code, use_safetensors=True, **hub_kwargs)
    if torch_dtype is not None:
        loading["dtype"] = torch_dtype
    model = family.model_class(config.model_type).from_pretrained(source, **loading, **(model_kwargs or {}))
    _own_aligned_memory(model)
    pre = family.load_preprocessing(source, revision=revision, trust_remote_code=trust_remote_code, **hub_kwargs)
    resolved = getattr(config, "_commit_hash", None) or revision
    return Backbone(model, pre, family, source=source, revision=resolved)


def save_backbone(backbone: Backbone, folder: str) -> None:
    """Write the base model (safetensors) and its preprocessing into ``folder``."""
    state = {
        key.replace(".base_layer.", "."): value
        for key, value in backbone.model.state_dict().items()
        if "lora_" not in key
    }
    backbone.family.save_weights(backbone.model, folder, state)
    backbone.family.save_preprocessing(backbone.preprocessing, folder)
