"""Merged export: the frozen base with one domain's LoRA (or a stack of LoRAs) folded into its weights.

The result is a plain transformers checkpoint (``config.json``, ``model.safetensors``) with the
base's processor files beside it, so servers that only load ordinary models (Triton, ONNX
exporters, ``transformers`` pipelines) serve "the base with domain X" with no medadapt and no peft::

    model.export_merged("chest-xray", "merged-chest")
    AutoModel.from_pretrained("merged-chest")  # CLIP / SigLIP; AutoModelForImageTextToText for VLMs

Each LoRA layer's weight becomes ``W + sum(scale * B @ A)`` over the merged adapters (peft's own
``get_delta_weight``); the model's base is never changed. Refused, with the reason: prompt adapters
(learned context vectors and visual tokens are inputs, not weights: there is nothing to fold into a
checkpoint), LoRA variants such as DoRA and ``lora_bias`` (not a plain weight delta), quantized bases.
``medadapt_export.json`` records the base and what was merged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from ..version import __version__
from .._io import atomic_directory, storage_errors
from ..errors import AdapterError
from ..stages import Served

if TYPE_CHECKING:  # pragma: no cover
    from ..saves.io import ModelParts

EXPORT_INFO = "medadapt_export.json"


def merge_served(parts: "ModelParts", domain_or_stack: str | Sequence[str]) -> Served:
    """The adapters a merged export folds in: a domain's own adapter, a shared adapter, or a stack of names."""
    stages = parts.stages
    if isinstance(domain_or_stack, str):
        if domain_or_stack in stages.shared:
            return stages.serve_named(domain_or_stack)
        return stages.serve(domain_or_stack)  # unknown domains raise DomainError here
    return stages.serve_named(list(domain_or_stack))


def merged_state(parts: "ModelParts", served: Served) -> dict[str, torch.Tensor]:
    """The base's state dict (peft's wrapping undone) with the LoRA adapters of ``served`` added in."""
    loras, prompt = served.loras, served.prompt
    if prompt is not None and parts.stages.kind(prompt) != "prompt":
        raise AdapterError(
            f"{prompt!r} is a {parts.stages.kind(prompt)} adapter: its class weights score that domain's labels beside "
            "the label prompts, which no plain transformers checkpoint of the base holds. Export a LoRA domain, or "
            "serve head domains with medadapt."
        )
    if prompt is not None:
        raise AdapterError(
            f"{prompt!r} is a prompt adapter: its learned context vectors and visual tokens are extra inputs to the "
            "towers, not a change of weights, so no plain transformers checkpoint can hold it. Export a LoRA domain, "
            "or serve prompt domains with medadapt."
        )
    base = parts.backbone.model
    if getattr(base, "is_quantized", False) or getattr(base, "hf_quantizer", None) is not None:
        raise AdapterError("the base is quantized (bitsandbytes): load it in full precision to export merged weights.")
    state = {k.replace(".base_layer.", "."): v for k, v in base.state_dict().items() if "lora_" not in k}
    with torch.no_grad():
        for path, layer in parts.adapters.lora.lora_layers().items():
            for name in loras:
                if name not in layer.r:
                    continue
                if name in layer.lora_variant or layer.lora_bias.get(name):
                    what = type(layer.lora_variant[name]).__name__ if name in layer.lora_variant else "lora_bias"
                    raise AdapterError(f"adapter {name!r} uses {what} in {path}: not a plain weight delta; merged export is refused.")
                key = f"{path}.weight"
                delta = layer.get_delta_weight(name)
                if key not in state or state[key].shape != delta.shape:
                    raise AdapterError(f"adapter {name!r}: cannot merge into {key} (no base weight of shape {list(delta.shape)}).")
                state[key] = state[key] + delta.to(state[key].dtype)
    return state


def export_merged(parts: "ModelParts", domain_or_stack: str | Sequence[str], out: str | os.PathLike) -> Path:
    """Write the base with ``domain_or_stack``'s LoRA merged in, plus its processor, into ``out`` (atomically).

    ``domain_or_stack``: a domain (its own adapter; a domain served by the base exports the base), a
    shared adapter, or a list of adapter names merged together. Returns ``out``.
    """
    served = merge_served(parts, domain_or_stack)
    names = list(served.names)
    backbone = parts.backbone
    with parts.adapters.gate.serving():  # no adapter change while the weights are read
        state = merged_state(parts, served)
    info = {
        "format": "medadapt merged export",
        "medadapt_version": __version__,
        "base": {"source": backbone.source, "revision": backbone.revision, "family": backbone.family.name},
        "merged_adapters": names,
        "load_with": f"transformers.{backbone.family.auto_class}.from_pretrained",
    }
    with storage_errors(f"cannot write the merged export into {out}"), atomic_directory(out) as tmp:
        backbone.family.save_weights(backbone.model, str(tmp), state)
        backbone.family.save_preprocessing(backbone.preprocessing, str(tmp))
        (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return Path(out)
