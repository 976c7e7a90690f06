"""The frozen base model with its preprocessing: loading, wrapping, saving and fingerprints.

Which architectures are accepted, and how each one is reached, is decided by the registered backbone
families (:mod:`medadapt.families`); this module only asks the family of a ``model_type``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .base_files import require_safetensors
from .errors import UnsupportedBackboneError
from .families import BackboneFamily, Preprocessing, family_for_model, family_for_model_type, family_for_source, supported_families

logger = logging.getLogger(__name__)


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
    family: BackboneFamily
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
