"""Image towers of a ``VisionTextDualEncoderModel``: ViT-like, CNN (ResNet, ConvNeXt, EfficientNet) and timm.

transformers' ``VisionTextDualEncoderModel`` accepts any image encoder, but its own image path
assumes a ViT: it projects ``pooler_output`` as it is (a ResNet's is ``(N, C, 1, 1)``) and reads
``vision_config.hidden_size`` (CNN configs have ``hidden_sizes`` or ``hidden_dim``). This module
is what medadapt knows about towers:

* :func:`pooled_features`: the tower's pooled features, from its own output: ``pooler_output``
  (flattened, or averaged over any spatial map left in it), else a global average pool of the
  last ``(N, C, H, W)`` map, else the class token / token mean of a ``(N, T, C)`` sequence.
* :func:`tower_layout`: ``"sequence"`` for a transformers ViT-like tower with patch embeddings
  (visual prompt tokens hook there), ``"spatial"`` for CNNs and ``TimmWrapperModel`` towers.
* :func:`image_tower_lora_targets`: default LoRA targets inside the tower. ViT-like towers: their
  attention ``query``/``value`` (``q_proj``/``v_proj``) Linear layers, as before. Spatial towers:
  the dense layers of the tower's *last stage*, that is its last :data:`CNN_LORA_LAYERS`
  convolutions (groups == 1; peft's Conv2d LoRA) or Linear layers (ConvNeXt's pointwise layers)
  in module order, plus ``visual_projection`` (always a Linear, so every tower gets a cheap,
  well-conditioned adapter). Depthwise convolutions are skipped (peft has no LoRA for them).
* :func:`dual_encoder_from_towers`: build a ``VisionTextDualEncoderModel`` from any image tower and
  text tower, recording the tower's pooled feature size as ``vision_config.hidden_size``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import UnsupportedBackboneError

SUPPORTED_TOWERS = (
    "ViT-like transformers towers (CLIPVisionModel, ViTModel, DeiT, BEiT, Dinov2, ...), "
    "ResNetModel, ConvNextModel, EfficientNetModel, and TimmWrapperModel (any timm model)"
)
CNN_LORA_LAYERS = 4  # dense conv/Linear layers of the last stage that get LoRA by default
SEQUENCE = "sequence"
SPATIAL = "spatial"


def tower_layout(tower: nn.Module) -> str:
    """``"sequence"`` (a ViT-like transformers tower with patch embeddings) or ``"spatial"`` (CNN, timm)."""
    config = getattr(tower, "config", None)
    if config is not None and getattr(config, "model_type", "") == "timm_wrapper":
        return SPATIAL
    has_heads = getattr(config, "num_attention_heads", None) is not None
    return SEQUENCE if has_heads and hasattr(tower, "embeddings") else SPATIAL


def tower_feature_size(tower: nn.Module) -> int:
    """Size of the tower's pooled features (``num_features`` for timm, the last stage width for CNNs)."""
    timm_model = getattr(tower, "timm_model", None)
    if timm_model is not None:
        return int(timm_model.num_features)
    config = tower.config
    for key in ("hidden_size", "hidden_dim"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    sizes = getattr(config, "hidden_sizes", None)
    if sizes:
        return int(sizes[-1])
    raise UnsupportedBackboneError(
        f"cannot tell the feature size of the image tower {type(tower).__name__}; supported towers: {SUPPORTED_TOWERS}."
    )


def _has_cls(tower: nn.Module) -> bool:
    embeddings = getattr(tower, "embeddings", None)
    return getattr(embeddings, "cls_token", None) is not None or getattr(embeddings, "class_embedding", None) is not None


def pooled_features(tower: nn.Module, output: Any) -> torch.Tensor:
    """``(N, C)`` pooled features of one tower forward (see the module docstring)."""
    pooled = getattr(output, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled.mean(dim=tuple(range(2, pooled.dim()))) if pooled.dim() > 2 else pooled
    last = getattr(output, "last_hidden_state", None)
    if isinstance(last, torch.Tensor) and last.dim() == 4:
        return last.mean(dim=(2, 3))
    if isinstance(last, torch.Tensor) and last.dim() == 3:
        return last[:, 0] if _has_cls(tower) else last.mean(1)
    raise UnsupportedBackboneError(
        f"the image tower {type(tower).__name__} returned neither a pooled output nor a spatial map or token "
        f"sequence to pool (family 'vision-text-dual-encoder'); supported towers: {SUPPORTED_TOWERS}."
    )


def spatial_tokens(state: torch.Tensor) -> torch.Tensor:
    """A hidden state as ``(N, tokens, C)``: an ``(N, C, H, W)`` map's positions become tokens."""
    return state.flatten(2).transpose(1, 2) if state.dim() == 4 else state


def image_tower_lora_targets(model: nn.Module, tower_attr: str = "vision_model", projection: str = "visual_projection") -> list[str]:
    """Full module names of the default LoRA targets inside a spatial (CNN / timm) image tower."""
    tower = getattr(model, tower_attr)
    dense = []
    for name, module in tower.named_modules():
        parts = name.split(".")
        if any(p.startswith("lora_") for p in parts):  # a LoRA already injected: its own A/B layers
            continue
        if parts[-1] == "base_layer":  # a layer peft already wraps: target the wrapper's name
            name = name.rsplit(".", 1)[0]
        if isinstance(module, nn.Conv2d) and module.groups == 1:
            dense.append(name)
        elif isinstance(module, nn.Linear) and not name.endswith(("classifier", "fc", "head")):
            dense.append(name)
    dense = list(dict.fromkeys(dense))
    targets = [f"{tower_attr}.{n}" for n in dense[-CNN_LORA_LAYERS:]]
    head = getattr(model, projection, None)
    if isinstance(getattr(head, "base_layer", head), nn.Linear):
        targets.append(projection)
    return targets


def dual_encoder_from_towers(vision_model: nn.Module, text_model: nn.Module, projection_dim: int = 512, logit_scale_init_value: float = 2.6592) -> nn.Module:
    """A ``VisionTextDualEncoderModel`` over any image tower (ViT, CNN, ``TimmWrapperModel``) and text tower.

    The tower's pooled feature size is recorded as ``vision_config.hidden_size`` (what transformers
    sizes ``visual_projection`` from), so the model saves and reloads with ``from_pretrained``.
    Projections start random: train them, or load a checkpoint that has them.
    """
    from transformers import VisionTextDualEncoderConfig, VisionTextDualEncoderModel

    vision_model.config.hidden_size = tower_feature_size(vision_model)
    config = VisionTextDualEncoderConfig.from_vision_text_configs(
        vision_model.config, text_model.config, projection_dim=projection_dim, logit_scale_init_value=logit_scale_init_value
    )
    return VisionTextDualEncoderModel(config=config, vision_model=vision_model, text_model=text_model)
